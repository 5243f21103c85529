"""A lean HTTP/1.1 client for the relay's hot calls: object GET and HEAD on a peer's /_cluster/v1 route.

Why a second client next to aiohttp (gateway/cluster/relay.py keeps aiohttp
for everything else): a relayed 32 KiB GET spent about a quarter of the
relaying node's CPU in aiohttp's request machinery (docs/cluster.md,
"Benchmark"), and aiohttp needs a running asyncio task (its timeouts use
``asyncio.timeout``), so a relayed read could not stay on the front end's eager
fast path (gateway/eager.py). This client does only what those two calls need:

- per peer address a small pool of persistent keep-alive connections
  (``loop.create_connection`` with an asyncio Protocol; plain TCP or TLS with
  the PeerClient's ssl context);
- the request formatted once into one ``bytes``, written at the end of the event-loop
  iteration together with that iteration's other peer requests (PeerHttp._write);
- the response parsed by ``httptools.HttpResponseParser`` (llhttp, already
  installed with uvicorn[standard]) into status, headers (lower-case names,
  latin-1) and the whole body;
- timeouts without a task: the connect is a task cancelled by a
  ``loop.call_later`` timer, and the read timeout (no data for ``timeout``
  seconds) is a ``call_later`` timer that fails the response future. Nothing
  on the way calls ``asyncio.timeout``, ``asyncio.wait_for`` or
  ``asyncio.current_task``: a request started outside any task runs until it
  waits on the response (or connect) future, and the task that takes over from
  there finishes it.

Bodies larger than ``body_limit`` (relay.SMALL_BODY) are not read: the answer
comes back with ``body=None`` as soon as the headers say so, the connection is
closed, and the caller redoes the request with aiohttp, which streams with
back-pressure. Such objects cost a transfer of more than 1 MiB, against which
a second round trip on loopback/LAN is noise, and it keeps this client free of
streaming (the eager fast path only matters for small objects anyway).

A connection goes back to the pool only after its response was read
completely and the peer did not ask to close it; a parse error, a timeout, a
response cut short, unexpected bytes or an abandoned request close it.
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from ..write_batch import WriteBatch
from .peer_pipeline import Pipeline
from .tally import Tally

MAX_IDLE = 32  # idle keep-alive connections kept per peer address
MAX_ACTIVE = 64  # requests in flight per peer address on this client (beyond: the caller falls back to aiohttp)


class PeerHttpError(Exception):
    """A request that got no complete answer.

    :param stage: "connect" (no connection), "request" (connected, not one byte of an answer:
        the peer closed or reset a pooled connection, or stays silent), "head" (the status line
        or headers are incomplete or malformed) or "body" (headers read, body cut short).
    :param timed_out: no data for the timeout (or no connection within it).
    :param disconnected: the peer closed or reset the connection.
    """

    def __init__(self, reason: str, stage: str, *, timed_out: bool = False, disconnected: bool = False,
                 status: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.stage = stage
        self.timed_out = timed_out
        self.disconnected = disconnected
        self.status = status  # known when stage == "body"


class Response:
    """A complete answer: ``body`` is None when it is larger than the client's ``body_limit`` (not read)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes | None):
        self.status = status
        self.headers = headers
        self.body = body


class _Target:
    __slots__ = ("host", "host_header", "port", "prefix", "server_hostname", "ssl")

    def __init__(self, address: str, ssl_context: ssl.SSLContext | None):
        parts = urlsplit(address)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) peer address: {address!r}")
        secure = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if secure else 80)
        if secure:
            self.ssl = ssl_context if ssl_context is not None else ssl.create_default_context()
            self.server_hostname = self.host
        else:
            self.ssl = None
            self.server_hostname = None
        self.host_header = parts.netloc
        self.prefix = parts.path.rstrip("/")

    def connect(self, loop: asyncio.AbstractEventLoop, protocol_factory):
        """The coroutine that opens a connection to this peer (plain TCP or TLS)."""
        return loop.create_connection(protocol_factory, self.host, self.port, ssl=self.ssl,
                                      server_hostname=self.server_hostname)


class _Framing:
    """The parser callbacks of an answer for a sink: where its head and its message end, no more.
    Without on_header and on_body, httptools makes no object per header or per piece of body."""

    __slots__ = ("connection",)

    def __init__(self, connection: _Connection):
        self.connection = connection

    def on_message_begin(self) -> None:
        self.connection.on_message_begin()

    def on_headers_complete(self) -> None:
        self.connection._head_complete()

    def on_message_complete(self) -> None:
        self.connection.complete = True


class _Connection(asyncio.Protocol):
    """One keep-alive connection to a peer; at most one request at a time."""

    def __init__(self, client: PeerHttp, key: str):
        self.client = client
        self.key = key
        self.loop = client.loop
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future | None = None  # the current request's answer, None when idle
        self.sink = None  # instead of a waiter: who takes the answer as it comes (pass_through)
        self.passing = False  # the sink took the answer's head: its body goes to the sink
        self.paused = False  # reading stopped by the sink (its client reads slower than the peer sends)
        self.timer: asyncio.TimerHandle | None = None
        self.parser: HttpResponseParser | None = None
        self.reusable = True
        self.lost = False
        self.last_data = 0.0
        self.head_timeout = client.timeout  # the current request's wait for its answer's head (send)
        self._reset(False)

    def _reset(self, head_only: bool) -> None:
        self.head_only = head_only
        self.received = False  # any byte of the current answer
        self.headers_done = False
        self.complete = False
        self.status = 0
        self.headers: dict[str, str] = {}
        self.passing = False
        self.head_bytes: list[bytes] | None = []  # for a sink: the answer's bytes until its head is complete
        self.chunks: list[bytes] = []
        self.size = 0
        self.too_large = False
        self.keep_alive = True

    # asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.sink is not None:
            self._relay_data(data)
            return
        if self.waiter is None:  # nothing was asked: a peer that talks out of turn is not reused
            self.reusable = False
            self.close()
            return
        self.last_data = self.loop.time()
        self.received = True
        try:
            self.parser.feed_data(data)
        except (HttpParserError, HttpParserUpgrade) as exc:  # an upgrade answer is no answer to a GET
            if not self.complete:
                self._fail(f"malformed response: {exc}", "body" if self.headers_done else "head")
                return
            self.reusable = False  # bytes after a complete answer: the answer stands, the connection goes
        if self.complete:
            self._finish()

    def eof_received(self):
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.reusable = False
        self.client._forget(self)
        if self.waiter is not None or self.sink is not None:
            if self.complete:
                self._finish()
                return
            stage = "body" if self.headers_done else ("head" if self.received else "request")
            self._fail(f"closed the connection{f': {exc}' if exc else ''}", stage, disconnected=True)

    # httptools callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            raise ValueError("a second answer to one request")

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.decode("latin-1").lower()
        if name not in self.headers:  # the first of repeated headers, as aiohttp's headers.get()
            self.headers[name] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._head_complete()
        if self.complete:
            return
        length = self.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.client.body_limit:
            self._too_large()

    def on_body(self, body: bytes) -> None:
        if self.complete:
            if self.head_only:
                self.reusable = False  # a body after a HEAD answer: the peer and we disagree on framing
            return
        self.size += len(body)
        if self.size > self.client.body_limit:  # chunked (no length given) and too long
            self._too_large()
            return
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.complete = True

    # Requests ------------------------------------------------------------------------

    def send(self, request: bytes, head_only: bool, head_timeout: float | None = None,
             future: bool = True) -> asyncio.Future | None:
        """Write ``request``; return the future of its Response (PeerHttpError on failure).

        ``head_timeout``: seconds to wait for the answer's head (then the client's timeout between
        reads of the body), for a peer not expected to answer (PeerHttp.request)."""
        self._reset(head_only)
        if future:
            self.sink = None
            self.parser = HttpResponseParser(self)
            self.waiter = waiter = self.loop.create_future()
        else:
            self.parser = HttpResponseParser(_Framing(self))
            self.waiter = waiter = None
        self.last_data = self.loop.time()
        self.head_timeout = self.client.timeout if head_timeout is None else min(head_timeout, self.client.timeout)
        if future:
            self.timer = self.loop.call_later(self.head_timeout, self._check_idle)
        else:
            self.client._watch(self)  # the sweep's timeout (PeerHttp._sweep), not a timer of its own
        self.client._write(self.transport, request)
        return waiter

    def relay(self, sink, request: bytes, head_only: bool, head_timeout: float | None = None) -> None:
        """Write ``request``; hand its answer to ``sink`` as it comes, with no future and no task
        (gateway/api/pass_through.py): ``sink.head(status, head, body)`` once the head is read, with
        the head's bytes and the part of the body that came with it; True: the sink takes
        the answer, and each further piece goes to ``sink.body(chunk)``; False: the rest is read
        and dropped. Then ``sink.end()`` or ``sink.declined()`` once it is
        complete (the connection is back in the pool by then), or ``sink.failed(PeerHttpError)``.
        The sink may call pause() and resume(); abandon() if its own client went away."""
        self.sink = sink
        self.send(request, head_only, head_timeout, future=False)

    def _relay_data(self, data: bytes) -> None:
        """A piece of the answer for the sink: parsed for its framing only (_Framing), passed on as
        it came. The head and the whole body usually come in one piece, which the sink then writes
        to its client as it is: no header or body is copied out of it on the way."""
        self.last_data = self.loop.time()
        self.received = True
        head_bytes = self.head_bytes
        if head_bytes is not None:
            head_bytes.append(data)
        try:
            self.parser.feed_data(data)
        except (HttpParserError, HttpParserUpgrade) as exc:
            # Malformed, or bytes after the complete answer (which must not reach the client): failed.
            self._fail(f"malformed response: {exc}", "body" if self.headers_done else "head")
            return
        sink = self.sink
        if head_bytes is not None:
            if not self.headers_done:
                return
            self.head_bytes = None
            received = data if len(head_bytes) == 1 else b"".join(head_bytes)
            end = received.find(b"\r\n\r\n") + 4  # (the parser found the head complete: it is there)
            body = memoryview(received)[end:] if len(received) > end else b""
            self.passing = sink.head(self.status, received[:end], body)
        elif self.passing:
            sink.body(data)
        if self.complete:
            self._finish()

    def pause(self) -> None:
        """Stop reading the answer until resume(): the sink's client has not taken what it was sent.
        Not once the answer is complete: the connection goes back to the pool reading."""
        if not self.paused and not self.complete:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            self.last_data = self.loop.time()  # the read timeout counts from here, not from the pause
            self.transport.resume_reading()

    def _head_complete(self) -> None:
        """The head is read (on_headers_complete of either parser): its status and keep-alive."""
        parser = self.parser
        self.headers_done = True
        self.status = parser.get_status_code()
        self.keep_alive = parser.should_keep_alive()
        if self.head_only:
            # llhttp cannot be told that a HEAD answer has no body (httptools never returns "skip
            # body"): the answer is complete here, and every request gets a fresh parser.
            self.complete = True

    def _too_large(self) -> None:
        self.too_large = True
        self.complete = True
        self.reusable = False  # the rest of the body is not read: the connection is spent
        self.chunks = []

    def _check_idle(self) -> None:
        """The read timeout: fail the request when no data came for ``timeout`` seconds."""
        self.timer = None
        if self.waiter is None:
            return
        idle = self.loop.time() - self.last_data
        remaining = (self.client.timeout if self.headers_done else self.head_timeout) - idle
        if remaining > 0.001:  # data came meanwhile: wait for the rest of the timeout from then
            self.timer = self.loop.call_later(remaining, self._check_idle)
            return
        stage = "body" if self.headers_done else ("head" if self.received else "request")
        self._fail("timed out", stage, timed_out=True)

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _finish(self) -> None:
        self._stop_timer()
        sink = self.sink
        if sink is not None:
            self.sink = None
            self.parser = None
            self.client._relaying.discard(self)
            self._put_back()
            sink.end() if self.passing else sink.declined()
            return
        waiter, self.waiter = self.waiter, None
        if self.too_large:
            body = None
        elif len(self.chunks) == 1:
            body = self.chunks[0]
        else:
            body = b"".join(self.chunks)
        response = Response(self.status, self.headers, body)
        self.parser = None
        self.chunks = []
        self._put_back()
        if not waiter.done():  # not abandoned by the caller meanwhile
            waiter.set_result(response)

    def swept(self, now: float) -> bool:
        """For PeerHttp._sweep: False once no answer goes to a sink; an answer that had no data for
        the timeout fails (not one paused for its sink's client, which is not waiting for the peer)."""
        if self.sink is None:
            return False
        if not self.paused and now - self.last_data >= self.client.timeout:
            stage = "body" if self.headers_done else ("head" if self.received else "request")
            self._fail("timed out", stage, timed_out=True)
        return True

    def _put_back(self) -> None:
        """The answer is complete: back to the pool, or closed when it cannot serve another."""
        if self.reusable and self.keep_alive and not self.lost and not self.transport.is_closing():
            self.client._release(self)
        else:
            self.close()

    def _fail(self, reason: str, stage: str, *, timed_out: bool = False, disconnected: bool = False) -> None:
        self._stop_timer()
        waiter, self.waiter = self.waiter, None
        sink, self.sink = self.sink, None
        self.reusable = False
        self.parser = None
        self.client._relaying.discard(self)
        self.close()
        error = PeerHttpError(reason, stage, timed_out=timed_out, disconnected=disconnected,
                              status=self.status if self.headers_done else None)
        if sink is not None:
            sink.failed(error)
        elif waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def abandon(self, waiter: asyncio.Future) -> None:
        """The caller of the request answered by ``waiter`` stopped waiting (cancelled): its answer may
        still arrive, so the connection goes. Unless that answer was complete already: then the
        connection is back in the pool, maybe serving another request, and stays."""
        if self.waiter is not waiter:
            return
        self._stop_timer()
        self.waiter = None
        self.reusable = False
        self.close()

    def abandon_sink(self, sink) -> None:
        """The sink's client went away: the rest of the answer is not wanted, and the connection goes
        (unless the answer was complete already and the connection serves another request now)."""
        if self.sink is not sink:
            return
        self.client._relaying.discard(self)
        self.sink = None
        self.reusable = False
        self.close()

    def close(self) -> None:
        self.client._forget(self)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()  # nothing of ours is left to send; do not wait for a silent peer


class PeerHttp:
    """Pooled keep-alive connections to the peers, for GET and HEAD of objects.

    :param timeout: seconds to connect, and seconds without data before an answer fails.
    :param ssl_context: for https peer addresses (None: the system's default context).
    :param body_limit: larger bodies are not read (Response.body is None).
    """

    def __init__(self, timeout: float, ssl_context: ssl.SSLContext | None = None, body_limit: int = 1024 * 1024,
                 max_idle: int = MAX_IDLE, max_active: int = MAX_ACTIVE):
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.body_limit = body_limit
        self.max_idle = max_idle
        self.max_active = max_active
        self.loop: asyncio.AbstractEventLoop | None = None
        self._targets: dict[str, _Target] = {}
        self._idle: dict[str, list[_Connection]] = {}
        self._open: dict[str, set[_Connection]] = {}
        self._batch = WriteBatch()  # requests to write at the end of the iteration
        self._relaying: set[_Connection | Pipeline] = set()  # connections whose answer goes to a sink (relay)
        # Per peer address, the connection that pass-through reads are pipelined on (peer_pipeline.py).
        self._pipelines: dict[str, Pipeline] = {}
        self._opening: dict[str, asyncio.Task] = {}  # pipelines being connected
        self._pipeline_retry: dict[str, float] = {}  # address -> loop time before which none is opened again
        self._sweeper: asyncio.TimerHandle | None = None
        # connected, reused, retried, requests, too_large, busy (fell back: too many in flight), failed,
        # relayed (answers handed to a sink as they came: gateway/api/pass_through.py)
        self.stats: Tally[str] = Tally()

    def idle_count(self, address: str | None = None) -> int:
        if address is not None:
            return len(self._idle.get(address, ()))
        return sum(map(len, self._idle.values()))

    def open_count(self) -> int:
        return sum(map(len, self._open.values()))

    async def request(self, address: str, method: str, target: str, headers: dict[str, str],
                      head_timeout: float | None = None) -> Response | None:
        """Send ``method target`` (GET or HEAD, no body) with ``headers`` to the peer at ``address``.

        Return the Response, or None when this client does not take the request (too many in flight to
        that peer): the caller uses its general client. A pooled connection that the peer closed
        meanwhile (not one byte of an answer) is retried once on a new connection. Raise PeerHttpError.
        ``head_timeout``: a shorter wait for the connection and the answer's head (a peer that failed
        lately, see PeerClient); the body's reads keep the client's timeout.
        """
        loop = asyncio.get_running_loop()
        if loop is not self.loop:  # first use, or used again under a new event loop: the old connections are unusable
            self._idle.clear()
            self._open.clear()
            self._batch = WriteBatch()
            self._relaying.clear()
            self._pipelines.clear()
            self._opening.clear()
            self._sweeper = None
            self.loop = loop
        peer = self._targets.get(address)
        if peer is None:
            try:
                peer = self._targets[address] = _Target(address, self.ssl_context)
            except ValueError as exc:
                raise PeerHttpError(str(exc), "connect") from None
        if len(self._open.get(address, ())) - len(self._idle.get(address, ())) >= self.max_active:
            self.stats["busy"] += 1
            return None
        request = self._format(peer, method, target, headers)
        head_only = method == "HEAD"
        self.stats["requests"] += 1
        connection = self._take(address)
        if connection is not None:
            self.stats["reused"] += 1
            try:
                return await self._exchange(connection, request, head_only, head_timeout)
            except PeerHttpError as exc:
                if exc.stage != "request" or not exc.disconnected:
                    raise
                self.stats["retried"] += 1  # the peer closed the idle connection as we sent: once more, afresh
        connection = await self._connect(address, peer, head_timeout)
        return await self._exchange(connection, request, head_only, head_timeout)

    def relay(self, address: str, method: str, target: str, header_lines: str, sink,
              head_timeout: float | None = None) -> _Connection | None:
        """Send ``method target`` with ``header_lines`` (each ending in CRLF, checked by the caller)
        on an idle pooled connection and hand the answer to ``sink``
        (_Connection.relay); return that connection. None when no connection is idle (or this
        client has not run under this loop yet): nothing was sent, the caller asks another way
        (whose request then opens the connection that later calls find idle).

        The read goes on the peer's pipelined connection when it takes one (peer_pipeline.py; opened
        at the first read that finds none), else on an idle pooled connection.

        The caller runs on the event loop (the front end's callback): no await, no task."""
        if self.loop is None or self.loop is not asyncio.get_running_loop():
            return None
        pipeline = self._pipelines.get(address)
        if pipeline is None or not pipeline.taking():
            connection = self._take(address)
            if pipeline is None:
                self._open_pipeline(address)
            if connection is None:
                return None
        else:
            connection = pipeline
        peer = self._targets[address]
        request = f"{method} {peer.prefix}{target} HTTP/1.1\r\nhost: {peer.host_header}\r\n{header_lines}\r\n"
        request = request.encode("latin-1")
        stats = self.stats
        stats["requests"] += 1
        stats["relayed"] += 1
        if connection is pipeline:
            stats["pipelined"] += 1
            pipeline.relay(sink, request, method == "HEAD")
        else:
            stats["reused"] += 1
            connection.relay(sink, request, method == "HEAD", head_timeout)
        return connection

    def _open_pipeline(self, address: str) -> None:
        """Connect the pipelined connection to ``address`` in the background (a failed connect is not
        tried again for a second: reads take pooled connections meanwhile)."""
        peer = self._targets.get(address)
        if peer is None or address in self._opening or self.loop.time() < self._pipeline_retry.get(address, 0.0):
            return
        self._opening[address] = self.loop.create_task(self._connect_pipeline(address, peer))

    async def _connect_pipeline(self, address: str, peer: _Target) -> None:
        loop = self.loop
        try:
            _, pipeline = await asyncio.wait_for(peer.connect(loop, lambda: Pipeline(self, address, PeerHttpError)),
                                                 self.timeout)
        except (OSError, ValueError, asyncio.TimeoutError):
            self._pipeline_retry[address] = loop.time() + 1.0
            return
        finally:
            if self._opening.get(address) is asyncio.current_task():
                del self._opening[address]
        if self.loop is not loop or pipeline.spent:
            pipeline.transport.abort()
            return
        self.stats["connected"] += 1
        self._pipelines[address] = pipeline

    def _forget_pipeline(self, pipeline: Pipeline) -> None:
        if self._pipelines.get(pipeline.key) is pipeline:
            del self._pipelines[pipeline.key]
        self._relaying.discard(pipeline)

    @staticmethod
    def _format(peer: _Target, method: str, target: str, headers: dict[str, str]) -> bytes:
        lines = [f"{method} {peer.prefix}{target} HTTP/1.1\r\nhost: {peer.host_header}\r\n"]
        for name, value in headers.items():
            if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
                raise ValueError(f"line break in the peer request header {name!r}")
            lines.append(f"{name}: {value}\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1")

    async def _exchange(self, connection: _Connection, request: bytes, head_only: bool,
                        head_timeout: float | None = None) -> Response:
        waiter = connection.send(request, head_only, head_timeout)
        try:
            response = await waiter
        except PeerHttpError:
            self.stats["failed"] += 1
            raise
        except BaseException:  # cancelled, or the coroutine closed: the answer may still come
            connection.abandon(waiter)
            raise
        if response.body is None:
            self.stats["too_large"] += 1
        return response

    def _take(self, address: str) -> _Connection | None:
        idle = self._idle.get(address)
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to have been closed by the peer
            if not connection.lost and not connection.transport.is_closing():
                return connection
        return None

    async def _connect(self, address: str, peer: _Target, head_timeout: float | None = None) -> _Connection:
        loop = self.loop
        # A task, so that a timer can cancel it (no asyncio.timeout: it needs a current task).
        connecting = loop.create_task(peer.connect(loop, lambda: _Connection(self, address)))
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            connecting.cancel()

        timer = loop.call_later(self.timeout if head_timeout is None else min(head_timeout, self.timeout), expire)
        try:
            _, connection = await connecting
        except asyncio.CancelledError:
            if expired:
                raise PeerHttpError("timed out", "connect", timed_out=True) from None
            raise
        except (OSError, ValueError) as exc:  # refused, unreachable, TLS failure (ssl.SSLError is an OSError)
            raise PeerHttpError(str(exc) or type(exc).__name__, "connect") from None
        except BaseException:
            # Our caller was cancelled (or closed) while connecting: a connection made anyway is not used.
            if connecting.done() and not connecting.cancelled() and connecting.exception() is None:
                connecting.result()[0].abort()
            else:
                connecting.cancel()
            raise
        finally:
            timer.cancel()
        self.stats["connected"] += 1
        self._open.setdefault(address, set()).add(connection)
        if connection.lost:  # closed before we got here
            raise PeerHttpError("closed the connection", "request", disconnected=True)
        return connection

    def _write(self, transport: asyncio.Transport, request: bytes) -> None:
        """Write ``request`` at the end of this event-loop iteration, with the others of the iteration.

        Written at once, each request to a peer that waits in epoll costs the kernel a wake-up of
        that peer (and on a shared core a switch to it and back); written together, the first write
        wakes it and the rest find it running (gateway/write_batch.py; the front end batches its
        responses the same way).
        """
        self._batch.add(self.loop, transport, (request,), False)

    def _watch(self, connection: _Connection | Pipeline) -> None:
        self._relaying.add(connection)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.timeout / 4, self._sweep)

    def _sweep(self) -> None:
        """The read timeout of the relayed answers (_Connection.relay): one timer for all of them,
        every quarter of the timeout, instead of one per request (a timer set and cancelled costs
        ~2 µs under uvloop, a tenth of what the relaying node does per request). An answer with no
        data for the timeout fails after 1 to 1.25 times it; one paused for its sink's client is
        not waiting for the peer."""
        self._sweeper = None
        now = self.loop.time()
        for connection in list(self._relaying):
            if not connection.swept(now):
                self._relaying.discard(connection)
        if self._relaying:
            self._sweeper = self.loop.call_later(self.timeout / 4, self._sweep)

    def _release(self, connection: _Connection) -> None:
        idle = self._idle.setdefault(connection.key, [])
        if len(idle) >= self.max_idle:
            connection.close()
            return
        idle.append(connection)

    def _forget(self, connection: _Connection) -> None:
        idle = self._idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)
        open_ = self._open.get(connection.key)
        if open_ is not None:
            open_.discard(connection)

    def close(self) -> None:
        """Close every connection (idle or busy: a busy request fails with PeerHttpError)."""
        connections = [c for group in self._open.values() for c in group]
        self._idle.clear()
        for task in self._opening.values():
            task.cancel()
        for pipeline in list(self._pipelines.values()):
            pipeline.fail("client closed", "request")
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for connection in connections:
            if connection.waiter is not None or connection.sink is not None:
                connection._fail("client closed", "request")
            else:
                connection.close()
        self._open.clear()
