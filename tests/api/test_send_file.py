"""write_batch.send_file: a response head, then an object's open file, on a real TCP connection.

The front end's sendfile path (docs/performance.md, "sendfile") must deliver exactly head + span
in every case: the plain case, a socket buffer too small for the span, data already waiting in
the transport, a filesystem that cannot sendfile, and a file shorter than its header says (then
the connection ends: a short answer must never look whole).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket

import pytest

from gateway import write_batch
from gateway.backend import ObjectInfo, ObjectMeta, ObjectReader, OpenFile

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n"


@pytest.fixture(params=[pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"), "asyncio"])
def anyio_backend(request):
    """uvloop, as `gateway serve` runs, and asyncio's own loop."""
    return request.param


def _reader(path, data_offset: int, start: int, stop: int) -> tuple[ObjectReader, OpenFile]:
    file = OpenFile(os.open(path, os.O_RDONLY), data_offset)
    info = ObjectInfo(key="k", size=os.path.getsize(path) - data_offset, etag="e", last_modified=0.0,
                      meta=ObjectMeta())
    reader = ObjectReader(info, start, stop, _close=file.release, file=file, file_position=data_offset + start)
    return reader, file


async def _exchange(send, *, sndbuf: int | None = None) -> bytes:
    """Run ``send(transport, sock)`` on the server side of a loopback connection; what the client got."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future = loop.create_future()

    class Server(asyncio.Protocol):
        def connection_made(self, transport):
            accepted.set_result(transport)

    server = await loop.create_server(Server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    transport = await asyncio.wait_for(accepted, 10)
    raw = transport.get_extra_info("socket")
    if sndbuf:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock = socket.socket(raw.family, socket.SOCK_STREAM, 0, os.dup(raw.fileno()))
    try:
        send(transport, sock)
        sock.close()  # the duplicate: the connection ends when the transport closes its own
        transport.close()  # after what it still holds is written
        received = await asyncio.wait_for(reader.read(), 20)
    finally:
        sock.close()
        writer.close()
        server.close()
        await server.wait_closed()
    return received


@pytest.fixture
def object_file(tmp_path):
    body = os.urandom(300_000)
    path = tmp_path / "object"
    path.write_bytes(b"H" * 100 + body)  # a header before the bytes, as the local backend's files have
    return path, body


@pytest.mark.anyio
@pytest.mark.parametrize("span", [(0, 300_000), (1000, 41_000), (299_999, 300_000)])
@pytest.mark.parametrize("sndbuf", [None, 4096], ids=["default-buffer", "small-buffer"])
async def test_head_and_span_arrive_whole(object_file, span, sndbuf):
    path, body = object_file
    reader, file = _reader(path, 100, *span)
    head = HEAD % (span[1] - span[0])
    got = await _exchange(lambda transport, sock: write_batch.send_file(transport, head, reader, sock),
                          sndbuf=sndbuf)
    assert got == head + body[span[0]:span[1]]
    assert file.refs == 0  # the reader was closed: the file with it


class _QueuedTransport:
    """A transport that still holds bytes of an earlier answer: nothing may go to the socket directly."""

    def __init__(self):
        self.written = []

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 10

    def writelines(self, parts) -> None:
        self.written.extend(parts)


class _SocketThatMustNotBeUsed:
    def send(self, *args):
        raise AssertionError("sent to the socket past the transport's queued bytes")

    def fileno(self):
        raise AssertionError("sendfile past the transport's queued bytes")


def test_data_waiting_in_the_transport_is_not_overtaken(object_file):
    path, body = object_file
    reader, file = _reader(path, 100, 0, 50_000)
    transport = _QueuedTransport()
    write_batch.send_file(transport, b"head;", reader, _SocketThatMustNotBeUsed())
    assert transport.written == [b"head;", body[:50_000]] and file.refs == 0


@pytest.mark.anyio
@pytest.mark.parametrize("code", [errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP])
async def test_a_filesystem_without_sendfile_gets_the_bytes_through_the_transport(object_file, monkeypatch, code):
    # No filesystem here refuses sendfile (some FUSE and network ones do): the refusal is simulated.
    path, body = object_file

    def refuse(*args):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(write_batch.os, "sendfile", refuse)
    reader, _ = _reader(path, 100, 0, 300_000)
    got = await _exchange(lambda transport, sock: write_batch.send_file(transport, b"head;", reader, sock))
    assert got == b"head;" + body


@pytest.mark.anyio
async def test_a_file_shorter_than_its_header_says_ends_the_connection(object_file):
    path, body = object_file
    reader, file = _reader(path, 100, 0, 300_000)
    os.truncate(path, 100 + 200_000)  # damaged after the header was read
    got = await _exchange(lambda transport, sock: write_batch.send_file(transport, HEAD % 300_000, reader, sock))
    assert len(got) < len(HEAD % 300_000) + 300_000  # cut short: the client sees the answer is not whole
    assert file.refs == 0


@pytest.mark.anyio
async def test_without_a_plain_socket_the_bytes_go_through_the_transport(object_file):
    # TLS connections (and transports without a socket) get the span read into bytes.
    path, body = object_file
    reader, _ = _reader(path, 100, 5, 20_005)
    got = await _exchange(lambda transport, sock: write_batch.send_file(transport, b"head;", reader, None))
    assert got == b"head;" + body[5:20_005]
