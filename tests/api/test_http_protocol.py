"""The HTTP front end's own answers to plain object reads (gateway/api/protocol.py), on raw sockets.

Plain GETs and HEADs of objects are answered below ASGI; these tests speak HTTP/1.1
byte by byte to check what a socket sees: keep-alive, pipelining, HTTP/1.0 and
Connection: close, HEAD framing, errors, header injection, bodies larger than one
read, and that the answers match the ASGI path's.
"""

from __future__ import annotations

import hashlib
import re
import socket
import urllib.request

import pytest
from botocore.exceptions import ClientError

from s3_helpers import key_path, raw_request, sign

MiB = 1024 * 1024


def _fast_reads(gateway) -> int:
    text = urllib.request.urlopen(f"{gateway.endpoint}/_admin/metrics", timeout=10).read().decode()
    return int(float(re.search(r"^gateway_http_fast_reads_total (\S+)$", text, re.M).group(1)))


def _request_bytes(gateway, method: str, path: str, headers: dict | None = None, version: str = "1.1",
                   query: str = "") -> bytes:
    target, signed = sign(gateway, method, path, headers=headers, query=query)
    signed.setdefault("Host", f"{gateway.host}:{gateway.port}")  # signed for; http.client would add it
    lines = [f"{method} {target} HTTP/{version}", *(f"{k}: {v}" for k, v in signed.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def getheader(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class Wire:
    """One connection, read response by response (a strict little HTTP/1.1 response reader)."""

    def __init__(self, gateway):
        self.sock = socket.create_connection((gateway.host, gateway.port), timeout=10)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, method: str = "GET") -> Response:
        status_line = self.file.readline()
        version, status, _ = status_line.decode().split(" ", 2)
        assert version == "HTTP/1.1", status_line
        headers = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            assert name.lower() not in headers, f"header {name} twice"
            headers[name.lower()] = value.strip()
        assert "transfer-encoding" not in headers  # every answer here has a known length
        length = 0 if method == "HEAD" or status in ("304",) else int(headers["content-length"])
        body = self.file.read(length)
        assert len(body) == length
        return Response(int(status), headers, body)

    def closed_by_server(self) -> bool:
        return self.file.read(1) == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def wire(gateway):
    conn = Wire(gateway)
    yield conn
    conn.close()


@pytest.fixture
def objects(s3, bucket):
    small, large = b"small object" * 100, hashlib.sha256(b"x").digest() * (3 * MiB // 32 + 5)
    s3.put_object(Bucket=bucket, Key="small", Body=small, ContentType="image/jpeg", Metadata={"camera": "7"})
    s3.put_object(Bucket=bucket, Key="large", Body=large)
    return bucket, small, large


def test_plain_reads_are_answered_below_asgi_on_one_keep_alive_connection(gateway, wire, objects):
    bucket, small, _ = objects
    before = _fast_reads(gateway)
    for _ in range(3):
        wire.send(_request_bytes(gateway, "GET", f"/{bucket}/small"))
        response = wire.response()
        assert response.status == 200 and response.body == small
        assert response.getheader("content-type") == "image/jpeg"
        assert response.getheader("x-amz-meta-camera") == "7"
        assert response.getheader("content-length") == str(len(small))
        assert response.getheader("date")
    assert _fast_reads(gateway) - before == 3


def test_answers_match_the_asgi_path(gateway, objects):
    # The general path answers the same object when the request is not a plain read (a request
    # body makes it one of those); headers other than the request id and date must match.
    bucket, small, _ = objects
    fast = raw_request(gateway, "GET", f"/{bucket}/small")
    slow = raw_request(gateway, "GET", f"/{bucket}/small", body=b"x")
    assert fast.status == slow.status == 200 and fast.body == slow.body == small

    def comparable(response):
        return [(k, v) for k, v in response.header_list if k not in ("x-amz-request-id", "date", "connection")]

    assert comparable(fast) == comparable(slow)


def test_pipelined_requests_are_answered_in_order(gateway, wire, objects):
    bucket, small, large = objects
    # A listing (answered through ASGI) between plain reads (answered below it, written in batches).
    wire.send(_request_bytes(gateway, "GET", f"/{bucket}/small") + _request_bytes(gateway, "HEAD", f"/{bucket}/small")
              + _request_bytes(gateway, "GET", f"/{bucket}/missing") + _request_bytes(gateway, "GET", f"/{bucket}/large")
              + _request_bytes(gateway, "GET", f"/{bucket}/small") + _request_bytes(gateway, "GET", f"/{bucket}")
              + _request_bytes(gateway, "GET", f"/{bucket}/small"))
    first = wire.response()
    head = wire.response("HEAD")
    missing = wire.response()
    big = wire.response()
    last = wire.response()
    listing = wire.response()
    after_listing = wire.response()
    assert listing.status == 200 and b"<Key>large</Key><" in listing.body
    assert (after_listing.status, after_listing.body) == (200, small)
    assert (first.status, first.body) == (200, small)
    assert (head.status, head.body, head.getheader("content-length")) == (200, b"", str(len(small)))
    assert missing.status == 404 and b"<Code>NoSuchKey</Code>" in missing.body
    assert (big.status, hashlib.sha256(big.body).digest()) == (200, hashlib.sha256(large).digest())
    assert (last.status, last.body) == (200, small)


def test_head_of_missing_object_has_no_body_and_the_connection_stays_usable(gateway, wire, objects):
    bucket, small, _ = objects
    wire.send(_request_bytes(gateway, "HEAD", f"/{bucket}/missing"))
    response = wire.response("HEAD")
    assert response.status == 404 and response.body == b""
    wire.send(_request_bytes(gateway, "GET", f"/{bucket}/small"))
    assert wire.response().body == small


def test_errors_are_s3_xml(gateway, wire, objects):
    bucket, _, _ = objects
    wire.send(_request_bytes(gateway, "GET", "/no-such-bucket-here/key"))
    response = wire.response()
    assert response.status == 404 and b"<Code>NoSuchBucket</Code>" in response.body
    assert response.getheader("content-type") == "application/xml"
    wire.send(f"GET /{bucket}/small HTTP/1.1\r\nHost: x\r\n\r\n".encode())  # not signed
    response = wire.response()
    assert response.status == 403 and b"<Code>AccessDenied</Code>" in response.body


@pytest.mark.parametrize("head", [
    b"PUT /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\ncontent-length: 6\r\n\r\nabcdef",  # rclone presigned
    b"PUT /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET /b/k HTTP/1.1\r\nHost x\r\n\r\n",
])
def test_requests_the_parser_refuses_get_an_s3_error_and_the_server_stays_up(gateway, wire, objects, head):
    wire.send(head)
    response = wire.response()
    assert response.status == 400 and response.getheader("content-type") == "application/xml"
    assert b"<Code>InvalidRequest</Code>" in response.body and b"Content-Length" in response.body
    assert b"<HostId>%s:%d</HostId>" % (socket.gethostname().encode(), gateway.port) in response.body
    assert wire.closed_by_server()
    bucket, small, _ = objects
    with urllib.request.urlopen(gateway.endpoint + "/healthz", timeout=10) as health:
        assert health.status == 200


@pytest.mark.parametrize("version, headers", [("1.0", {}), ("1.1", {"Connection": "close"})])
def test_connection_close_is_honoured(gateway, wire, objects, version, headers):
    bucket, small, _ = objects
    wire.send(_request_bytes(gateway, "GET", f"/{bucket}/small", headers=headers, version=version))
    response = wire.response()
    assert response.status == 200 and response.body == small
    assert response.getheader("connection") == "close"
    assert wire.closed_by_server()


def test_an_object_larger_than_one_read_streams_whole(gateway, wire, objects):
    bucket, _, large = objects
    for _ in range(2):
        wire.send(_request_bytes(gateway, "GET", f"/{bucket}/large"))
        response = wire.response()
        assert response.status == 200 and len(response.body) == len(large) and response.body == large
    wire.send(_request_bytes(gateway, "GET", f"/{bucket}/large", headers={"Range": "bytes=100-2097251"}))
    response = wire.response()
    assert response.status == 206 and response.body == large[100:2097252]


def test_a_client_that_leaves_mid_body_does_not_hurt_the_server(gateway, objects):
    bucket, small, _ = objects
    for _ in range(5):
        sock = socket.create_connection((gateway.host, gateway.port), timeout=10)
        sock.sendall(_request_bytes(gateway, "GET", f"/{bucket}/large"))
        sock.recv(1000)
        sock.close()
    assert raw_request(gateway, "GET", f"/{bucket}/small").body == small


def test_a_header_that_would_split_the_response_is_never_sent(gateway, wire, objects):
    bucket, small, _ = objects
    # response-content-type is sent back as Content-Type: a CR LF in it must not reach the wire.
    wire.send(_request_bytes(gateway, "GET", key_path(bucket, "small"), query="response-content-type=a%0D%0AX-Evil%3A%201"))
    response = wire.response()
    assert response.getheader("x-evil") is None
    assert response.status == 400 and b"<Code>InvalidArgument</Code>" in response.body
    assert b"response-content-type" in response.body
    wire.send(_request_bytes(gateway, "GET", f"/{bucket}/small"))
    assert wire.response().body == small


def test_stored_metadata_that_http_cannot_carry_is_a_clear_error(gateway, wire, bucket):
    # The files on disk are the truth: an object written by other means (here the local backend in
    # this process, on the gateway's directory) may hold a metadata value with a line break.
    import asyncio

    from gateway.backend import ObjectMeta
    from gateway.payload import Payload
    from gateway_plugins.local import LocalBackend

    backend = LocalBackend(root=str(gateway.data_dir))
    meta = ObjectMeta(metadata={"note": "line one\r\nX-Evil: 1"})
    asyncio.run(backend.put(bucket, "odd", Payload.from_bytes(b"body"), meta))
    for method in ("GET", "HEAD"):
        wire.send(_request_bytes(gateway, method, f"/{bucket}/odd"))
        response = wire.response(method)
        assert response.status == 500 and response.getheader("x-evil") is None
    wire.send(_request_bytes(gateway, "GET", f"/{bucket}/odd"))
    response = wire.response()
    assert b"<Code>InternalError</Code>" in response.body and b"x-amz-meta-note" in response.body
    asyncio.run(backend.put(bucket, "fine", Payload.from_bytes(b"body"), ObjectMeta(metadata={"note": "ok"})))
    wire.send(_request_bytes(gateway, "GET", f"/{bucket}/fine"))
    assert wire.response().getheader("x-amz-meta-note") == "ok"


def test_idle_connections_are_closed_and_busy_ones_kept(tmp_path):
    # GATEWAY_KEEP_ALIVE_TIMEOUT=1: an idle connection is closed 1-2 s after its last request;
    # one that keeps sending requests stays open however long it lives.
    import time

    from gateway.testing.server import GatewayProcess

    with GatewayProcess(tmp_path / "cv-storage", env={"GATEWAY_KEEP_ALIVE_TIMEOUT": "1"}) as gw:
        gw.client().create_bucket(Bucket="idle")
        gw.client().put_object(Bucket="idle", Key="k", Body=b"v")
        idle, busy, silent = Wire(gw), Wire(gw), Wire(gw)
        try:
            for conn in (idle, busy):
                conn.send(_request_bytes(gw, "GET", "/idle/k"))
                assert conn.response().body == b"v"
            for _ in range(12):  # 3 s of requests on one of them, every 0.25 s
                time.sleep(0.25)
                busy.send(_request_bytes(gw, "GET", "/idle/k"))
                assert busy.response().body == b"v"
            idle.sock.settimeout(5)
            assert idle.closed_by_server()  # closed by then (within 2 s of its last request)
            silent.sock.settimeout(5)
            assert silent.closed_by_server()  # connected, never sent a request
            busy.send(_request_bytes(gw, "GET", "/idle/k"))
            assert busy.response().body == b"v"
        finally:
            for conn in (idle, busy, silent):
                conn.close()


class _Transport:
    def __init__(self, closing=False):
        self.written, self.closed, self.closing = [], False, closing

    def writelines(self, parts):
        assert not self.closed
        self.written.append(b"".join(parts))

    def close(self):
        self.closed = True

    def is_closing(self):
        return self.closing or self.closed


def test_write_batch_keeps_order_joins_a_connections_writes_closes_after_writing_and_stays_bounded():
    import asyncio

    from gateway.write_batch import WriteBatch

    async def main():
        loop = asyncio.get_running_loop()
        batch = WriteBatch(limit=100)
        a, b, gone = _Transport(), _Transport(), _Transport(closing=True)
        batch.add(loop, a, (b"a1",), False)
        batch.add(loop, b, (b"b", b"1"), False)
        batch.add(loop, gone, (b"lost",), False)
        batch.add(loop, a, (b"a2",), True)
        assert a.written == [] and batch.size == 10  # nothing written before the iteration ends
        await asyncio.sleep(0)
        assert a.written == [b"a1a2"] and a.closed and b.written == [b"b1"] and not b.closed
        assert gone.written == []
        c = _Transport()
        for i in range(5):
            batch.add(loop, c, (bytes([i]) * 30,), False)
            assert batch.size <= 100  # past the limit everything goes out at once
        # One connection's writes of the batch go out together (one send), in their order.
        assert [len(x) for x in c.written] == [120]
        await asyncio.sleep(0)
        assert [len(x) for x in c.written] == [120, 30] and batch.size == 0
        assert b"".join(c.written) == b"".join(bytes([i]) * 30 for i in range(5))

    asyncio.run(main())


@pytest.mark.parametrize("form", ["fragment", "absolute"])
def test_other_request_target_forms_read_the_same_object(gateway, objects, form):
    # The fast path splits the usual origin form itself; other forms take httptools' URL parser.
    bucket, small, _ = objects
    signed_target, headers = sign(gateway, "GET", f"/{bucket}/small")
    headers.setdefault("Host", f"{gateway.host}:{gateway.port}")
    target = signed_target + "#fragment" if form == "fragment" else f"http://{gateway.host}{signed_target}"
    conn = Wire(gateway)
    try:
        conn.send(("\r\n".join([f"GET {target} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())])
                   + "\r\n\r\n").encode())
        response = conn.response()
        assert response.status == 200 and response.body == small
    finally:
        conn.close()


def test_a_raw_non_ascii_target_is_refused_and_the_server_stays_up(gateway, objects):
    bucket, small, _ = objects
    conn = Wire(gateway)
    try:
        conn.send(f"GET /{bucket}/\u00e9 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert conn.response().status == 400
    finally:
        conn.close()
    assert raw_request(gateway, "GET", f"/{bucket}/small").body == small


def _answers_after_half_close(gateway, data: bytes, count: int) -> tuple[list[Response], bool]:
    """Send ``data``, close our sending side (shutdown(SHUT_WR), as ``nc -N`` does), read ``count``
    answers; then whether the server closed the connection."""
    conn = Wire(gateway)
    try:
        conn.send(data)
        conn.sock.shutdown(socket.SHUT_WR)
        answers = [conn.response() for _ in range(count)]
        return answers, conn.closed_by_server()
    finally:
        conn.close()


def test_a_client_that_half_closes_after_its_requests_still_gets_the_answers(gateway, s3, objects):
    bucket, small, _ = objects
    get = _request_bytes(gateway, "GET", f"/{bucket}/small")  # answered below ASGI
    answers, closed = _answers_after_half_close(gateway, get, 1)
    assert answers[0].status == 200 and answers[0].body == small and closed
    answers, closed = _answers_after_half_close(gateway, get + get + get, 3)  # pipelined
    assert [a.body for a in answers] == [small] * 3 and closed
    # A PUT (through ASGI) that arrived whole is stored and answered.
    body = b"written by a client that half-closed"
    target, headers = sign(gateway, "PUT", f"/{bucket}/half-closed", body=body)
    head = "".join(f"{k}: {v}\r\n" for k, v in {**headers, "Host": f"{gateway.host}:{gateway.port}",
                                                 "Content-Length": str(len(body))}.items())
    put = f"PUT {target} HTTP/1.1\r\n{head}\r\n".encode() + body
    answers, closed = _answers_after_half_close(gateway, put + get, 2)
    assert answers[0].status == 200 and answers[0].getheader("etag") and closed
    assert answers[1].status == 200 and answers[1].body == small
    assert s3.get_object(Bucket=bucket, Key="half-closed")["Body"].read() == body


def test_a_half_closed_request_with_a_short_body_stores_nothing(gateway, s3, bucket):
    body = b"0123456789"
    target, headers = sign(gateway, "PUT", f"/{bucket}/short", body=body)
    head = "".join(f"{k}: {v}\r\n" for k, v in {**headers, "Host": f"{gateway.host}:{gateway.port}",
                                                 "Content-Length": str(len(body))}.items())
    conn = Wire(gateway)
    try:
        conn.send(f"PUT {target} HTTP/1.1\r\n{head}\r\n".encode() + body[:3])
        conn.sock.shutdown(socket.SHUT_WR)
        assert conn.file.read() == b""  # closed at once: the body can never be completed
    finally:
        conn.close()
    with pytest.raises(ClientError) as info:
        s3.head_object(Bucket=bucket, Key="short")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_a_request_body_that_stops_arriving_is_timed_out_and_nothing_is_stored(tmp_path):
    # GATEWAY_KEEP_ALIVE_TIMEOUT=1. A client that sent a head and part of the body, then nothing
    # (it hung, or its network went), used to keep its connection, its task and an open temp file
    # for as long as the server ran. Now: 400 RequestTimeout (as S3) after 1-2 s without a byte,
    # nothing stored, the temp file gone. A body that keeps coming, however slowly, is read whole.
    import time

    from gateway.testing.server import GatewayProcess

    with GatewayProcess(tmp_path / "cv-storage", env={"GATEWAY_KEEP_ALIVE_TIMEOUT": "1"}) as gw:
        s3 = gw.client()
        s3.create_bucket(Bucket="stall")
        upload = s3.create_multipart_upload(Bucket="stall", Key="part")["UploadId"]
        slow, stalled = Wire(gw), []
        try:
            for path, query, expect in [("/stall/put", "", {}), ("/stall/part", f"partNumber=1&uploadId={upload}", {}),
                                        ("/stall/continued", "", {"Expect": "100-continue"})]:
                target, headers = sign(gw, "PUT", path, query=query, unsigned_payload=True,
                                       headers={"Content-Length": "100000", **expect})
                head = "".join(f"{k}: {v}\r\n" for k, v in {**headers, "Host": f"{gw.host}:{gw.port}"}.items())
                conn = Wire(gw)
                stalled.append(conn)
                conn.send(f"PUT {target} HTTP/1.1\r\n{head}\r\n".encode())
                if expect:
                    assert conn.file.readline() == b"HTTP/1.1 100 Continue\r\n" and conn.file.readline() == b"\r\n"
                conn.send(b"x" * 1000)
            target, headers = sign(gw, "PUT", "/stall/slow", body=b"s" * 16, unsigned_payload=True)
            head = "".join(f"{k}: {v}\r\n" for k, v in {**headers, "Host": f"{gw.host}:{gw.port}",
                                                         "Content-Length": "16"}.items())
            slow.send(f"PUT {target} HTTP/1.1\r\n{head}\r\n".encode())
            for _ in range(16):  # 4 s for 16 bytes: slow, but never 1 s without one
                time.sleep(0.25)
                slow.send(b"s")
            assert slow.response().status == 200
            for conn in stalled:
                conn.sock.settimeout(10)
                response = conn.response()
                assert response.status == 400 and response.getheader("content-type") == "application/xml"
                assert b"<Code>RequestTimeout</Code>" in response.body
                assert conn.closed_by_server()
            def temp_files():
                return [p for p in (gw.data_dir / ".gateway" / "tmp").rglob("*") if p.is_file()]

            deadline = time.monotonic() + 10
            while temp_files() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert temp_files() == []
            assert [o["Key"] for o in s3.list_objects_v2(Bucket="stall")["Contents"]] == ["slow"]
            assert s3.list_parts(Bucket="stall", Key="part", UploadId=upload).get("Parts", []) == []
        finally:
            for conn in (slow, *stalled):
                conn.close()


def test_requests_before_one_the_parser_refuses_are_still_answered(gateway, s3, bucket):
    # A PUT whose Content-Length is shorter than what follows it: the rest is read as the next
    # request, which the parser refuses. The PUT was stored, but its answer (written by its task,
    # after the refusal had closed the connection) was lost: the client saw only a 400.
    body = b"0123456789"
    target, headers = sign(gateway, "PUT", f"/{bucket}/declared", body=body[:5], unsigned_payload=True)
    head = "".join(f"{k}: {v}\r\n" for k, v in {**headers, "Host": f"{gateway.host}:{gateway.port}",
                                                 "Content-Length": "5"}.items())
    listing = _request_bytes(gateway, "GET", f"/{bucket}")  # pipelined, also answered through ASGI
    conn = Wire(gateway)
    try:
        conn.send(f"PUT {target} HTTP/1.1\r\n{head}\r\n".encode() + body + listing + b"GET /x HTTP/1.1\r\nHost x\r\n\r\n")
        put = conn.response()
        assert put.status == 200 and put.getheader("etag")
        refused = conn.response()
        assert refused.status == 400 and b"<Code>InvalidRequest</Code>" in refused.body
        assert conn.closed_by_server()
        conn.close()
        # And behind pipelined requests (one queued behind the other): their answers come first.
        conn = Wire(gateway)
        conn.send(f"PUT {target} HTTP/1.1\r\n{head}\r\n".encode() + body[:5] + listing + b"GET /x HTTP/1.1\r\nHost x\r\n\r\n")
        assert conn.response().status == 200
        listed = conn.response()
        assert listed.status == 200 and b"<Key>declared</Key>" in listed.body
        assert conn.response().status == 400 and conn.closed_by_server()
    finally:
        conn.close()
    assert s3.get_object(Bucket=bucket, Key="declared")["Body"].read() == b"01234"


def test_write_batch_joins_a_connections_writes_but_not_across_a_file_or_a_close():
    import asyncio

    from gateway.write_batch import WriteBatch

    class _File:  # what send_file reads of an ObjectReader, here always going through writelines
        def __init__(self, data):
            self.data = data

        def read_file_span(self):
            return self.data

        def close(self):
            pass

    class _Buffered(_Transport):
        def get_write_buffer_size(self):
            return 0

    async def main():
        loop = asyncio.get_running_loop()
        batch = WriteBatch()
        a, b = _Buffered(), _Buffered()
        batch.add(loop, a, (b"1",), False)
        batch.add(loop, b, (b"x",), False)
        batch.add(loop, a, (b"2", b"3"), False)
        batch.add(loop, a, (b"head",), False, _File(b"file"), None)
        batch.add(loop, a, (b"4",), False)
        batch.add(loop, b, (b"y",), True)
        batch.add(loop, b, (b"after close",), False)
        await asyncio.sleep(0)
        assert a.written == [b"123", b"headfile", b"4"] and not a.closed
        assert b.written == [b"xy"] and b.closed  # nothing is written after a close

    asyncio.run(main())


def test_peer_routes_of_a_stand_alone_gateway_answer_at_once_and_leak_nothing(tmp_path):
    """Without credentials, GET /_cluster/v1/objects/... on a stand-alone gateway got no answer and
    its connection was never closed, not even after the client's: 19,500 such requests exhausted
    the server's descriptors and it stopped serving. Each is a prompt 404 now."""
    import os
    import time

    from gateway.testing.server import GatewayProcess

    with GatewayProcess(tmp_path / "cv-storage") as gw:
        gw.client().create_bucket(Bucket="bkt")
        fds = lambda: len(os.listdir(f"/proc/{gw.process.pid}/fd"))  # noqa: E731
        before = fds()
        for path in ("/_cluster/v1/objects/bkt/k", "/_cluster/v1/s3/bkt/k", "/_cluster/v1/ping",
                     "/_cluster/v1/buckets"):
            for method in ("GET", "HEAD"):
                for _ in range(10):
                    with socket.create_connection((gw.host, gw.port), timeout=5) as conn:
                        conn.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                        head = conn.recv(65536).split(b"\r\n", 1)[0]  # a timeout here fails the test
                    assert head.startswith(b"HTTP/1.1 4"), (method, path, head)
        deadline = time.monotonic() + 10
        while fds() > before + 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert fds() <= before + 2, (before, fds())
        assert gw.client().list_buckets()["Buckets"][0]["Name"] == "bkt"
        log = gw.log()
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.parametrize("bad", [b"5\r\nhello\r\nZZ\r\n\r\n", b"5\r\nhelloXX0\r\n\r\n", b"FFFFFFFFFFFFFFFFFFFF\r\n"])
def test_a_malformed_chunked_body_is_refused_at_once(gateway, s3, bucket, bad):
    """A chunk the parser refuses, in the body of the request being read: answered 400 InvalidRequest
    at once and the connection closed; it got no answer for 30-60 s, then a RequestTimeout."""
    import time

    target, signed = sign(gateway, "PUT", key_path(bucket, "badchunk"), unsigned_payload=True)
    signed.setdefault("Host", f"{gateway.host}:{gateway.port}")
    signed["Transfer-Encoding"] = "chunked"
    head = "\r\n".join([f"PUT {target} HTTP/1.1", *(f"{k}: {v}" for k, v in signed.items())]) + "\r\n\r\n"
    started = time.monotonic()
    with socket.create_connection((gateway.host, gateway.port), timeout=20) as conn:
        conn.sendall(head.encode() + bad)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    assert time.monotonic() - started < 10, "the refusal waited for a timeout"
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"<Code>InvalidRequest</Code>" in answer and b"chunk" in answer, answer
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="badchunk")  # nothing stored


def test_a_client_that_reads_none_of_its_answer_is_cut_and_a_slow_one_is_not(tmp_path):
    """A client that stops reading a large GET held its connection, the object's open file and the
    request's task for good (only a stalled upload was timed out). One that takes none of the answer
    for a keep-alive period is cut; one that reads slowly keeps going."""
    import os
    import time

    from gateway.testing.server import GatewayProcess

    with GatewayProcess(tmp_path / "cv-storage", env={"GATEWAY_KEEP_ALIVE_TIMEOUT": "1"}) as gw:
        s3 = gw.client()
        s3.create_bucket(Bucket="big")
        s3.put_object(Bucket="big", Key="video", Body=os.urandom(64 * 1024 * 1024))

        def open_object_files() -> int:
            found = 0
            for fd in os.listdir(f"/proc/{gw.process.pid}/fd"):
                try:
                    found += os.readlink(f"/proc/{gw.process.pid}/fd/{fd}").endswith("video%obj")
                except OSError:
                    pass
            return found

        def stalled_get(query: str = ""):
            conn = socket.socket()
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            conn.settimeout(20)
            conn.connect((gw.host, gw.port))
            conn.sendall(_request_bytes(gw, "GET", "/big/video", query=query))
            return conn

        stalled = [stalled_get(), stalled_get("response-content-type=a%2Fb")]  # the fast path and ASGI
        slow = stalled_get()
        got, deadline = 0, time.monotonic() + 5
        while time.monotonic() < deadline:  # takes 64 KiB every 0.2 s: slow, never stalled
            got += len(slow.recv(65536))
            time.sleep(0.2)
        assert got > 0
        assert open_object_files() == 1, "the stalled readers' files are still open"  # the slow one's
        for conn in stalled:  # cut: what was in flight, then the end (or a reset), far from the whole object
            received = 0
            try:
                while chunk := conn.recv(1 << 20):
                    received += len(chunk)
            except ConnectionResetError:
                pass
            assert received < 32 * 1024 * 1024, received
            conn.close()
        assert slow.recv(65536), "the slow reader was cut"
        slow.close()
        deadline = time.monotonic() + 10
        while open_object_files() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert open_object_files() == 0
        assert s3.head_object(Bucket="big", Key="video")["ContentLength"] == 64 * 1024 * 1024
