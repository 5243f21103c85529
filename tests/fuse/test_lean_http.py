"""The mount's lean GET client (gateway/fuse/lean_http.py): against the real gateway, and against
small loopback servers that misbehave on purpose (close idle connections, stay silent, cut a body
short, send garbage)."""

from __future__ import annotations

import errno
import socket
import threading
import time

import pytest

from gateway.fuse.client import ObjectClient, StoreError
from gateway.fuse.lean_http import LeanHttp


class RawServer:
    """A loopback TCP server that answers each request on a connection with the next of ``answers``
    (bytes, or None to close the connection instead), then closes it; counts connections."""

    def __init__(self, answers_per_connection):
        self.answers_per_connection = answers_per_connection
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            answers = list(self.answers_per_connection(self.connections))
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn, answers), daemon=True).start()

    def _handle(self, conn: socket.socket, answers: list) -> None:
        with conn:
            for answer in answers:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                self.requests.append(data)
                if answer is None:
                    return
                if answer == "silent":
                    time.sleep(5)
                    return
                conn.sendall(answer)
            time.sleep(0.2)

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@pytest.fixture
def raw_server():
    servers = []

    def start(answers_per_connection):
        server = RawServer(answers_per_connection)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def lean(port: int, timeout: float = 2.0, body_limit: int = 1024) -> LeanHttp:
    return LeanHttp("127.0.0.1", port, timeout, timeout, body_limit)


def test_keep_alive_connections_are_reused(raw_server):
    server = raw_server(lambda n: [OK, OK, OK])
    client = lean(server.port)
    for _ in range(3):
        response = client.get("/b/k", {"host": "x"})
        assert (response.status, response.data) == (200, b"hello")
    assert server.connections == 1
    assert server.requests[0].startswith(b"GET /b/k HTTP/1.1\r\nhost: x\r\n")
    client.close()


def test_a_connection_the_server_closed_while_idle_is_replaced_once(raw_server):
    # First connection: one answer, then closed; the second request on it gets nothing and is sent
    # again on a fresh connection.
    server = raw_server(lambda n: [OK] if n == 0 else [OK, OK])
    client = lean(server.port)
    assert client.get("/a", {}).data == b"hello"
    time.sleep(0.3)  # the server has closed the first connection
    assert client.get("/b", {}).data == b"hello"
    assert server.connections == 2


def test_connection_close_is_honoured(raw_server):
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello"
    server = raw_server(lambda n: [closing])
    client = lean(server.port)
    assert client.get("/a", {}).data == b"hello"
    assert client.get("/b", {}).data == b"hello"
    assert server.connections == 2


def test_chunked_bodies_and_repeated_headers(raw_server):
    chunked = (b"HTTP/1.1 206 Partial Content\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\nx-a: 2\r\n\r\n"
               b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    server = raw_server(lambda n: [chunked, OK])
    client = lean(server.port)
    response = client.get("/a", {})
    assert (response.status, response.data, response.headers["x-a"]) == (206, b"abcde", "1")
    assert client.get("/b", {}).data == b"hello"  # the connection stayed usable
    assert server.connections == 1


def test_a_body_over_the_limit_is_not_read(raw_server):
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000
    big_chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1388\r\n" + b"x" * 5000 + b"\r\n0\r\n\r\n"
    server = raw_server(lambda n: [[big], [big_chunked], [OK]][n])
    client = lean(server.port, body_limit=1000)
    assert client.get("/a", {}) is None
    assert client.get("/b", {}) is None
    assert client.get("/c", {}).data == b"hello"
    assert server.connections == 3  # a connection with an unread body is not reused


def test_a_body_cut_short_is_an_error_not_a_retry(raw_server):
    short = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this"
    server = raw_server(lambda n: [short])  # then closed
    client = lean(server.port)
    with pytest.raises(ConnectionError):
        client.get("/a", {})
    assert server.connections == 1  # bytes of an answer came: not sent again


def test_garbage_after_an_answer_keeps_the_answer_and_drops_the_connection(raw_server):
    server = raw_server(lambda n: [OK + b"GARBAGE\r\n\r\n", OK])
    client = lean(server.port)
    assert client.get("/a", {}).data == b"hello"
    assert client.get("/b", {}).data == b"hello"
    assert server.connections == 2


def test_a_second_whole_answer_after_the_first_does_not_replace_it(raw_server):
    second = b"HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\nContent-Length: 4\r\n\r\noops"
    server = raw_server(lambda n: [OK + second, OK])
    client = lean(server.port)
    response = client.get("/a", {})
    assert (response.status, response.data) == (200, b"hello")
    assert client.get("/b", {}).data == b"hello"
    assert server.connections == 2  # the connection that talked out of turn was dropped


def test_a_malformed_answer_is_an_error(raw_server):
    server = raw_server(lambda n: [b"HTTP/1.1 2x0 what\r\n\r\n"])
    client = lean(server.port)
    with pytest.raises(ConnectionError, match="malformed"):
        client.get("/a", {})


def test_a_silent_server_times_out_after_one_retry(raw_server):
    server = raw_server(lambda n: ["silent"])
    client = lean(server.port, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        client.get("/a", {})
    assert 0.5 <= time.monotonic() - started < 3
    assert server.connections == 2


def test_nothing_listening_is_refused():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        lean(port).get("/a", {})


def test_object_client_gets_go_lean_and_fall_back_to_urllib3(fuse_gw, monkeypatch):
    """The real gateway: lookups and ranged reads over the lean client, bodies over its limit
    (redone with urllib3) still whole, errors mapped to errno as before, one kept connection."""
    s3 = fuse_gw.client()
    s3.create_bucket(Bucket="lean")
    s3.put_object(Bucket="lean", Key="small", Body=b"0123456789")
    s3.put_object(Bucket="lean", Key="big", Body=b"b" * 300_000)
    client = ObjectClient(fuse_gw.endpoint, fuse_gw.access_key, fuse_gw.secret_key, pool_size=1)
    assert client._lean is not None
    stat, first = client.get_first("lean", "small", 4)
    assert (stat.size, first) == (10, b"0123")
    assert client.get_range("lean", "small", 2, 5) == b"234"
    monkeypatch.setattr(client._lean, "body_limit", 100_000)
    assert client.get_range("lean", "big", 0, 300_000) == b"b" * 300_000  # urllib3 did it
    with pytest.raises(StoreError) as missing:
        client.get_first("lean", "nope", 4)
    assert missing.value.errno == errno.ENOENT
    assert len(client._lean._idle) == 1  # every lean request used the one connection
    client.close()
    assert client._lean._idle == []


def test_object_client_maps_a_dead_gateway_to_eio():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = ObjectClient(f"http://127.0.0.1:{port}", "k", "s", timeout=1)
    with pytest.raises(StoreError) as dead:
        client.get_first("b", "k", 4)
    assert dead.value.errno == errno.EIO and "unreachable" in str(dead.value)


# Pipelined GETs (get_many, for the mount's statahead) ----------------------------------------------


class PipeServer:
    """A loopback server for pipelined requests: on each connection it waits for ``expect`` request
    heads (however they arrive), then sends ``answers`` (bytes, joined) in one write and closes the
    connection if ``close`` is set, else waits for the next batch the same way."""

    def __init__(self, expect: int, answers: list[bytes], close: bool = False):
        self.expect, self.answers, self.close_after = expect, answers, close
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.heads: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while True:
                while data.count(b"\r\n\r\n") < self.expect:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                heads = data.split(b"\r\n\r\n")
                self.heads.extend(heads[: self.expect])
                data = b"\r\n\r\n".join(heads[self.expect:])
                conn.sendall(b"".join(self.answers))
                if self.close_after:
                    return

    def close(self) -> None:
        self.sock.close()


def _ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-N: %s\r\n\r\n%s" % (len(body), body[:1], body)


def test_pipelined_gets_are_sent_at_once_and_answered_in_order():
    server = PipeServer(3, [_ok(b"one"), _ok(b"two"), _ok(b"three")])
    client = lean(server.port)
    for _ in range(2):
        answers = client.get_many([("/a", {"host": "x"}), ("/b", {"host": "x"}), ("/c", {"host": "x"})])
        assert [(a.status, a.data, a.headers["x-n"]) for a in answers] == [
            (200, b"one", "o"), (200, b"two", "t"), (200, b"three", "t")]
    assert server.connections == 1  # the connection was kept for the second batch
    assert [h.split(b" ")[1] for h in server.heads] == [b"/a", b"/b", b"/c"] * 2
    client.close()
    server.close()


def test_a_pipeline_cut_short_keeps_the_answers_that_came():
    server = PipeServer(3, [_ok(b"one"), _ok(b"two")], close=True)  # then the connection ends
    client = lean(server.port)
    answers = client.get_many([("/a", {}), ("/b", {}), ("/c", {})])
    assert [a.data if a else None for a in answers] == [b"one", b"two", None]
    assert client._idle == []  # the spent connection was not kept
    server.close()


def test_a_pipelined_body_over_the_limit_is_none_and_the_others_stand():
    server = PipeServer(2, [_ok(b"x" * 2000), _ok(b"small")])
    client = lean(server.port, body_limit=1024)
    answers = client.get_many([("/big", {}), ("/small", {})])
    assert answers[0] is None and answers[1].data == b"small"
    server.close()


def test_a_pipeline_to_nothing_listening_is_an_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        lean(port).get_many([("/a", {}), ("/b", {})])


def test_object_client_get_first_many_against_the_gateway(fuse_gw):
    """The real gateway answers pipelined ranged GETs in order, on one connection; a missing or
    empty object has no answer (None), which the caller then asks for on its own."""
    s3 = fuse_gw.client()
    s3.create_bucket(Bucket="pipelined")
    for n in range(20):
        s3.put_object(Bucket="pipelined", Key=f"d/{n:02d}", Body=b"%02d" % n * (n + 1),
                      Metadata={"mode": "33188"})
    s3.put_object(Bucket="pipelined", Key="d/empty", Body=b"")
    client = ObjectClient(fuse_gw.endpoint, fuse_gw.access_key, fuse_gw.secret_key, pool_size=1)
    keys = [f"d/{n:02d}" for n in range(20)] + ["d/missing", "d/empty"]
    answers = client.get_first_many("pipelined", keys, 16)
    for n in range(20):
        info, data = answers[n]
        assert (info.key, info.size, data, info.metadata["mode"]) == (
            f"d/{n:02d}", 2 * (n + 1), (b"%02d" % n * (n + 1))[:16], "33188")
        assert info.last_modified > 1.7e9 and info.etag
    assert answers[20:] == [None, None]
    assert client.stats["GET"] == 22
    assert len(client._lean._idle) == 1
    client.close()
