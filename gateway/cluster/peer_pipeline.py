"""A pipelined connection to a peer for pass-through reads (gateway/api/pass_through.py).

The pooled connections of peer_http.py carry one request at a time: every
relayed read costs the relaying node a send and a receive of its own, and the
serving node a receive and a send, each of which on loopback also runs the
other side's TCP path. On this connection the reads of one event-loop
iteration go out in one write and their answers come back in order, often
several in one receive; the serving node answers them in one write too
(write_batch.py joins one connection's answers). Measured with the bare HTTP
relay of the benchmark: ~11 µs less per relayed read for the pair of nodes
(docs/cluster.md, "Pipelined pass-through").

The answers are framed here, from their heads (status line, Content-Length),
and passed to their sinks as they came, as _Connection.relay does. HTTP/1.1
pipelining has two costs, both kept small:

- head-of-line blocking: a read queued behind a large answer waits for it. An
  answer whose body is larger than LARGE_ANSWER, or whose client cannot take it
  as fast as it comes (its sink pauses the connection), releases the reads
  queued behind it at once, to be answered the usual way (their answers, when
  they come, are read and dropped), and the connection takes no new read until
  that answer is through.
- a failure takes every queued read with it: each goes the usual way, which
  asks afresh (a pass-through never turns a failure into a wrong answer).

Anything the framing does not expect (no Content-Length, a chunked answer, a
malformed head, bytes nobody asked for) closes the connection, the queued reads
going the usual way; the next read opens a new one.
"""

from __future__ import annotations

import asyncio
import collections
import re

MAX_QUEUED = 32  # reads in flight on the connection; beyond, a read takes a pooled connection
# An answer's body larger than this holds the reads behind it for as long as it takes to arrive:
# they are released to be answered the usual way, and the connection takes no more meanwhile.
LARGE_ANSWER = 256 * 1024
MAX_HEAD = 64 * 1024  # bytes of an answer's head (a gateway's are well under 2 KiB)
_NO_BODY_STATUSES = frozenset({204, 304})
# A status line's code and what follows it, to the status: one lookup checks and converts (int() of
# the digits and the checks around it cost three times as much, on every pipelined answer).
_STATUS_CODES = {b"%d%c" % (code, after): code for code in range(100, 600) for after in b" \r"}


def _any_case(name: bytes) -> bytes:
    """A regular expression for ``name`` in any case, spelled out (``[Cc][Oo]...``): re.IGNORECASE
    makes the search try every position of the head, this one jumps from line break to line break
    (a gateway's head: ~0.2 µs instead of ~0.4, on every pipelined answer)."""
    return b"".join(b"[%c%c]" % (c, c ^ 0x20) if chr(c).isalpha() else re.escape(bytes([c])) for c in name)


# The headers that are the connection's, not the answer's: one search for all.
HOP_BY_HOP = re.compile(rb"\r\n(?:%s):" % b"|".join(_any_case(name) for name in
                                                   (b"connection", b"keep-alive", b"transfer-encoding")))


class _Queued:
    __slots__ = ("head_only", "sink")

    def __init__(self, sink, head_only: bool):
        self.sink = sink  # None once released (its answer is read and dropped)
        self.head_only = head_only


def frame(head: bytes, head_only: bool) -> tuple[int, int, bool, bool]:
    """(status, body length, keep-alive, whether it has connection headers: HOP_BY_HOP) of an
    answer's ``head`` (through its blank line). Raise ValueError for what this connection does not
    pass on."""
    status = _STATUS_CODES.get(head[9:13])
    if status is None or head[:7] != b"HTTP/1." or head[8] != 0x20 or head[7] not in b"01":
        raise ValueError(f"malformed status line {head[:40]!r}")
    keep_alive = head[7] == 0x31  # HTTP/1.1
    lowered = None
    own_headers = HOP_BY_HOP.search(head) is not None
    if own_headers:  # a gateway sends only "connection: close", when it closes
        lowered = head.lower()
        if b"\r\ntransfer-encoding:" in lowered:
            raise ValueError("a chunked answer")
        keep_alive = keep_alive and b"\r\nconnection: close" not in lowered
    if head_only or status in _NO_BODY_STATUSES or status < 200:
        return status, 0, keep_alive, own_headers
    # A gateway writes its header names in lower case, Content-Length last (found from the end).
    at = head.rfind(b"\r\ncontent-length: ") if lowered is None else -1
    if at < 0:
        at = (lowered or head.lower()).find(b"\r\ncontent-length:")  # (the same offsets as in head)
        if at < 0:
            raise ValueError("an answer without Content-Length")
    value = head[at + 17:head.index(b"\r\n", at + 2)].strip()
    if not value.isdigit():
        raise ValueError(f"Content-Length {value[:20]!r}")
    return status, int(value), keep_alive, own_headers


class Pipeline(asyncio.Protocol):
    """The pipelined connection to one peer address. ``client``: the PeerHttp whose batch writes
    the requests and whose sweep times the answers out; ``error_class``: its PeerHttpError."""

    def __init__(self, client, key: str, error_class):
        self.client = client
        self.key = key
        self.error_class = error_class
        self.loop = client.loop
        self.transport: asyncio.Transport | None = None
        self.queue: collections.deque[_Queued] = collections.deque()
        self.partial = b""  # the start of an answer's head that has not come whole yet
        self.remaining = -1  # body bytes of the current answer still to come; -1: its head is next
        self.passing = False  # the current answer goes to its sink
        self.head_done = False  # (for the sweep's and failures' stage)
        self.paused = False
        self.large = False  # the current answer is large (LARGE_ANSWER): no reads queue behind it
        self.spent = False  # no more reads: the peer said close, or this connection failed
        self.last_data = 0.0

    # What the sink calls (as on peer_http._Connection) ------------------------------

    def taking(self) -> bool:
        return (not self.spent and not self.paused and not self.large and len(self.queue) < MAX_QUEUED
                and self.transport is not None and not self.transport.is_closing())

    def relay(self, sink, request: bytes, head_only: bool) -> None:
        if not self.queue:
            self.last_data = self.loop.time()  # the read timeout counts from the first read queued
        self.queue.append(_Queued(sink, head_only))
        self.client._write(self.transport, request)
        self.client._watch(self)

    def pause(self) -> None:
        """The current answer's client is full: stop reading, and release the reads queued behind
        it (they would wait for that client), to be answered the usual way."""
        if self.paused or self.spent:
            return
        self.paused = True
        self.transport.pause_reading()
        self._release_behind()

    def _release_behind(self) -> None:
        """The reads queued behind the current answer are answered the usual way (``released()``;
        their answers, when they come, are dropped)."""
        released = [queued for queued in list(self.queue)[1:] if queued.sink is not None]
        for queued in released:
            sink, queued.sink = queued.sink, None
            sink.released()

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            self.last_data = self.loop.time()
            self.transport.resume_reading()

    def abandon_sink(self, sink) -> None:
        """A sink's client went away: its answer is read and dropped when it comes."""
        for queued in self.queue:
            if queued.sink is sink:
                queued.sink = None
                if queued is self.queue[0] and self.paused:
                    self.resume()  # nobody is waiting for this answer to drain
                return

    # asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.last_data = self.loop.time()
        if self.partial:
            data, self.partial = self.partial + data, b""
        size = len(data)
        at = 0
        queue = self.queue
        view = memoryview(data)  # bodies are passed as views of ``data``: several answers come in one piece
        while at < size:
            if not queue:
                return self.fail("sent bytes nobody asked for", "head")
            queued = queue[0]
            if self.remaining < 0:  # an answer's head
                end = data.find(b"\r\n\r\n", at)
                if end < 0:
                    if size - at > MAX_HEAD:
                        return self.fail("an answer's head is too large", "head")
                    self.partial = data[at:]
                    return
                end += 4
                head = data[at:end]  # (one copy of the head, for the framing and the sink)
                try:
                    status, length, keep_alive, own_headers = frame(head, queued.head_only)
                except ValueError as exc:
                    return self.fail(f"malformed response: {exc}", "head")
                if not keep_alive:
                    self.spent = True  # the answers asked for after this one will not come
                stop = min(end + length, size)
                self.remaining = length - (stop - end)
                self.head_done = True
                if length > LARGE_ANSWER:
                    self.large = True
                    self._release_behind()
                sink = queued.sink
                self.passing = sink is not None and sink.head(status, head, view[end:stop], own_headers)
                at = stop
            else:  # more of its body
                stop = min(at + self.remaining, size)
                self.remaining -= stop - at
                if self.passing and queued.sink is not None:
                    queued.sink.body(data if at == 0 and stop == size else view[at:stop])
                at = stop
            if self.queue is not queue:
                return  # failed from within a sink's callback: every read was told, nothing more is read
            if self.remaining == 0:
                self._complete()
                if self.spent:
                    return self.fail("the peer closes the connection after an answer", "request",
                                     disconnected=True)

    def _complete(self) -> None:
        queued = self.queue.popleft()
        self.remaining = -1
        self.head_done = False
        self.large = False
        passing, self.passing = self.passing, False
        if self.paused:  # (the answer was whole before its client drained: the next ones may come)
            self.paused = False
            self.transport.resume_reading()
        sink = queued.sink
        if sink is not None:
            sink.end() if passing else sink.declined()

    def eof_received(self):
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(f"closed the connection{f': {exc}' if exc else ''}", None, disconnected=True)

    # Failure -----------------------------------------------------------------------

    def fail(self, reason: str, stage: str | None, *, timed_out: bool = False, disconnected: bool = False) -> None:
        """The connection is done: every read still queued gets ``failed`` (stage ``stage`` for the
        current one, None: as far as its answer came; "request" for those behind it)."""
        self.spent = True
        self.client._forget_pipeline(self)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()
        queue, self.queue = self.queue, collections.deque()
        first = True
        for queued in queue:
            sink = queued.sink
            if sink is not None:
                if first:
                    current = stage or ("body" if self.head_done else "head" if self.partial else "request")
                    error = self.error_class(reason, current, timed_out=timed_out, disconnected=disconnected)
                else:
                    error = self.error_class(reason, "request", timed_out=timed_out, disconnected=True)
                sink.failed(error)
            first = False

    def timed_out(self, now: float) -> bool:
        """Reads wait and no data came for the timeout (not while paused: then the connection waits
        for its current answer's client, not for the peer)."""
        return bool(self.queue) and not self.paused and now - self.last_data >= self.client.timeout

    def swept(self, now: float) -> bool:
        """For PeerHttp._sweep (as _Connection.swept): False once no read waits; timed out, it fails."""
        if not self.queue:
            return False
        if self.timed_out(now):
            self.fail("timed out", None, timed_out=True)
        return True
