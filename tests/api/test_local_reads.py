"""Local reads (gateway/api/local_reads.py): object files handed over a Unix socket to readers on
the gateway's host, against a real gateway process. Every refusal leaves the gateway serving."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import stat
import subprocess
import sys
import urllib.request

import pytest

from gateway.api.local_reads import LocalReadServer, open_object_file
from gateway.backend import ObjectMeta
from gateway.payload import Payload
from gateway.testing.server import GatewayProcess, free_port
from gateway_plugins.local import LocalBackend
from gateway_plugins.memory import MemoryBackend


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    base = tmp_path_factory.mktemp("local-reads")
    socket_path = base / "gw.sock"
    with GatewayProcess(base / "cv-storage", args=["--local-socket", str(socket_path)]) as gateway:
        gateway.socket_path = str(socket_path)
        gateway.client().create_bucket(Bucket="lrb")
        yield gateway


def _read(opened) -> bytes:
    fd, offset, size = opened
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def _exchange(path: str, raw: bytes) -> bytes:
    """Send ``raw`` and return whatever the gateway answers before it closes the connection."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    return answer


def _still_serving(gw) -> None:
    s3 = gw.client()
    s3.put_object(Bucket="lrb", Key="alive", Body=b"yes")
    assert s3.get_object(Bucket="lrb", Key="alive")["Body"].read() == b"yes"
    assert _read(open_object_file(gw.socket_path, "lrb", "alive", None)) == b"yes"


def test_the_socket_is_only_for_the_gateways_user(gw):
    mode = os.stat(gw.socket_path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


def test_an_object_comes_as_its_file(gw):
    body = os.urandom(3 * 1024 * 1024 + 17)
    etag = gw.client().put_object(Bucket="lrb", Key="dir/big.bin", Body=body)["ETag"].strip('"')
    fd, offset, size = open_object_file(gw.socket_path, "lrb", "dir/big.bin", etag)
    assert size == len(body) and offset > 0  # the object file starts with the layout's header
    assert _read((fd, offset, size)) == body
    assert _read(open_object_file(gw.socket_path, "lrb", "dir/big.bin", None)) == body  # no version asked


def test_handed_out_files_are_counted_in_metrics(gw):
    def handed_out() -> float:
        with urllib.request.urlopen(gw.endpoint + "/metrics", timeout=10) as response:
            text = response.read().decode()
        return float(re.search(r"^gateway_local_reads_total (\S+)$", text, re.M).group(1))

    gw.client().put_object(Bucket="lrb", Key="counted", Body=b"c")
    before = handed_out()
    _read(open_object_file(gw.socket_path, "lrb", "counted", None))
    assert open_object_file(gw.socket_path, "lrb", "not-counted", None) is None
    assert handed_out() == before + 1


def test_missing_or_other_version_is_not_here(gw):
    gw.client().put_object(Bucket="lrb", Key="v", Body=b"one")
    assert open_object_file(gw.socket_path, "lrb", "no-such-key", None) is None
    assert open_object_file(gw.socket_path, "no-such-bucket", "v", None) is None
    assert open_object_file(gw.socket_path, "lrb", "v", "0123456789abcdef0123456789abcdef") is None


def test_a_handed_out_file_keeps_its_version(gw):
    s3 = gw.client()
    s3.put_object(Bucket="lrb", Key="snap", Body=b"old" * 100_000)
    opened = open_object_file(gw.socket_path, "lrb", "snap", None)
    s3.put_object(Bucket="lrb", Key="snap", Body=b"new" * 100_000)
    assert _read(opened) == b"old" * 100_000  # the reader's copy is the version it opened
    assert _read(open_object_file(gw.socket_path, "lrb", "snap", None)) == b"new" * 100_000
    opened = open_object_file(gw.socket_path, "lrb", "snap", None)
    s3.delete_object(Bucket="lrb", Key="snap")
    assert _read(opened) == b"new" * 100_000
    assert open_object_file(gw.socket_path, "lrb", "snap", None) is None


@pytest.mark.parametrize("raw, expected", [
    (b"not json\n", "malformed request"),
    (b'["lrb", "k"]\n', "malformed request"),
    (b'{"bucket": "lrb"}\n', "malformed request"),
    (b'{"bucket": "lrb", "key": 5}\n', "malformed request"),
    (b'{"bucket": "../etc", "key": "passwd"}\n', "Bucket names are"),
    (b'{"bucket": "lrb", "key": "' + b"k" * 1100 + b'"}\n', "at most 1024 bytes"),
])
def test_bad_requests_get_an_error_line(gw, raw, expected):
    reply = json.loads(_exchange(gw.socket_path, raw))
    assert expected in reply["error"]
    with pytest.raises(ValueError, match="refused the request"):
        open_object_file(gw.socket_path, "../etc", "passwd", None)
    _still_serving(gw)


@pytest.mark.parametrize("raw", [b"", b'{"bucket": "lrb", "key": "v"', b"x" * (20 * 1024)],
                         ids=["nothing", "no-newline", "too-long"])
def test_incomplete_or_endless_requests_are_dropped(gw, raw):
    assert _exchange(gw.socket_path, raw) == b""  # closed without an answer (nothing to answer)
    _still_serving(gw)


def test_stopping_removes_the_socket_and_a_killed_gateways_socket_is_taken_over(tmp_path):
    path = tmp_path / "gw.sock"
    data = tmp_path / "cv-storage"
    with GatewayProcess(data, args=["--local-socket", str(path)]):
        assert path.exists()
    assert not path.exists()
    first = GatewayProcess(data, args=["--local-socket", str(path)]).start()
    first.kill()  # kill -9: the socket file stays behind, nobody listening on it
    assert path.exists()
    with GatewayProcess(data, args=["--local-socket", str(path)]) as second:
        second.client().create_bucket(Bucket="after")
        second.client().put_object(Bucket="after", Key="k", Body=b"served")
        assert _read(open_object_file(str(path), "after", "k", None)) == b"served"


def _serve_expecting_failure(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", "serve", "--port", str(free_port()), "--data-dir",
                           str(tmp_path / "other"), "--allow-anonymous", *args],
                          capture_output=True, text=True, timeout=60)


def test_a_socket_in_use_or_a_file_in_the_way_is_refused(gw, tmp_path):
    in_use = _serve_expecting_failure(["--local-socket", gw.socket_path], tmp_path)
    assert in_use.returncode == 2, in_use.stderr
    assert "in use by another running gateway" in in_use.stderr
    _still_serving(gw)  # and its socket was left alone
    regular = tmp_path / "not-a-socket"
    regular.write_text("precious")
    refused = _serve_expecting_failure(["--local-socket", str(regular)], tmp_path)
    assert refused.returncode == 2 and "exists and is not a socket" in refused.stderr, refused.stderr
    assert regular.read_text() == "precious"
    no_dir = _serve_expecting_failure(["--local-socket", str(tmp_path / "missing" / "gw.sock")], tmp_path)
    assert no_dir.returncode == 2 and "cannot create the local-read socket" in no_dir.stderr, no_dir.stderr
    too_long = _serve_expecting_failure(["--local-socket", str(tmp_path / ("s" * 120))], tmp_path)
    assert too_long.returncode == 2 and "longer than 107 bytes" in too_long.stderr, too_long.stderr


def test_a_backend_without_local_files_has_nothing_here(tmp_path):
    """Backend.open_file's default (S3, SMB, memory): every request is "not here", read through HTTP."""
    backend = MemoryBackend("mem")

    async def scenario():
        await backend.create_bucket("memb")
        server = LocalReadServer(str(tmp_path / "m.sock"), lambda bucket: backend)
        await server.start()
        try:
            return await asyncio.to_thread(open_object_file, server.path, "memb", "k", None)
        finally:
            await server.close()

    assert asyncio.run(scenario()) is None
    assert not (tmp_path / "m.sock").exists()


def test_nothing_is_here_while_the_node_holds_reads_of_its_own_copies(tmp_path):
    """A cluster node that has just run again after a stall serves no copy of its own until it caught
    up on the overwrites made meanwhile (Cluster.reads_held): its files are not handed out either."""
    backend = LocalBackend(root=str(tmp_path / "cv-storage"))
    held = [True]

    async def scenario():
        await backend.start()
        await backend.create_bucket("heldb")
        await backend.put("heldb", "k", Payload.from_bytes(b"maybe outdated"), ObjectMeta())
        server = LocalReadServer(str(tmp_path / "h.sock"), lambda bucket: backend, lambda: held[0])
        await server.start()
        try:
            while_held = await asyncio.to_thread(open_object_file, server.path, "heldb", "k", None)
            held[0] = False
            after = await asyncio.to_thread(open_object_file, server.path, "heldb", "k", None)
            return while_held, after
        finally:
            await server.close()

    while_held, after = asyncio.run(scenario())
    assert while_held is None
    assert _read(after) == b"maybe outdated"
