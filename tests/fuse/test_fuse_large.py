"""A 1 GiB object through the mount: cp and dd (also with O_DIRECT) read it whole, tail and dd skip fetch only
what they read."""

from __future__ import annotations

import hashlib
import json
import os
import struct

import pytest
from fuse_helpers import sh

from gateway.fuse.client import ObjectClient

MiB = 1024 * 1024
SIZE = 1024 * MiB
BLOCK = hashlib.sha256(b"seed").digest() * (MiB // 32)  # 1 MiB of pattern


def _mib(index: int) -> bytes:
    """MiB number ``index`` of the object: its number, then the pattern (so any offset can be checked)."""
    return struct.pack(">Q", index) + BLOCK[8:]


def _expected(offset: int, length: int) -> bytes:
    out = b"".join(_mib(i) for i in range(offset // MiB, (offset + length - 1) // MiB + 1))
    start = offset - (offset // MiB) * MiB
    return out[start: start + length]


class _Generated:
    """The object's bytes, made as the upload reads them (no 1 GiB in memory), hashed on the way."""

    def __init__(self):
        self.position = 0
        self.digest = hashlib.sha256()

    def read(self, amount: int = -1) -> bytes:
        if self.position >= SIZE:
            return b""
        data = _mib(self.position // MiB)
        self.position += MiB
        self.digest.update(data)
        return data


@pytest.fixture(scope="module")
def big_object(fuse_gw):
    """(bucket, key, sha256) of a 1 GiB object, uploaded with one streamed PUT."""
    fuse_gw.client().create_bucket(Bucket="large-objects")
    client = ObjectClient(fuse_gw.endpoint, fuse_gw.access_key, fuse_gw.secret_key, pool_size=1, timeout=120)
    body = _Generated()
    client.put("large-objects", "one-gib.bin", body, SIZE)
    client.close()
    return "large-objects", "one-gib.bin", body.digest.hexdigest()


def _bytes_in(mnt) -> int:
    return json.loads((mnt.path / ".cv-gateway-stats").read_text())["requests"].get("bytes_in", 0)


def test_tail_and_dd_skip_fetch_only_what_they_read(mnt, big_object):
    bucket, key, _ = big_object
    path = mnt.path / bucket / key
    assert os.stat(path).st_size == SIZE
    before = _bytes_in(mnt)
    tail = sh(f"tail -c 100 {path} | od -An -tx1 | tr -d ' \\n'", cwd=mnt.path)
    assert bytes.fromhex(tail) == _expected(SIZE - 100, 100)
    offset = 700 * MiB + 12_288
    out = sh(f"dd if={path} bs=4096 skip={offset // 4096} count=1 status=none | od -An -tx1 | tr -d ' \\n'",
             cwd=mnt.path)
    assert bytes.fromhex(out) == _expected(offset, 4096)
    fetched = _bytes_in(mnt) - before
    assert fetched <= 2 * MiB, f"tail and dd of 4 KiB fetched {fetched} bytes"


def test_cp_and_dd_read_it_whole(mnt, big_object, tmp_path):
    bucket, key, digest = big_object
    path = mnt.path / bucket / key
    sh(f"cp {path} {tmp_path}/copy", cwd=mnt.path, timeout=300)
    with open(tmp_path / "copy", "rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == digest
    os.unlink(tmp_path / "copy")
    out = sh(f"dd if={path} bs=1M status=none | sha256sum", cwd=mnt.path, timeout=300)
    assert out.split()[0] == digest
    # O_DIRECT: 1 MiB FUSE requests past the page cache, received straight into libfuse's buffer.
    out = sh(f"dd if={path} bs=1M iflag=direct status=none | sha256sum", cwd=mnt.path, timeout=300)
    assert out.split()[0] == digest
