"""A lean synchronous HTTP/1.1 client for the mount's small GETs (lookups, ranged reads, listings).

Why next to urllib3 (client.py keeps it for everything else): a lookup through
the mount is a ranged GET of an object's first 128 KiB, and urllib3 spent about
300 µs of CPU on one, most of it in http.client's header parsing (the email
package) and urllib3's bookkeeping; this client spends under 100 µs on the same
GET, which makes a small file's open+read+close through the mount about a quarter
faster (docs/fuse.md, "HTTP client"). The same split as the gateway's relay
(gateway/cluster/peer_http.py): a lean client for the hot, simple calls, the
library for the rest.

What it does, and only that: GET over plain TCP (an https endpoint uses
urllib3), keep-alive connections in a LIFO pool shared by the FUSE threads, the
response parsed by ``httptools`` (llhttp; installed with uvicorn[standard]),
the whole body read into memory. Timeouts are the socket's: connecting, and
waiting for the next bytes. A request is sent again once on a fresh connection
when the first attempt got no complete answer (a keep-alive connection the
gateway closed while idle, or a gateway restarting), as urllib3's one retry
does: a dead gateway fails a request after about twice the timeout. A body
larger than ``body_limit`` is not read: ``get`` returns None and the caller
uses urllib3, which streams.
"""

from __future__ import annotations

import socket
import threading

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

MAX_IDLE = 16  # idle keep-alive connections kept (urllib3's pool keeps as many)
RECV_SIZE = 256 * 1024  # one recv takes several pipelined 32 KiB answers (statahead.py)


class LeanResponse:
    """A complete answer: status, headers (lower-case names, the first of repeated ones) and body."""

    __slots__ = ("data", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], data: bytes):
        self.status = status
        self.headers = headers
        self.data = data


class _Answer:
    """httptools callbacks for one response (no exceptions from here: httptools would wrap them)."""

    def __init__(self, body_limit: int):
        self.body_limit = body_limit
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.size = 0
        self.complete = False
        self.too_large = False
        self.extra = False  # bytes after the answer: it stands, the connection is not reused
        self.parser: HttpResponseParser | None = None
        self.status = 0
        self.keep_alive = False

    def on_message_begin(self) -> None:
        if self.complete:
            self.extra = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.complete:
            return
        name = name.decode("latin-1").lower()
        if name not in self.headers:
            self.headers[name] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if self.complete:  # the head of bytes after the answer: not this answer's status
            return
        # Read here: once the message is complete, llhttp has reset its state for the next one.
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        length = self.headers.get("content-length", "")
        if length.isdigit() and len(length) < 20 and int(length) > self.body_limit:
            self.too_large = True

    def on_body(self, body: bytes) -> None:
        if self.complete or self.too_large:
            return
        self.size += len(body)
        if self.size > self.body_limit:  # chunked (no length given) and too long
            self.too_large = True
            self.chunks = []
            return
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class _Answers:
    """httptools callbacks for several pipelined responses, one _Answer each (for ``get_many``)."""

    def __init__(self, body_limit: int):
        self.body_limit = body_limit
        self.answers: list[_Answer] = []
        self.done = 0
        self.parser: HttpResponseParser | None = None
        self._headers: dict[str, str] = {}
        self._chunks: list[bytes] = []
        self._size = 0

    def on_message_begin(self) -> None:
        answer = _Answer(self.body_limit)
        self._headers = answer.headers
        self._chunks = answer.chunks
        self._size = 0
        self.answers.append(answer)

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.decode("latin-1").lower()
        if name not in self._headers:
            self._headers[name] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        answer = self.answers[-1]
        answer.status = self.parser.get_status_code()
        answer.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self.body_limit:  # read on (the answers behind it come next), not kept
            self.answers[-1].too_large = True
            self._chunks.clear()
            return
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        self.answers[-1].complete = True
        self.done += 1


class LeanHttp:
    """:param host, port: the gateway; :param timeout: seconds to connect and between received bytes."""

    def __init__(self, host: str, port: int, timeout: float, connect_timeout: float, body_limit: int):
        self.address = (host, port)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.body_limit = body_limit
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()
        self._local = threading.local()
        self.closed = False

    def get(self, target: str, headers: dict[str, str]) -> LeanResponse | None:
        """GET ``target`` (path and query, already encoded) with ``headers`` (including host).

        None when the body is larger than ``body_limit``. OSError (TimeoutError, ConnectionError,
        ...) when two attempts got no complete answer.
        """
        return self._twice(self._exchange, _head(target, headers).encode("latin-1"))

    def get_many(self, requests: list[tuple[str, dict[str, str]]]) -> list[LeanResponse | None]:
        """Several GETs pipelined on one connection: sent in one write, answered in order (fewer
        system calls and thread wake-ups per request than one ``get`` each, for the mount's
        statahead). An answer is None when its body is larger than ``body_limit`` or the
        connection ended before it; OSError when no answer came at all (after a second attempt on
        a fresh connection, as ``get``)."""
        data = "".join(_head(target, headers) for target, headers in requests).encode("latin-1")
        return self._twice(self._exchange_many, data, len(requests))

    @staticmethod
    def _twice(exchange, *args):
        """An exchange that got no byte of an answer is tried once more on a fresh connection."""
        try:
            return exchange(*args, fresh=False)
        except _Retry:
            pass
        try:
            return exchange(*args, fresh=True)
        except _Retry as retry:
            raise retry.error from None

    def _start(self, fresh: bool, callbacks) -> tuple[socket.socket, HttpResponseParser, memoryview]:
        """A connection (pooled unless ``fresh``), a response parser calling ``callbacks``, and this
        thread's receive buffer."""
        try:
            sock = self._checkout(fresh)
        except OSError as exc:
            raise _Retry(exc) from None
        callbacks.parser = HttpResponseParser(callbacks)
        return sock, callbacks.parser, self._buffer()

    def _exchange_many(self, data: bytes, count: int, fresh: bool) -> list[LeanResponse | None]:
        answers = _Answers(self.body_limit)
        sock, parser, buffer = self._start(fresh, answers)
        reusable = True
        try:
            sock.sendall(data)
            while answers.done < count:
                n = sock.recv_into(buffer)
                if not n:
                    raise ConnectionResetError("the gateway closed the connection")
                parser.feed_data(buffer[:n])
        except (OSError, HttpParserError, HttpParserUpgrade) as exc:
            sock.close()
            reusable = False
            if not answers.answers:
                raise _Retry(exc if isinstance(exc, OSError) else ConnectionError(str(exc))) from None
        except BaseException:
            sock.close()
            raise
        done = [a for a in answers.answers if a.complete]
        if reusable:
            if len(answers.answers) == count and all(a.keep_alive for a in done):
                self._checkin(sock)
            else:
                sock.close()
        results: list[LeanResponse | None] = [
            None if answer.too_large else LeanResponse(answer.status, answer.headers, b"".join(answer.chunks))
            for answer in done[:count]]
        return results + [None] * (count - len(results))

    def _exchange(self, request: bytes, fresh: bool) -> LeanResponse | None:
        answer = _Answer(self.body_limit)
        sock, parser, buffer = self._start(fresh, answer)
        received = False
        try:
            sock.sendall(request)
            while not answer.complete and not answer.too_large:
                n = sock.recv_into(buffer)
                if not n:
                    raise ConnectionResetError("the gateway closed the connection")
                received = True
                parser.feed_data(buffer[:n])
        except (OSError, HttpParserError, HttpParserUpgrade) as exc:
            sock.close()
            if answer.complete:  # garbage after a complete answer: the answer stands
                return LeanResponse(answer.status, answer.headers, b"".join(answer.chunks))
            if not received:
                raise _Retry(exc if isinstance(exc, OSError) else ConnectionError(str(exc))) from None
            if isinstance(exc, OSError):
                raise
            raise ConnectionError(f"malformed response from the gateway: {exc}") from None
        except BaseException:
            sock.close()
            raise
        if answer.too_large:
            sock.close()  # the rest of the body is not read: the connection is spent
            return None
        if answer.keep_alive and not answer.extra:
            self._checkin(sock)
        else:
            sock.close()
        return LeanResponse(answer.status, answer.headers, b"".join(answer.chunks))

    def _buffer(self) -> memoryview:
        """This thread's receive buffer: a new 256 KiB bytes object per recv() would be allocated
        with mmap and unmapped again (page faults, zeroing, TLB flushes on every core)."""
        buffer = getattr(self._local, "buffer", None)
        if buffer is None:
            buffer = self._local.buffer = memoryview(bytearray(RECV_SIZE))
        return buffer

    def _checkout(self, fresh: bool) -> socket.socket:
        with self._lock:
            if self._idle and not fresh:
                return self._idle.pop()
        sock = socket.create_connection(self.address, timeout=self.connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.timeout)
        return sock

    def _checkin(self, sock: socket.socket) -> None:
        with self._lock:
            if not self.closed and len(self._idle) < MAX_IDLE:
                self._idle.append(sock)
                return
        sock.close()

    def close(self) -> None:
        with self._lock:
            self.closed = True
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()


def _head(target: str, headers: dict[str, str]) -> str:
    return "".join((f"GET {target} HTTP/1.1\r\n", *(f"{k}: {v}\r\n" for k, v in headers.items()), "\r\n"))


class _Retry(Exception):
    """An attempt got no byte of an answer (``error`` says why): the request may be sent again."""

    def __init__(self, error: OSError):
        super().__init__(str(error))
        self.error = error
