"""Listings page through the API: about one LIST per 1,000 entries, no per-entry requests for ls -l."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from fuse_helpers import log_lines, requests_in_log, sh

from gateway.fuse.client import ObjectClient

ENTRIES = 2_100


def _fill(gateway, bucket: str, prefix: str, count: int, size: int) -> None:
    client = ObjectClient(gateway.endpoint, gateway.access_key, gateway.secret_key, pool_size=8)
    body = b"x" * size
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: client.put(bucket, f"{prefix}{n:05d}.jpg", body, size), range(count)))
    client.close()


def test_ls_l_of_a_large_directory(mnt, bucket, fuse_gw):
    _fill(fuse_gw, bucket, "big/", ENTRIES, 5_000)
    fuse_gw.client().put_object(Bucket=bucket, Key="big/sub/inner", Body=b"i")
    start = log_lines(fuse_gw)
    lines = sh("ls -l big", cwd=mnt.path / bucket).splitlines()
    requests = requests_in_log(fuse_gw, start)
    entries = [line for line in lines if not line.startswith("total")]
    assert len(entries) == ENTRIES + 1
    assert entries[-1].startswith("d") and entries[-1].endswith(" sub")
    assert all(" 5000 " in line for line in entries[:-1])
    # Pages of the listing (the lookup of "big" itself asks for one key: max-keys=1).
    lists = [target for method, target in requests if "list-type=2" in target and "max-keys=1000" in target]
    per_entry = [(m, t) for m, t in requests if "/big/0" in t]
    assert len(lists) == -(-(ENTRIES + 1) // 1000)
    assert per_entry == []
    # A second ls within the TTL is answered from the caches... for directories up to 10,000 entries.
    start = log_lines(fuse_gw)
    sh("ls -l big > /dev/null && find big -name '*.jpg' | wc -l", cwd=mnt.path / bucket)
    assert [t for m, t in requests_in_log(fuse_gw, start) if t.endswith("prefix=big%2F")] == []


def test_scandir_streams_pages(mnt, bucket, fuse_gw):
    _fill(fuse_gw, bucket, "", 1_200, 10)
    with os.scandir(mnt.path / bucket) as it:
        names = [entry.name for entry in it]
    assert len(names) == 1_200 and names == sorted(names)
