"""The HTTP front end: uvicorn's httptools protocol, with plain object reads answered below ASGI.

Under uvicorn every request costs a scope, a RequestResponseCycle, a task, two
ASGI messages with per-header regular expressions and two socket writes; for a
4 KiB GET that is more CPU than everything the gateway itself does
(docs/performance.md). A plain object read (a GET or HEAD of an object, no body,
no sub-resource; S3App.is_plain_read) is answered here instead: the request's
coroutine runs at once in this callback (gateway/eager.py), and the whole
response goes out in one write. The answer is exactly the one the ASGI path gives
(S3App.answer_read serves both), and anything else (other requests, pipelined
requests behind a pending one, a connection whose writes are paused, upgrades)
goes to uvicorn's ASGI path untouched.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from urllib.parse import unquote

from httptools import parse_url
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from .. import errors
from ..backend import ObjectReader
from ..cluster.forward import Forward
from ..eager import NeedsTask, Suspended, start_eagerly, stray_cancellation
from ..write_batch import WriteBatch
from .pass_through import PassThrough
from .s3.xml import error_document

log = logging.getLogger("gateway.http")

# The largest request head (request line and headers) read. S3 allows 8 KiB of headers; this leaves
# room for a presigned URL of a 1024-byte key percent-encoded (3 KiB), 2 KiB of metadata and more.
MAX_HEAD_BYTES = 64 * 1024


class _NoEvent:
    @staticmethod
    def set() -> None:
        pass


class _FastCycle:
    """Stands in for uvicorn's RequestResponseCycle as ``protocol.cycle`` while a fast read is
    answered: the protocol's callbacks (more data, connection lost, shutdown) look at these."""

    __slots__ = ("keep_alive", "response_complete", "disconnected", "more_body", "body")
    message_event = _NoEvent

    def __init__(self, keep_alive: bool):
        self.keep_alive = keep_alive
        self.response_complete = False
        self.disconnected = False
        self.more_body = True
        self.body = b""


class GatewayHttpProtocol(HttpToolsProtocol):
    """One connection. ``gateway`` (the GatewayApp) is set by ``protocol_for``."""

    gateway = None
    writes: WriteBatch  # one per server (protocol_for): all its connections' fast-path answers
    _idle_timer = None
    _messages = 0  # requests begun on this connection (the idle check compares it)
    _messages_seen = 0
    _close_when_answered = False  # the client has closed its side: close ours after the last answer
    _head_open = False  # a request head (request line and headers) has begun and is not complete
    _refusal: bytes | None = None  # the error for a request refused behind ones not yet answered
    _head_bytes = 0  # bytes of data_received chunks that were wholly inside the open head
    _body_chunks = 0  # request body chunks received on this connection (the idle check compares it)
    _body_chunks_seen = 0
    _acked_seen = -1  # bytes of answers the client had acknowledged at the last idle check (writes paused)
    passing: PassThrough | None = None  # a read being passed through from a peer (pass_through.py)
    fast_scope: dict | None = None  # the scope of the last request the fast path took

    # uvicorn builds the ASGI scope when a request begins, and arms a keep-alive timer after each
    # response (cancelling it when data arrives). A plain read needs five fields of the scope, and
    # one timer per connection that looks for idleness now and then does the timer's job: both
    # cost per request more than they need to (docs/performance.md).

    def data_received(self, data: bytes) -> None:
        """uvicorn's, and a bound on the request head: llhttp keeps a header (and uvicorn the URL)
        in memory until it ends, whatever its size, so one endless header could take all the
        memory there is. A head that goes on past MAX_HEAD_BYTES across reads is refused (400
        RequestHeaderSectionTooLarge, as S3) and the connection closed. Only chunks that begin and
        end inside one head are counted (what is surely head): a plain request, whose head arrives
        in one chunk, costs one attribute read here, and a larger head that arrives whole in one
        read (at most the event loop's read size, 256 KiB) is parsed as it is: the bound is on
        memory, which that read takes anyway."""
        if not self._head_open:
            super().data_received(data)
            return
        messages = self._messages
        super().data_received(data)
        if self._head_open and messages == self._messages:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
                self._refuse_head()

    def _refuse_head(self) -> None:
        error = errors.RequestHeaderSectionTooLarge(
            f"The request line and headers are larger than {MAX_HEAD_BYTES} bytes; the request was not read.",
            MaxSizeAllowed=str(MAX_HEAD_BYTES))
        self._send_error_and_close(error, self.url.partition(b"?")[0][:1024].decode("latin-1"))

    def on_message_begin(self) -> None:
        self._head_open = True
        self._head_bytes = 0
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self.scope = None  # built by _asgi_scope when the request goes through ASGI
        self._messages += 1

    def _asgi_scope(self) -> None:
        url, expect, headers = self.url, self.expect_100_continue, self.headers
        super().on_message_begin()
        self.url, self.expect_100_continue, self.headers = url, expect, headers
        self.scope["headers"] = headers

    def _through_asgi(self) -> None:
        self.writes.flush()  # answers of this connection still in the batch go out before this one's
        self._asgi_scope()
        super().on_headers_complete()

    def on_headers_complete(self) -> None:
        self._head_open = False
        cycle = self.cycle
        method = self.parser.get_method()
        if ((method != b"GET" and method != b"HEAD") or (cycle is not None and not cycle.response_complete)
                or self.flow.write_paused or self.parser.should_upgrade()):
            return self._through_asgi()
        http_version = self.parser.get_http_version()
        if self.url[:1] == b"/":
            # The origin form every client sends: split it here. httptools.parse_url validates the
            # whole (long, presigned) query character by character, ~2 µs (an absolute URL still
            # goes through it); llhttp has already refused what is not a valid request target.
            raw_path, _, query = self.url.partition(b"#")[0].partition(b"?")
        else:
            url = parse_url(self.url)
            raw_path, query = url.path, url.query or b""
        path = raw_path.decode("ascii")
        if "%" in path:
            path = unquote(path)
        # What S3Request.from_scope and the access log read; the rest of an ASGI scope is not needed.
        self.fast_scope = self.scope = scope = {"method": method.decode(), "path": path, "raw_path": raw_path,
                              "query_string": query, "headers": self.headers,
                              "http_version": http_version, "client": self.client, "root_path": ""}
        answering = self.gateway.fast_answer(scope)
        if answering is None:
            return self._through_asgi()
        previous = cycle
        self.cycle = pending = _FastCycle(http_version != "1.0" and self.parser.should_keep_alive())
        try:
            answer = start_eagerly(answering)
        except NeedsTask:  # it must ask a peer with a client that needs a task: ASGI serves it from the start
            self.cycle = previous
            return self._through_asgi()
        except (Exception, asyncio.CancelledError) as exc:  # a fault no answer_read caught: a 500 still
            # (no task runs an eager start, so no CancelledError here is a cancellation of this request)
            return self._internal_error(pending, scope, exc)
        self.gateway.fast_reads += 1
        if isinstance(answer, Suspended):  # it waits (a relay, a remote backend): a task finishes it
            self._run(self._finish(pending, scope, answer))
        elif answer.__class__ is Forward:  # on a peer, as the location cache says: passed through
            self._pass_through(pending, scope, answer)
        else:
            self._respond(pending, scope, *answer)

    def _pass_through(self, pending: _FastCycle, scope: dict, forward: Forward) -> None:
        sink = PassThrough(self, pending, scope, forward)
        if sink.start():
            self.passing = sink
        else:  # no idle connection to that peer: the usual relay (which opens one)
            self.answer_usual_way(pending, scope, forward.req)

    def answer_usual_way(self, pending: _FastCycle, scope: dict, req) -> None:
        """Answer a read that could not be passed through as an ordinary relayed read, in a task."""
        if not self.transport.is_closing():
            self._run(self._finish(pending, scope, self.gateway.s3.answer_read(req)))

    _send_socket: socket.socket | bool | None = None  # _plain_socket's answer, once asked

    def _plain_socket(self) -> socket.socket | None:
        """A socket object on this connection's socket for sendfile and send(MSG_MORE), when it is
        plain TCP, not TLS (there the bytes must go through the TLS layer). None otherwise.

        It holds a duplicate of the transport's descriptor (closed in connection_lost), so it can
        never close a descriptor number that the transport gave up and something else reuses."""
        sock = self._send_socket
        if sock is None:
            sock = False
            transport = self.transport
            if transport.get_extra_info("sslcontext") is None and transport.get_extra_info("ssl_object") is None:
                raw = transport.get_extra_info("socket")
                if raw is not None and raw.family in (socket.AF_INET, socket.AF_INET6):
                    sock = socket.socket(raw.family, socket.SOCK_STREAM, 0, os.dup(raw.fileno()))
            self._send_socket = sock
        return sock or None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        # Also a connection that never sends a request is closed once idle (uvicorn's httptools
        # protocol only arms its timer after a response).
        self._idle_timer = self.loop.call_later(self.timeout_keep_alive, self._idle_check)

    def eof_received(self) -> bool | None:
        """The client closed its sending side after its request (``shutdown(SHUT_WR)``, as ``nc -N``
        does). Requests that arrived whole are still answered, then the connection is closed, as
        nginx does; uvicorn would close at once, leaving a stored PUT unanswered. A request whose
        body is incomplete can never finish: the connection closes at once, as before."""
        self.writes.flush()  # answers given in this iteration go out before any close
        cycle = self.cycle
        if (cycle is not None and not cycle.response_complete and not cycle.more_body) or self.pipeline:
            self._close_when_answered = True
            return True  # keep the transport open for writing
        return None  # asyncio closes the transport

    def on_response_complete(self) -> None:
        """After every response (both paths): the next pipelined request, or wait for one."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        if self._refusal is not None and not self.pipeline:
            self.writes.flush()
            self.transport.write(self._refusal)
            self.transport.close()
            return
        if self._close_when_answered and not self.pipeline:
            self.writes.flush()
            self.transport.close()
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self._idle_timer is None:
            self._messages_seen = self._messages
            self._idle_timer = self.loop.call_later(self.timeout_keep_alive, self._idle_check)

    def on_body(self, body: bytes) -> None:
        self._body_chunks += 1  # only requests with a body get here: a plain read costs nothing
        super().on_body(body)

    def _idle_check(self) -> None:
        """Close the connection if no request began since the last check and none is in progress:
        an idle keep-alive connection is closed 1-2 times timeout_keep_alive after its last request.

        A request in progress whose body stopped arriving is idle too: the client hung or its
        network went, and it would keep its task and the backend's open temp file for as long as
        the server runs. It is answered 400 RequestTimeout (as S3) after 1-2 times the timeout
        without a byte of body; a body that keeps coming, however slowly, is read whole."""
        self._idle_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        busy = cycle is not None and not cycle.response_complete
        if (busy and self._messages == self._messages_seen and self._body_chunks == self._body_chunks_seen
                and self._waits_for_body(cycle)):
            return self._refuse_stalled_body(cycle)
        if busy and self._answer_stalled():
            log.info("a client took none of its answer for %s s; closing its connection", self.timeout_keep_alive)
            self.transport.abort()  # its unsent bytes, the open object file and the request's task go
            return
        if busy or self._messages != self._messages_seen:
            self._messages_seen = self._messages
            self._body_chunks_seen = self._body_chunks
            self._idle_timer = self.loop.call_later(self.timeout_keep_alive, self._idle_check)
            return
        self.transport.close()

    def _answer_stalled(self) -> bool:
        """Whether the client has taken no byte of the answer being sent since the last idle check: the
        writes are paused (the socket's buffer is full) and the count of bytes the client acknowledged
        (TCP_INFO) has not moved. A client that stopped reading a GET (hung, or holding connections on
        purpose) kept its connection, the object's open file and the request's task for good; one that
        reads, however slowly, is never cut (as nginx's send_timeout). The transport's own buffer is no
        measure: the kernel lets it drain only in large steps, so a slow reader looks stalled by it."""
        if not self.flow.write_paused:
            self._acked_seen = -1
            return False
        acked = _bytes_acked(self.transport)
        if acked is None:  # not TCP on Linux: never cut
            return False
        stalled = acked == self._acked_seen
        self._acked_seen = acked
        return stalled and not self._relayed_by_a_live_peer()

    def _relayed_by_a_live_peer(self) -> bool:
        """Whether the answer goes to another node of the cluster (a peer route: only a node with the
        cluster's secret is answered one) that is alive: that node relays it to a client of its own, and
        stops reading it while that client is full (back-pressure), which can look stalled here for
        longer than the timeout; it cuts its client itself if that one takes nothing. Cutting here cut
        a slow reader's download through any other node short (the same reader got it whole from the
        holder). A node that is down (no fresh heartbeat at the last read of the registry) is cut as
        any client."""
        # The last request this connection's fast path took: a later one parsed while it is answered
        # goes through ASGI (uvicorn's cycle, which has its own scope). "cluster_peer": its signature
        # was checked (api/peer.py), so a client cannot pass for a node by a header.
        caller = None
        for scope in (self.fast_scope, getattr(self.cycle, "scope", None)):
            if scope is not None and "cluster_peer" in scope:
                caller = scope["cluster_peer"]
        cluster = self.gateway.service.cluster
        return caller is not None and cluster is not None and cluster.heard_from(caller)

    def _waits_for_body(self, cycle) -> bool:
        """The request's body is not complete and it is up to the client to send more: not while
        reading is paused (the server is behind, or a pipelined request waits its turn), nor while
        the client waits for the 100 Continue the application has not asked for yet."""
        return (cycle.more_body and not isinstance(cycle, _FastCycle) and not self.flow.read_paused
                and not cycle.waiting_for_100_continue)

    def _refuse_stalled_body(self, cycle) -> None:
        log.info("no request body arrived for %s s on a connection from %s; closing it",
                 self.timeout_keep_alive, get_client_addr(cycle.scope))
        if cycle.response_started:  # an answer has begun (none does before its body, but): just end it
            self.transport.close()
            return
        error = errors.RequestTimeout(
            f"No part of the request body arrived for {self.timeout_keep_alive:g} seconds; the request was "
            "not completed and nothing was stored. Idle connections are closed.")
        # The application, waiting for the body, then sees the disconnect and discards what it wrote.
        self._send_error_and_close(error, cycle.scope["path"], after_answers=False)

    def send_400_response(self, msg: str) -> None:
        """A request llhttp cannot parse: the S3 error document instead of uvicorn's plain text, so
        S3 clients show a code and a reason. The usual cause is a header the parser refuses to
        guess about (request smuggling): two Content-Length headers, even equal ones (rclone
        --s3-use-presigned-request sends them), or Content-Length with Transfer-Encoding."""
        cycle = self.cycle
        if (cycle is not None and not cycle.response_complete and not isinstance(cycle, _FastCycle)
                and cycle.more_body and not cycle.response_started):
            # In the body of the request being read (a malformed chunk of Transfer-Encoding: chunked):
            # the refusal is this request's answer, now. Deferred until it was answered, it waited for
            # a body that could never come and was a RequestTimeout a minute later. The application,
            # waiting for the body, sees the disconnect and discards what it wrote.
            error = errors.InvalidRequest(
                "The request body is not valid HTTP/1.1: a malformed chunk of Transfer-Encoding: chunked "
                "(a chunk size that is not hexadecimal, a missing CRLF). Nothing was stored.")
            self._send_error_and_close(error, cycle.scope["path"], after_answers=False)
            return
        if len(self.url) > MAX_HEAD_BYTES:  # httptools.parse_url refuses a URL past 64 KiB
            self._refuse_head()
            return
        error = errors.InvalidRequest(
            "The request is not valid HTTP/1.1 and was not read: check for a repeated Content-Length header, "
            "Content-Length together with Transfer-Encoding, or a malformed header line.")
        self._send_error_and_close(error, "")

    def _send_error_and_close(self, error: errors.GatewayError, resource: str, after_answers: bool = True) -> None:
        """An S3 error document for a request that was not read, then close the connection.

        With ``after_answers``, requests that came before it on this connection and are still
        being answered (through ASGI, or a fast read that waits) get their answers first: a PUT
        followed by bytes the parser refuses (a Content-Length shorter than the body sent) is
        stored, and its answer used to be lost, the client seeing only this error. Reading stops
        meanwhile (there is nothing more to read), and on_response_complete sends the error."""
        self._head_open = False
        body = error_document(error, resource, "", self.gateway.s3.host_id)
        head = [STATUS_LINE[error.status], *[b"%s: %s\r\n" % header for header in self.server_state.default_headers],
                b"content-type: application/xml\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)]
        cycle = self.cycle
        if after_answers and ((cycle is not None and not cycle.response_complete) or self.pipeline):
            if self._refusal is None:  # the parser refuses everything after its first error: that one is sent
                self._refusal = b"".join(head) + body
            self.flow.pause_reading()
            return
        self.writes.flush()  # answers given before this one go first
        self.transport.write(b"".join(head) + body)
        self.transport.close()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.passing is not None:
            self.passing.drained()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.passing is not None:
            self.passing.abandon()
            self.passing = None
        if self._send_socket:
            self._send_socket.close()  # the duplicate: with the transport's own closed, the connection ends
            self._send_socket = False
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        super().connection_lost(exc)

    def _run(self, coro) -> None:
        task = self.loop.create_task(coro)
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def _internal_error(self, pending: _FastCycle, scope: dict, exc: BaseException) -> None:
        """A fast read that failed with an exception of its own (a bug, a plugin's stray error): the S3
        500 InternalError, logged with its traceback. Unanswered, the request kept its connection and
        descriptor open for good (the client's close was never read): anyone could exhaust the
        server's descriptors with requests that failed so."""
        request_id = self.gateway.s3.new_request(scope).request_id
        log.error("request %s (%s %s) failed", request_id, scope["method"], scope["path"], exc_info=exc)
        error = errors.InternalError(
            f"We encountered an internal error (request id {request_id}); it is in the server log.")
        body = error_document(error, scope["path"], request_id, self.gateway.s3.host_id)
        headers = [(b"content-type", b"application/xml"), (b"content-length", b"%d" % len(body)),
                   (b"x-amz-request-id", request_id.encode())]
        self._respond(pending, scope, error.status, headers, body)

    async def _finish(self, pending: _FastCycle, scope: dict, answer) -> None:
        """Send the answer of ``answer`` (a Suspended read, or an answer_read coroutine) once it is ready."""
        try:
            answer = await answer
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and not stray_cancellation():
                raise  # the connection went away: nothing to answer
            return self._internal_error(pending, scope, exc)
        if answer.__class__ is Forward:
            self._pass_through(pending, scope, answer)
        else:
            self._respond(pending, scope, *answer)

    def log_access(self, scope: dict, status: int, headers=()) -> None:
        """The access line of a request answered here (``headers``: the answer's, for its request id)."""
        if self.access_log:
            request_id = next((value.decode() for name, value in headers if name == b"x-amz-request-id"), "-")
            self.access_logger.info('%s - "%s %s HTTP/%s" %d', get_client_addr(scope), scope["method"],
                                    get_path_with_query_string(scope), scope["http_version"], status,
                                    extra={"request_id": request_id})

    def _respond(self, pending: _FastCycle, scope: dict, status: int, headers: list, body) -> None:
        """Send (status, headers, body) as answered by S3App.answer_read or PeerApp.answer_read
        (``scope``: this request's; by the time a suspended answer is ready, the connection may
        have begun another)."""
        head_only = scope["method"] == "HEAD"
        self.log_access(scope, status, headers)
        # uvicorn checks every header of every response for characters that would split it. Here
        # the values that come from outside are checked where they enter: stored object headers once
        # per ObjectInfo (s3/responses.py), response-* overrides when parsed (s3/objects.py).
        headers = self.server_state.default_headers + headers
        if not pending.keep_alive:
            headers.append((b"connection", b"close"))
        head = b"".join([STATUS_LINE[status], *[b"%s: %s\r\n" % header for header in headers], b"\r\n"])
        file_reader = None
        if isinstance(body, ObjectReader):
            if body.file is not None and not head_only:
                # An open file (a local object up to 1 MiB): sent with sendfile when the batch is
                # written (write_batch.send_file), which closes the reader.
                file_reader, data = body, None
            elif body.data is None and not head_only:
                self._run(self._stream(pending, head, body))
                return
            else:
                data = body.data
                body.close()
        else:
            data = body
        if self.transport.is_closing():
            if file_reader is not None:
                file_reader.close()
            return
        if data and not head_only:
            # One buffer for a small body; beyond that, no copy of the body into the head's buffer
            # (the transport writes both with one writev).
            parts = (head + data,) if len(data) <= 8192 else (head, data)
        else:
            parts = (head,)
        self.writes.add(self.loop, self.transport, parts, not pending.keep_alive, file_reader,
                        self._plain_socket() if file_reader is not None else None)
        pending.response_complete = True
        self.on_response_complete()

    async def _stream(self, pending: _FastCycle, head: bytes, reader: ObjectReader) -> None:
        """An object too large to read in one piece: its chunks, as the socket takes them."""
        expected = reader.stop - reader.start
        sent = 0
        try:
            self.writes.flush()  # what this connection answered before goes first
            if self.transport.is_closing():
                return
            self.transport.write(head)
            async for chunk in reader.chunks():
                if self.flow.write_paused:
                    await self.flow.drain()
                if self.transport.is_closing():
                    return
                self.transport.write(chunk)
                sent += len(chunk)
        except Exception as exc:
            # The response has started: all that is left is to end the connection.
            log.warning("a streamed object read failed after the response started: %s", exc)
            self.transport.close()
            return
        finally:
            reader.close()
        if sent != expected:
            log.warning("a streamed object ended after %d of %d bytes; closing the connection", sent, expected)
            self.transport.close()
            return
        self._complete(pending)

    def _complete(self, pending: _FastCycle) -> None:
        pending.response_complete = True
        if not pending.keep_alive:
            self.transport.close()
        self.on_response_complete()


_TCP_INFO_BYTES_ACKED = slice(120, 128)  # struct tcp_info's tcpi_bytes_acked (Linux 4.1+), a u64


def _bytes_acked(transport) -> int | None:
    """How many bytes sent on the connection the client has acknowledged; None where TCP_INFO does not
    tell (another OS, a socket that is not TCP)."""
    sock = transport.get_extra_info("socket")
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 128)
    except (AttributeError, OSError):
        return None
    return int.from_bytes(info[_TCP_INFO_BYTES_ACKED], sys.byteorder) if len(info) >= 128 else None


def protocol_for(gateway) -> type[GatewayHttpProtocol]:
    """The protocol class uvicorn creates per connection, bound to this gateway app."""
    return type("GatewayHttpProtocol", (GatewayHttpProtocol,), {"gateway": gateway, "writes": WriteBatch()})
