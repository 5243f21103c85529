"""The framing and failure rules of the pipelined peer connection (gateway/cluster/peer_pipeline.py),
fed answers byte by byte, several in one piece, cut and malformed. The same connection under a real
cluster: tests/cluster/test_pass_through.py and test_pipelined_reads.py."""

from __future__ import annotations

import pytest

from gateway.cluster.peer_http import PeerHttpError
from gateway.cluster.peer_pipeline import MAX_QUEUED, Pipeline, frame


class _Loop:
    now = 100.0

    def time(self) -> float:
        return self.now


class _Client:
    timeout = 2.0

    def __init__(self):
        self.loop = _Loop()
        self.sent: list[bytes] = []
        self.forgotten = False

    def _write(self, transport, request: bytes) -> None:
        self.sent.append(request)

    def _watch(self, pipeline) -> None:
        pass

    def _forget_pipeline(self, pipeline) -> None:
        self.forgotten = True


class _Transport:
    def __init__(self):
        self.aborted = False
        self.reading = True

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class _Sink:
    """Records what the connection hands it; takes the answer unless ``take`` is False."""

    def __init__(self, take: bool = True, pipeline=None, pause_on_body: bool = False):
        self.take, self.pipeline, self.pause_on_body = take, pipeline, pause_on_body
        self.status = None
        self.bytes = b""
        self.outcome = None
        self.error: PeerHttpError | None = None

    def head(self, status: int, head: bytes, body, own_headers=None) -> bool:
        self.status = status
        assert head.endswith(b"\r\n\r\n") and head.count(b"\r\n\r\n") == 1
        if self.take:
            self.bytes += head + bytes(body)
        return self.take

    def body(self, chunk) -> None:
        self.bytes += bytes(chunk)
        if self.pause_on_body:
            self.pipeline.pause()

    def end(self) -> None:
        self.outcome = "end"

    def declined(self) -> None:
        self.outcome = "declined"

    def released(self) -> None:
        self.outcome = "released"

    def failed(self, error: PeerHttpError) -> None:
        self.outcome, self.error = "failed", error


def answer(status: int, body: bytes = b"", extra: bytes = b"", length: int | None = None) -> bytes:
    length = len(body) if length is None else length
    return (b"HTTP/1.1 %d X\r\ndate: now\r\ncontent-length: %d\r\n%s\r\n" % (status, length, extra)) + body


def pipeline_with(*sinks_and_methods) -> tuple[Pipeline, _Client]:
    client = _Client()
    pipeline = Pipeline(client, "http://peer", PeerHttpError)
    pipeline.connection_made(_Transport())
    for sink, head_only in sinks_and_methods:
        pipeline.relay(sink, b"GET / HTTP/1.1\r\n\r\n", head_only)
    return pipeline, client


def test_frame_reads_status_length_and_keep_alive():
    assert frame(answer(200, b"abc"), False) == (200, 3, True, False)
    assert frame(answer(200, length=10), True) == (200, 0, True, False)  # a HEAD's answer has no body
    assert frame(answer(304, length=0), False) == (304, 0, True, False)
    assert frame(b"HTTP/1.1 206 Partial\r\nContent-Length: 7\r\nConnection: close\r\n\r\n", False) == (
        206, 7, False, True)
    assert frame(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", False) == (200, 1, False, False)
    # Header names in any case (a gateway writes them in lower case).
    assert frame(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDate: x\r\n\r\n", False) == (200, 5, True, False)
    assert frame(b"HTTP/1.1 200 OK\r\nCONTENT-LENGTH: 5\r\nCONNECTION: close\r\n\r\n", False) == (
        200, 5, False, True)
    assert frame(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nKeep-Alive: timeout=5\r\n\r\n", False) == (
        200, 5, True, True)
    assert frame(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nx-connection: close\r\n\r\n", False) == (
        200, 5, True, False)  # another header that ends in a hop-by-hop name
    for bad in (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", b"HTTP/1.1 2000 OK\r\n\r\n", b"SSH-2.0\r\n\r\n",
                b"HTTP/1.1 abc OK\r\ncontent-length: 1\r\n\r\n"):
        with pytest.raises(ValueError):
            frame(bad, False)


@pytest.mark.parametrize("piece", [1, 7, 100, 10_000])
def test_answers_in_any_pieces_reach_their_own_sinks_in_order(piece):
    sinks = [_Sink(), _Sink(), _Sink(take=False), _Sink(), _Sink()]
    methods = [False, True, False, False, False]
    answers = [answer(200, b"first" * 300), answer(200, length=1500), answer(404, b"<Error/>"),
               answer(304, length=0), answer(206, b"last")]
    pipeline, _ = pipeline_with(*zip(sinks, methods))
    stream = b"".join(answers)
    for at in range(0, len(stream), piece):
        pipeline.data_received(stream[at:at + piece])
    assert [s.outcome for s in sinks] == ["end", "end", "declined", "end", "end"]
    assert [s.status for s in sinks] == [200, 200, 404, 304, 206]
    for sink, whole in zip(sinks, answers):
        if sink.take:
            assert sink.bytes == whole
    assert not pipeline.queue and pipeline.remaining == -1 and pipeline.taking()


@pytest.mark.parametrize("garbage", [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                                     b"NOT HTTP\r\n\r\n", b"HTTP/1.1 200 OK\r\n" + b"x" * 70_000])
def test_a_malformed_answer_fails_every_queued_read_and_the_connection_goes(garbage):
    first, second = _Sink(), _Sink()
    pipeline, client = pipeline_with((first, False), (second, False))
    pipeline.data_received(garbage)
    assert first.outcome == second.outcome == "failed"
    assert first.error.stage == "head"
    assert second.error.stage == "request" and second.error.disconnected  # never sent: asked the usual way
    assert pipeline.transport.aborted and client.forgotten and not pipeline.taking()


def test_bytes_nobody_asked_for_fail_the_connection():
    sink = _Sink()
    pipeline, client = pipeline_with((sink, False))
    pipeline.data_received(answer(200, b"ok") + b"HTTP/1.1 200 OK\r\n")
    assert sink.outcome == "end"  # its answer was whole
    assert pipeline.transport.aborted and client.forgotten


def test_connection_close_ends_the_pipeline_after_that_answer():
    first, second = _Sink(), _Sink()
    pipeline, _ = pipeline_with((first, False), (second, False))
    pipeline.data_received(answer(200, b"one", b"connection: close\r\n"))
    assert first.outcome == "end" and first.bytes.endswith(b"one")
    assert second.outcome == "failed" and second.error.stage == "request" and second.error.disconnected
    assert pipeline.transport.aborted and not pipeline.taking()


def test_a_lost_connection_fails_the_current_read_as_far_as_it_came():
    first, second = _Sink(), _Sink()
    pipeline, _ = pipeline_with((first, False), (second, False))
    pipeline.data_received(answer(200, b"abc", length=10))
    pipeline.connection_lost(ConnectionResetError("reset"))
    assert first.outcome == "failed" and first.error.stage == "body" and first.error.disconnected
    assert second.outcome == "failed" and second.error.stage == "request"


def test_a_paused_answer_releases_the_reads_behind_it_and_takes_no_more():
    pipeline, _ = pipeline_with()
    slow = _Sink(pipeline=pipeline, pause_on_body=True)
    behind = [_Sink(), _Sink()]
    for sink in (slow, *behind):
        pipeline.relay(sink, b"GET / HTTP/1.1\r\n\r\n", False)
    pipeline.data_received(answer(200, b"a" * 100, length=1000))
    pipeline.data_received(b"b" * 100)  # more body: the sink's client is full, it pauses
    assert not pipeline.transport.reading and not pipeline.taking()
    assert [s.outcome for s in behind] == ["released", "released"]
    pipeline.resume()
    slow.pause_on_body = False
    rest = b"c" * 800 + answer(200, b"dropped") + answer(200, b"dropped too")
    pipeline.data_received(rest)  # the released reads' answers are read and dropped
    assert slow.outcome == "end" and len(slow.bytes) == len(answer(200, length=1000)) + 1000
    assert not pipeline.queue and pipeline.taking() and pipeline.transport.reading
    assert [s.bytes for s in behind] == [b"", b""]


def test_an_abandoned_read_is_read_and_dropped():
    gone, kept = _Sink(), _Sink()
    pipeline, _ = pipeline_with((gone, False), (kept, False))
    pipeline.abandon_sink(gone)
    pipeline.data_received(answer(200, b"for nobody") + answer(200, b"mine"))
    assert gone.outcome is None and gone.bytes == b""
    assert kept.outcome == "end" and kept.bytes.endswith(b"mine")


def test_it_takes_at_most_max_queued_reads_and_times_out_only_while_waiting():
    pipeline, client = pipeline_with(*[(_Sink(), False) for _ in range(MAX_QUEUED)])
    assert not pipeline.taking() and len(client.sent) == MAX_QUEUED
    loop = client.loop
    assert not pipeline.timed_out(loop.now + 1.9)
    assert pipeline.timed_out(loop.now + 2.0)
    pipeline.paused = True
    assert not pipeline.timed_out(loop.now + 10)  # waiting for its own client, not for the peer


def test_a_large_answer_releases_the_reads_behind_it_until_it_is_through():
    from gateway.cluster.peer_pipeline import LARGE_ANSWER

    large, behind, later = _Sink(), _Sink(), _Sink()
    pipeline, _ = pipeline_with((large, False), (behind, False))
    pipeline.data_received(answer(200, b"x" * 10, length=LARGE_ANSWER + 1))
    assert behind.outcome == "released"
    assert not pipeline.taking()  # none queue behind it while it comes
    pipeline.data_received(b"x" * (LARGE_ANSWER - 9) + answer(200, b"dropped"))
    assert large.outcome == "end" and pipeline.taking() and not pipeline.queue
    pipeline.relay(later, b"GET / HTTP/1.1\r\n\r\n", False)
    pipeline.data_received(answer(200, b"after"))
    assert later.outcome == "end" and later.bytes.endswith(b"after")


@pytest.mark.parametrize("during", ["head", "body", "end"])
def test_a_failure_from_a_sinks_callback_ends_the_reading_of_what_came(during):
    pipeline, _ = pipeline_with()

    class _Closing(_Sink):  # fails the connection from its callback, as PeerHttp.close() would
        def head(self, status, head, body, own_headers=None):
            taken = super().head(status, head, body, own_headers)
            if during == "head":
                pipeline.fail("client closed", "request")
            return taken

        def body(self, chunk):
            super().body(chunk)
            if during == "body":
                pipeline.fail("client closed", "request")

        def end(self):
            super().end()
            if during == "end":
                pipeline.fail("client closed", "request")

    first, second = _Closing(), _Sink()
    for sink in (first, second):
        pipeline.relay(sink, b"GET / HTTP/1.1\r\n\r\n", False)
    pipeline.data_received(answer(200, b"one", length=5))
    pipeline.data_received(b"..")
    pipeline.data_received(answer(200, b"two"))
    assert first.outcome == ("end" if during == "end" else "failed")
    assert second.outcome == "failed" and second.bytes == b""  # told once, and not handed the answer after


def test_the_sweep_fails_a_silent_pipeline_and_lets_go_of_an_idle_one():
    waiting = _Sink()
    pipeline, client = pipeline_with((waiting, False))
    now = client.loop.now
    assert pipeline.swept(now + 1.9) and waiting.outcome is None
    assert pipeline.swept(now + 2.0)
    assert waiting.outcome == "failed" and waiting.error.timed_out and waiting.error.stage == "request"
    assert not pipeline.swept(now + 2.1)  # nothing waits: no longer watched
