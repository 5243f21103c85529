"""PassThrough: a peer's answer to a client's read, written to the client as it arrives.

The front end (protocol.py) starts one when S3App.answer_read answers a
Forward (cluster/forward.py): the read goes to the peer on an idle pooled
connection, and this object is that connection's sink (cluster/peer_http.py
_Connection.relay). No task, no future: the peer's answer is handled in the
callbacks of its connection, and written in the client's.

- An answer that settles the read (forward.FINAL_STATUSES) is the client's:
  the peer's head (its status line and headers, but for ``connection``) and
  body. Up to STREAM_AFTER bytes are gathered and written in one piece with
  the iteration's other answers (write_batch.py); a larger body streams, the
  peer connection pausing while the client's is full.
- Any other answer (the cache was stale: 404; a refused signature; a 5xx), or
  none (a reset, the peer timeout), before anything was written to the
  client: the read is answered the usual way (S3App.answer_read without
  forward), which asks every node and answers 503 if one could not be asked.
- The peer failing once the body has begun to go out: the client's connection
  is closed, as for any streamed object whose source fails (the client sees a
  short body, never a wrong one).
"""

from __future__ import annotations

import logging
import time

from ..cluster.forward import FINAL_STATUSES, Forward
from ..cluster.peer_pipeline import HOP_BY_HOP
from ..cluster.relay import outcome

log = logging.getLogger("gateway.cluster")
STREAM_AFTER = 256 * 1024  # bytes of an answer gathered before it streams


def _own_connection_header(head: bytes, keep_alive: bool) -> bytes:
    """The peer's head with its connection headers (hop-by-hop: that connection's) replaced by the
    client connection's: ``connection: close`` when it closes after this answer."""
    lines = [line for line in head[:-4].split(b"\r\n")
             if not line.lower().startswith((b"connection:", b"keep-alive:"))]
    if not keep_alive:
        lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


class PassThrough:
    """The sink of one passed-through read. ``protocol``: the client's GatewayHttpProtocol;
    ``pending``: its _FastCycle for this request; ``scope``: the request's."""

    __slots__ = ("connection", "forward", "gone", "keep_alive", "parts", "pending", "protocol", "scope",
                 "size", "started", "status", "streaming", "target")

    def __init__(self, protocol, pending, scope: dict, forward: Forward):
        self.protocol = protocol
        self.pending = pending
        self.scope = scope
        self.forward = forward
        self.keep_alive = pending.keep_alive
        self.connection = None
        self.parts: list[bytes] = []
        self.size = 0
        self.status = 0
        self.started = 0.0
        self.target = ""  # the peer request's path and query
        self.streaming = False  # the answer began to go out: it can no longer be answered another way
        self.gone = False  # the client went away

    def start(self) -> bool:
        """Send the read to the peer; False when no pooled connection was idle (nothing was sent)."""
        forward = self.forward
        method, self.target, lines = forward.request()
        self.started = time.monotonic()
        client = forward.node.client
        self.connection = client.lean.relay(forward.address, method, self.target, lines, self)
        if self.connection is None:
            client.pass_through["busy"] += 1
            return False
        return True

    def abandon(self) -> None:
        """The client's connection was lost: the peer's answer is not wanted any more."""
        self.gone = True
        if self.connection is not None:
            self.connection.abandon_sink(self)

    def drained(self) -> None:
        """The client's connection can take more: read the peer's answer on."""
        if self.connection is not None:
            self.connection.resume()

    # The peer connection's sink (cluster/peer_http.py _Connection.relay) ----------------------

    def head(self, status: int, head: bytes, body, own_headers: bool | None = None) -> bool:
        """The answer's head is complete: ``head``, its bytes through the blank line; ``body``, the
        part of its body that came with it (bytes or a memoryview, maybe empty); ``own_headers``:
        whether the head has the connection's own headers (HOP_BY_HOP), when the caller looked
        (the pipelined connection's framing does; None: not known). True: this answer is the
        client's."""
        forward = self.forward
        client = forward.node.client
        operation = self.scope["method"].lower()
        if status == 403 and b"\r\nx-cluster-error: AccessDenied\r\n" in head:
            client._refused(forward.peer, self.scope["method"], self.target, "HTTP 403")  # counted, marked failed
            return False
        client.health.succeeded(forward.peer, time.monotonic() - self.started)
        if status == 405 and b"\r\nx-cluster-error: methodnotallowed\r\n" in head.lower():
            client.lacked_read_route(forward.peer)  # an older version: no S3 read route (docs/cluster.md)
        hop_by_hop = HOP_BY_HOP.search(head) is not None if own_headers is None else own_headers
        if status not in FINAL_STATUSES or (hop_by_hop and b"\r\ntransfer-encoding:" in head.lower()):
            # Not the object's answer; or one this relay does not pass as it is (it never comes from a
            # gateway: its reads carry a length).
            client.calls[forward.peer, operation, outcome(status)] += 1
            return False
        if hop_by_hop or not self.keep_alive:
            head = _own_connection_header(head, self.keep_alive)
        client.calls[forward.peer, operation, "ok"] += 1
        forward.node.cluster.balancer.served_read(forward.peer, operation)
        self.status = status
        self.parts.append(head)
        self.size = len(head)
        if body and operation != "head":  # (a body after a HEAD answer is not passed on)
            self.parts.append(body)
            self.size += len(body)
        return True

    def body(self, chunk: bytes) -> None:
        if self.gone:
            return
        if self.streaming:
            self._write(chunk)
            return
        self.parts.append(chunk)
        self.size += len(chunk)
        if self.size > STREAM_AFTER:
            self.streaming = True
            protocol = self.protocol
            protocol.writes.flush()  # what this connection answered before goes first
            parts, self.parts = self.parts, []
            if not protocol.transport.is_closing():
                protocol.transport.writelines(parts)
            self._check_flow()

    def end(self) -> None:
        """The answer is complete (the peer connection is back in its pool)."""
        self.connection = None
        self.forward.node.client.pass_through["passed"] += 1
        protocol = self.protocol
        protocol.passing = None
        if self.gone:
            return
        protocol.log_access(self.scope, self.status)
        transport = protocol.transport
        if self.streaming:
            if not self.keep_alive and not transport.is_closing():
                transport.close()
        else:
            protocol.writes.add(protocol.loop, transport, tuple(self.parts), not self.keep_alive)
        self.parts = []
        self.pending.response_complete = True
        protocol.on_response_complete()

    def declined(self) -> None:
        """The peer's answer does not settle the read (read and dropped): ask the usual way."""
        forward = self.forward
        forward.node.client.pass_through["declined"] += 1
        forward.node.locations.drop(forward.req.bucket, forward.req.key)
        self._usual_way()

    def released(self) -> None:
        """Queued on a pipelined connection behind an answer that is large or read slowly by its
        client (cluster/peer_pipeline.py): not waited for; the usual way, the peer not at fault."""
        self.forward.node.client.pass_through["released"] += 1
        self._usual_way()

    def failed(self, error) -> None:
        """No complete answer (peer_http.PeerHttpError): the usual way, unless the body has begun
        to go out; then the client's connection is closed (its answer cannot be whole)."""
        forward = self.forward
        client = forward.node.client
        if error.stage == "request" and error.disconnected:
            pass  # the peer had closed the idle connection as we sent: the usual way connects afresh
        else:
            if not self.status:  # no head: the call is counted here (a head was counted when it came)
                client.calls[forward.peer, self.scope["method"].lower(), "unreachable"] += 1
            client._failed(forward.peer, f"{error.stage}: {error.reason}")
        if self.streaming:
            client.pass_through["cut"] += 1
            self.connection = None
            self.protocol.passing = None
            if not self.gone:
                log.warning("a passed-through read from peer %s failed after its answer began (%s); closing the "
                            "client's connection", forward.peer, error.reason)
                self.protocol.transport.abort()
            return
        client.pass_through["failed"] += 1
        self._usual_way()

    # ------------------------------------------------------------------------------------------

    def _usual_way(self) -> None:
        self.connection = None
        self.parts = []
        protocol = self.protocol
        protocol.passing = None
        if not self.gone:
            protocol.answer_usual_way(self.pending, self.scope, self.forward.req)

    def _write(self, chunk: bytes) -> None:
        transport = self.protocol.transport
        if transport.is_closing():
            return
        transport.write(chunk)
        self._check_flow()

    def _check_flow(self) -> None:
        """The client's connection is full (its protocol's pause_writing ran): stop reading the
        peer until it drains (GatewayHttpProtocol.resume_writing calls drained)."""
        if self.protocol.flow.write_paused and self.connection is not None:
            self.connection.pause()
