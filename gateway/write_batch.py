"""WriteBatch: socket writes of one event-loop iteration, done together (fewer wake-ups of the reader)."""

from __future__ import annotations

import errno
import logging
import os
import socket

from . import errors
from .backend import SHORT_FILE, pread_exact

log = logging.getLogger(__name__)
# What sendfile answers for a file it cannot send from (some FUSE and network filesystems).
_NO_SENDFILE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})


class WriteBatch:
    """Writes of one event-loop iteration (the front end's responses, the peer client's requests),
    done together at its end.

    Written at once, each response to a client that waits in epoll costs the kernel a wake-up of
    that client (an inter-processor interrupt, dear on a virtual machine); written together after
    the iteration's requests are all answered, the first write wakes the client and the rest find
    it running. Measured on the 4 KiB GET: 72 -> 43 µs of server CPU per request
    (docs/performance.md). Order per connection is kept as long as whatever else writes to a
    connection (streamed bodies, the ASGI path) flushes the batch first. Bounded: past ``limit``
    bytes the batch is written at once, so pipelined requests cannot pile up answers in memory
    (once the socket's buffer is full, the protocol sends further requests through ASGI, which
    waits for it to drain). 1 MiB holds one 32 KiB answer for each of 32 connections: a bound of
    256 KiB cost a 32 KiB GET ~4 µs more (49 against 45 µs per request under wrk), 64 KiB ~13.
    """

    def __init__(self, limit: int = 1024 * 1024):
        self.limit = limit
        self.items: list[tuple] = []
        self.size = 0

    def add(self, loop, transport, parts: tuple[bytes, ...], close: bool, file_reader=None,
            plain_socket: socket.socket | None = None) -> None:
        """Write ``parts`` (one response) to ``transport`` at the end of this iteration; then close it if ``close``.

        With ``file_reader`` (an ObjectReader with an open ``file``), ``parts`` is the response's head
        and the body is that reader's span, sent with ``sendfile`` when ``plain_socket`` (the
        connection's socket, when plain TCP, not TLS) allows it (send_file). The batch closes
        the reader once it is sent."""
        if not self.items:
            loop.call_soon(self.flush)
        self.items.append((transport, parts, close, file_reader, plain_socket))
        self.size += sum(map(len, parts))
        if self.size > self.limit:
            self.flush()

    def flush(self) -> None:
        items, self.items, self.size = self.items, [], 0
        if len(items) > 1 and len({item[0] for item in items}) < len(items):  # a connection written twice
            items = _joined(items)
        for transport, parts, close, file_reader, plain_socket in items:
            if file_reader is not None:
                send_file(transport, parts[0], file_reader, plain_socket)
            elif not transport.is_closing():
                transport.writelines(parts)
            if close and not transport.is_closing():
                transport.close()


def _joined(items: list[tuple]) -> list[tuple]:
    """``items`` with the parts of one connection's consecutive writes (no file to send between them)
    in one item: they go out in one ``writelines``, one send, in their order. Pipelined requests
    from a peer (cluster/peer_pipeline.py) are so answered with one send, not one per answer."""
    joined: list[tuple] = []
    open_at: dict = {}  # transport -> index in ``joined`` of its item that later writes join
    for item in items:
        transport, parts, close, file_reader, _ = item
        if file_reader is not None:
            open_at.pop(transport, None)  # what comes after the file is written after it
            joined.append(item)
            continue
        at = open_at.get(transport)
        if at is None:
            joined.append((transport, list(parts), close, None, None))
            if not close:
                open_at[transport] = len(joined) - 1
            continue
        joined[at][1].extend(parts)
        if close:
            joined[at] = (transport, joined[at][1], True, None, None)
            del open_at[transport]
    return joined


def send_file(transport, head: bytes, reader, sock: socket.socket | None) -> None:
    """Send ``head`` and then ``reader``'s file span on ``transport``; close the reader.

    On a plain TCP connection with nothing waiting in the transport's buffer (so nothing can be
    overtaken), the head goes straight to the socket with MSG_MORE (it leaves in one segment with
    the body's start) and the body with ``os.sendfile``: the kernel sends from the page cache, no
    copy through Python or into the socket (docs/performance.md, "sendfile"). What the socket does
    not take at once, and everything on TLS, goes through the transport as bytes. A file shorter
    than its header says, or a broken connection, ends the connection: its answer cannot be whole.
    """
    try:
        if transport.is_closing():
            return
        if sock is None or transport.get_write_buffer_size():
            transport.writelines((head, reader.read_file_span()))
            return
        try:
            sent = sock.send(head, socket.MSG_MORE)
        except BlockingIOError:
            sent = 0
        if sent < len(head):
            transport.writelines((head[sent:], reader.read_file_span()))
            return
        fd, source, position, remaining = sock.fileno(), reader.file.fd, reader.file_position, reader.length
        while remaining:
            try:
                count = os.sendfile(fd, source, position, remaining)
            except BlockingIOError:
                break  # the socket's buffer is full: the transport sends the rest when it drains
            except OSError as exc:
                if exc.errno not in _NO_SENDFILE:
                    raise
                break  # this file's filesystem cannot sendfile: the transport sends the rest as bytes
            if count == 0:
                raise errors.InternalError(SHORT_FILE)
            position += count
            remaining -= count
        if remaining:
            transport.write(pread_exact(source, remaining, position))
    except (errors.GatewayError, OSError) as exc:
        if not (isinstance(exc, OSError) and exc.errno in (errno.EPIPE, errno.ECONNRESET)):
            log.warning("sending an object's file failed after its response started: %s; closing the connection",
                        getattr(exc, "message", exc))
        transport.abort()
    finally:
        reader.close()
