"""A client that reads a large object slowly through a node that does not hold it gets all of it.

The holder cut connections that took none of their answer for keep_alive_timeout; the node relaying
to a slow client stops reading the holder while that client is full (back-pressure), so its peer
connection looked stalled to the holder, which cut it: the slow client's download ended short through
any other node, while the same reader got it whole from the holder (docs/configuration.md,
keep_alive_timeout: "one that reads slowly is not" cut). Real processes, a raw socket reading slowly."""

from __future__ import annotations

import hashlib
import socket
import time
from urllib.parse import urlsplit

import pytest

from .conftest import ClusterNodes

SIZE = 64 * 1024 * 1024  # more than the relaying node's socket buffers hold (tcp_rmem's 32 MiB at most here)
TIMEOUT = "2"  # keep_alive_timeout: the holder's stall check runs every 2 s


@pytest.fixture
def two_nodes(tmp_path):
    nodes = ClusterNodes(tmp_path, f"sqlite:///{tmp_path}/registry.db")
    # The default heartbeat and registry reading intervals: the node list a node holds is up to a minute
    # old, and the relaying node must count as alive all along (its heartbeat as of that reading).
    env = {"GATEWAY_KEEP_ALIVE_TIMEOUT": TIMEOUT, "GATEWAY_HEARTBEAT_INTERVAL": "5",
           "GATEWAY_REGISTRY_RELOAD_INTERVAL": "60"}
    try:
        nodes.add("p1", "primary", extra_env=env)
        nodes.add("x1", "proxy", extra_env=env)
        nodes.wait_known(2)
        yield nodes
    finally:
        nodes.stop()


def read_slowly_then_fast(url: str, slow_seconds: float) -> tuple[int, int, str]:
    """GET ``url`` on a socket with a small receive buffer, 4,000 bytes every 0.25 s for ``slow_seconds``
    (some progress all along: a slow reader, not a stopped one), then as fast as it comes: (the
    content-length, the bytes received, their sha256)."""
    parts = urlsplit(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.settimeout(30)
    sock.connect((parts.hostname, parts.port))
    try:
        sock.sendall(f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            buffer += sock.recv(4000)
        head, _, body = buffer.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        digest, received = hashlib.sha256(body), len(body)
        deadline = time.monotonic() + slow_seconds
        while time.monotonic() < deadline and received < length:
            chunk = sock.recv(4000)
            if not chunk:
                break
            digest.update(chunk)
            received += len(chunk)
            time.sleep(0.25)
        while received < length:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            digest.update(chunk)
            received += len(chunk)
        return length, received, digest.hexdigest()
    finally:
        sock.close()


def test_a_slow_reader_through_another_node_gets_the_whole_object(two_nodes):
    body = bytes(range(256)) * (SIZE // 256)
    s3 = two_nodes["p1"].client()
    s3.create_bucket(Bucket="slow")
    s3.put_object(Bucket="slow", Key="huge", Body=body)
    url = two_nodes["x1"].client().generate_presigned_url("get_object", Params={"Bucket": "slow", "Key": "huge"},
                                                          ExpiresIn=300)
    time.sleep(6)  # the holder's node list is read at the start: x1's heartbeat in it is 15 s old by the end
    length, received, digest = read_slowly_then_fast(url, slow_seconds=4 * float(TIMEOUT) + 1)
    assert (length, received) == (SIZE, SIZE), ("the download through the proxy was cut short:\n"
                                                + two_nodes["p1"].log()[-1500:] + two_nodes["x1"].log()[-1500:])
    assert digest == hashlib.sha256(body).hexdigest()
    assert "took none of its answer" not in two_nodes["p1"].log()
