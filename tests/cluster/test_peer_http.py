"""The lean peer client (gateway/cluster/peer_http.py) behind PeerClient.get/head.

Against real gateway nodes (a relaying node's S3 reads, and a PeerClient in this process asking a
node's peer route), and against tiny asyncio servers started here that answer badly on purpose.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from typing import Self

import pytest
from botocore.exceptions import ClientError

from gateway import errors
from gateway.backend import ByteRange
from gateway.cluster.health import PeerHealth
from gateway.cluster.peer_auth import PeerSigner
from gateway.cluster.relay import SMALL_BODY, PeerClient, PeerUnreachable
from gateway.eager import Suspended, start_eagerly

from .conftest import SECRET, ClusterNodes

BODY = bytes(range(256)) * 128  # 32 KiB
LARGE = bytes(range(251)) * (SMALL_BODY // 251 + 4000)  # > SMALL_BODY: not read by the lean client
RUN_LIMIT = 60  # seconds any one asyncio scenario may take


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """Three redundant nodes (no primary: objects stay where they are written); ``c`` gets killed and paused."""
    base = tmp_path_factory.mktemp("peer-http")
    cluster = ClusterNodes(base, f"sqlite:///{base}/registry.db")
    try:
        cluster.add_many([("a", "redundant"), ("b", "redundant"), ("c", "redundant")])
        cluster.wait_known(3)
        cluster["b"].client().create_bucket(Bucket="lean")
        b = cluster["b"].client()
        b.put_object(Bucket="lean", Key="small.bin", Body=BODY, ContentType="image/jpeg", Metadata={"cam": "3"})
        b.put_object(Bucket="lean", Key="large.bin", Body=LARGE)
        cluster["c"].client().put_object(Bucket="lean", Key="on-c.bin", Body=b"held by c")
    except BaseException:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()


def run(coro):
    async def bounded():
        return await asyncio.wait_for(coro, RUN_LIMIT)

    return asyncio.run(bounded())


def new_client(timeout: float = 3.0, secret: str = SECRET) -> PeerClient:
    return PeerClient(PeerSigner(secret, "lean-test"), PeerHealth(), timeout)


def fast_reads(node) -> float:
    with urllib.request.urlopen(node.endpoint + "/_admin/metrics", timeout=5) as response:
        text = response.read().decode()
    return float(re.search(r"^gateway_http_fast_reads_total (\S+)$", text, re.MULTILINE).group(1))


def peer_calls(node, peer: str, op: str, result: str) -> float:
    with urllib.request.urlopen(node.endpoint + "/_admin/metrics", timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith("gateway_cluster_peer_requests_total{") and f'peer="{peer}"' in line \
                and f'operation="{op}"' in line and f'outcome="{result}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# Through a relaying node ---------------------------------------------------------------------------


def test_relayed_reads_through_a_node_stay_on_the_fast_path(nodes):
    s3 = nodes["a"].client()
    before = fast_reads(nodes["a"])
    got = s3.get_object(Bucket="lean", Key="small.bin")
    assert got["Body"].read() == BODY
    assert got["ContentType"] == "image/jpeg" and got["Metadata"] == {"cam": "3"}
    head = s3.head_object(Bucket="lean", Key="small.bin")
    assert head["ContentLength"] == len(BODY) and head["Metadata"] == {"cam": "3"}
    ranged = s3.get_object(Bucket="lean", Key="small.bin", Range="bytes=100-299")
    assert ranged["Body"].read() == BODY[100:300]
    assert ranged["ContentRange"] == f"bytes 100-299/{len(BODY)}"
    # Relayed GETs and the HEAD were answered by a's eager front end: before the lean client, a relay
    # needed a task and the request was redone through ASGI (not counted as a fast read).
    assert fast_reads(nodes["a"]) - before >= 3
    assert peer_calls(nodes["a"], "b", "get", "ok") >= 2
    assert peer_calls(nodes["a"], "b", "head", "ok") >= 1


def test_relayed_missing_object_and_large_object_through_a_node(nodes):
    s3 = nodes["a"].client()
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket="lean", Key="nowhere.bin")
    assert info.value.response["Error"]["Code"] == "NoSuchKey"
    with pytest.raises(ClientError) as info:
        s3.head_object(Bucket="lean", Key="nowhere.bin")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert s3.get_object(Bucket="lean", Key="large.bin")["Body"].read() == LARGE
    tail = s3.get_object(Bucket="lean", Key="large.bin", Range=f"bytes={len(LARGE) - 1000}-")
    assert tail["Body"].read() == LARGE[-1000:]


# A PeerClient in this process against a real node's peer route ---------------------------------------


def test_get_and_head_over_the_lean_client_reuse_one_connection(nodes):
    address = nodes["b"].endpoint

    async def scenario():
        client = new_client()
        try:
            reader = await client.get("b", address, "lean", "small.bin")
            assert reader.data == BODY and (reader.start, reader.stop) == (0, len(BODY))
            assert reader.info.size == len(BODY) and reader.info.meta.content_type == "image/jpeg"
            info = await client.head("b", address, "lean", "small.bin")
            assert info == reader.info
            part = await client.get("b", address, "lean", "small.bin", ByteRange(10, 19))
            assert part.data == BODY[10:20] and (part.start, part.stop) == (10, 20)
            suffix = await client.get("b", address, "lean", "small.bin", ByteRange(None, 5))
            assert suffix.data == BODY[-5:]
            with pytest.raises(errors.NoSuchKey):
                await client.get("b", address, "lean", "nowhere.bin")
            with pytest.raises(errors.NoSuchKey):
                await client.head("b", address, "lean", "nowhere.bin")
            with pytest.raises(errors.NoSuchBucket):
                await client.get("b", address, "no-such-bucket", "x")
            stats = client.lean.stats
            assert stats["requests"] == 7 and stats["connected"] == 1 and stats["reused"] == 6, stats
            assert client.lean.idle_count(address) == 1
            assert client.calls["b", "get", "ok"] == 3 and client.calls["b", "head", "ok"] == 1
            assert client.calls["b", "get", "missing"] == 2 and client.calls["b", "head", "missing"] == 1
            assert client.health.snapshot()["b"]["healthy"]
            assert client._session is None  # aiohttp was never needed
        finally:
            await client.close()
        assert client.lean.open_count() == 0

    run(scenario())


def test_a_large_object_is_fetched_again_and_streamed_by_aiohttp(nodes):
    address = nodes["b"].endpoint

    async def scenario():
        client = new_client()
        try:
            reader = await client.get("b", address, "lean", "large.bin")
            assert reader.data is None and reader.length == len(LARGE)
            assert await reader.read_all() == LARGE
            reader.close()
            assert client.lean.stats["too_large"] == 1
            assert client.lean.idle_count(address) == 0  # the cut-off answer's connection is not reused
            assert client.calls["b", "get", "ok"] == 1  # counted once (the aiohttp request)
            # A range within SMALL_BODY stays on the lean client.
            part = await client.get("b", address, "lean", "large.bin", ByteRange(5, 5 + 999))
            assert part.data == LARGE[5:1005]
            assert client.lean.stats["too_large"] == 1 and client.calls["b", "get", "ok"] == 2
        finally:
            await client.close()

    run(scenario())


def test_a_relay_started_outside_any_task_suspends_instead_of_needing_one(nodes):
    # What the front end does with a plain read (gateway/api/protocol.py): run the coroutine in a
    # plain callback until it waits, then let a task finish it. No NeedsTask, cold pool or warm.
    address = nodes["b"].endpoint

    async def scenario():
        loop = asyncio.get_running_loop()
        client = new_client()

        async def finish(suspended):
            return await suspended

        def start(done):
            try:
                assert asyncio.current_task() is None
                answer = start_eagerly(client.get("b", address, "lean", "small.bin"))
                assert isinstance(answer, Suspended), answer
            except BaseException as exc:  # noqa: BLE001 - reported to the test through the future
                done.set_exception(exc)
                return
            task = loop.create_task(finish(answer))
            task.add_done_callback(lambda t: done.set_exception(t.exception()) if t.exception()
                                   else done.set_result(t.result()))

        try:
            for _ in range(2):
                done = loop.create_future()
                loop.call_soon(start, done)
                reader = await done
                assert reader.data == BODY
            assert client.lean.stats["connected"] == 1 and client.lean.stats["reused"] == 1
        finally:
            await client.close()

    run(scenario())


def test_a_wrong_cluster_secret_is_refused(nodes):
    address = nodes["b"].endpoint

    async def scenario():
        client = new_client(secret="not-the-cluster-secret-0123456789")
        try:
            with pytest.raises(PeerUnreachable) as info:
                await client.get("b", address, "lean", "small.bin")
            assert "refused" in info.value.reason
            assert client.calls["b", "get", "refused"] == 1
            state = client.health.snapshot()["b"]
            assert not state["healthy"] and "GATEWAY_CLUSTER_SECRET" in state["last_error"]
        finally:
            await client.close()

    run(scenario())


def test_killed_peer_is_unreachable_then_a_restart_on_the_same_port_is_used_after_one_retry(nodes):
    node = nodes["c"]
    address = node.endpoint

    async def scenario():
        client = new_client()
        try:
            assert (await client.get("c", address, "lean", "on-c.bin")).data == b"held by c"
            assert client.lean.idle_count(address) == 1
            node.kill()  # kill -9, while this loop does not run: the pooled connection still looks open
            with pytest.raises(PeerUnreachable) as info:
                await client.get("c", address, "lean", "on-c.bin")
            assert "timed out" not in info.value.reason  # refused at once, not waited for
            state = client.health.snapshot()["c"]
            assert not state["healthy"] and client.health.limited("c"), state
            assert client.calls["c", "get", "unreachable"] == 1
            assert client.lean.stats["retried"] == 1  # the dead pooled connection, then a refused connect

            nodes.restart("c")
            assert (await client.get("c", address, "lean", "on-c.bin")).data == b"held by c"
            assert client.lean.idle_count(address) == 1
            node.kill()
            nodes.restart("c")  # the same port: the pooled connection is dead, the address answers
            retried = client.lean.stats["retried"]
            info = await client.head("c", address, "lean", "on-c.bin")
            assert info.size == len(b"held by c")
            assert client.lean.stats["retried"] == retried + 1
            assert client.health.snapshot()["c"]["healthy"]
            assert client.calls["c", "head", "ok"] == 1 and client.calls["c", "head", "unreachable"] == 0
        finally:
            await client.close()

    try:
        run(scenario())
    finally:
        if node.process.poll() is not None:
            nodes.restart("c")


def test_frozen_peer_times_out_and_its_connection_is_dropped(nodes):
    node = nodes["c"]
    address = node.endpoint

    async def scenario():
        client = new_client(timeout=1.0)
        try:
            assert (await client.get("c", address, "lean", "on-c.bin")).data == b"held by c"
            node.pause()  # SIGSTOP: the socket stays open, nothing answers
            try:
                with pytest.raises(PeerUnreachable) as info:
                    await client.get("c", address, "lean", "on-c.bin")
                assert info.value.reason == "timed out"
                # A new connection (the kernel accepts it); the peer failed, so it is waited for only
                # limited_timeout (relay.py), not the whole timeout again.
                with pytest.raises(PeerUnreachable) as info:
                    await client.head("c", address, "lean", "on-c.bin")
                assert info.value.reason == "timed out (within 0.2s: it failed before, so it is not waited for)"
            finally:
                node.resume()
            state = client.health.snapshot()["c"]
            assert not state["healthy"] and state["last_error"].startswith("timed out (within"), state
            assert client.calls["c", "get", "unreachable"] == 1 and client.calls["c", "head", "unreachable"] == 1
            assert client.lean.idle_count(address) == 0 and client.lean.stats["retried"] == 0
            # Resumed: answered on a fresh connection (the timed-out ones were closed, not reused).
            connected = client.lean.stats["connected"]
            assert (await client.get("c", address, "lean", "on-c.bin")).data == b"held by c"
            assert client.lean.stats["connected"] == connected + 1
            assert client.health.snapshot()["c"]["healthy"]
        finally:
            await client.close()

    try:
        run(scenario())
    finally:
        node.resume()


# Tiny servers that answer badly ----------------------------------------------------------------------


INFO = json.dumps({"key": "k", "size": 5, "etag": "e", "last_modified": 1.0, "meta": {}, "checksums": {}})


def answer(body: bytes = b"hello", *, extra: str = "", length: int | None = None) -> bytes:
    head = (f"HTTP/1.1 200 OK\r\nx-cluster-info: {INFO}\r\nx-cluster-span: 0-{len(body)}\r\n"
            f"content-length: {len(body) if length is None else length}\r\n{extra}\r\n")
    return head.encode() + body


class TinyServer:
    """Answers requests in order with ``answers``: (bytes to send, close after) or None (close without
    answering). Counts connections and requests."""

    def __init__(self, answers: list):
        self.answers = list(answers)
        self.connections = 0
        self.requests: list[bytes] = []
        self.server = None

    async def __aenter__(self) -> Self:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader, writer) -> None:
        self.connections += 1
        try:
            for _ in range(100):
                self.requests.append(await reader.readuntil(b"\r\n\r\n"))
                step = self.answers.pop(0) if self.answers else None
                if step is None:
                    break
                data, close = step
                writer.write(data)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def talk(answers: list, calls):
    """Run ``calls(client, address)`` against a TinyServer; return (server, client)."""

    async def scenario():
        async with TinyServer(answers) as server:
            client = new_client(timeout=2.0)
            try:
                await calls(client, server.address)
            finally:
                await client.close()
            return server, client

    return run(scenario())


def test_keep_alive_reuse_and_connection_close():
    async def calls(client, address):
        for _ in range(3):
            assert (await client.get("t", address, "b", "k")).data == b"hello"

    server, client = talk([(answer(), False), (answer(extra="connection: close\r\n"), False), (answer(), False)],
                          calls)
    # The second answer said "close": the third request needed a new connection.
    assert server.connections == 2 and client.lean.stats["reused"] == 1
    first = server.requests[0].decode("latin-1")
    assert first.startswith("GET /_cluster/v1/objects/b/k HTTP/1.1\r\n")
    assert "x-cluster-auth: " in first and "x-cluster-node: lean-test\r\n" in first and "host: 127.0.0.1:" in first


def test_malformed_answer_is_an_unreachable_peer_and_the_connection_is_dropped():
    async def calls(client, address):
        with pytest.raises(PeerUnreachable) as info:
            await client.get("t", address, "b", "k")
        assert "malformed" in info.value.reason
        assert client.lean.idle_count(address) == 0 and client.lean.open_count() == 0
        assert client.calls["t", "get", "unreachable"] == 1 and not client.health.snapshot()["t"]["healthy"]
        assert (await client.get("t", address, "b", "k")).data == b"hello"

    server, _ = talk([(b"HTTX/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", False), (answer(), False)], calls)
    assert server.connections == 2


def test_answer_cut_off_mid_body_is_a_clean_error_and_the_connection_is_dropped():
    async def calls(client, address):
        with pytest.raises(errors.ServiceUnavailable) as info:
            await client.get("t", address, "b", "k")
        assert "failed while sending" in info.value.message
        state = client.health.snapshot()["t"]
        assert not state["healthy"] and state["last_error"].startswith("body: closed the connection"), state
        assert client.lean.open_count() == 0
        assert (await client.get("t", address, "b", "k")).data == b"hello"

    server, client = talk([(answer(length=100), True), (answer(), False)], calls)
    assert server.connections == 2 and client.lean.stats["retried"] == 0


def test_span_that_does_not_match_the_body_is_malformed():
    async def calls(client, address):
        with pytest.raises(errors.ServiceUnavailable) as info:
            await client.get("t", address, "b", "k")
        assert "malformed" in info.value.message

    bad = answer().replace(b"x-cluster-span: 0-5", b"x-cluster-span: 0-9")
    talk([(bad, False)], calls)


def test_bytes_after_a_complete_answer_keep_the_answer_but_not_the_connection():
    async def calls(client, address):
        assert (await client.get("t", address, "b", "k")).data == b"hello"
        assert (await client.get("t", address, "b", "k")).data == b"hello"

    server, client = talk([(answer() + b"HTTP/1.1 200 OK\r\n", False), (answer(), False)], calls)
    assert server.connections == 2 and client.lean.stats["reused"] == 0


def test_head_answer_without_body_despite_its_length_then_reuse():
    # A HEAD answer carries the length of the GET's body but no body (the peer's error answers do).
    missing = (b"HTTP/1.1 404 Not Found\r\nx-cluster-error: NoSuchKey\r\ncontent-length: 30\r\n\r\n")

    async def calls(client, address):
        with pytest.raises(errors.NoSuchKey):
            await client.head("t", address, "b", "k")
        assert client.lean.idle_count(address) == 1
        assert (await client.get("t", address, "b", "k")).data == b"hello"

    server, client = talk([(missing, False), (answer(), False)], calls)
    assert server.connections == 1 and client.calls["t", "head", "missing"] == 1


def test_pooled_connection_closed_by_the_peer_as_the_request_arrives_is_retried_once():
    async def calls(client, address):
        assert (await client.get("t", address, "b", "k")).data == b"hello"
        # The server reads the second request and closes without answering (its keep-alive timeout
        # fired just then): the client sends it once more on a new connection.
        assert (await client.get("t", address, "b", "k")).data == b"hello"
        assert client.lean.stats["retried"] == 1 and client.health.snapshot()["t"]["healthy"]

    server, _ = talk([(answer(), False), None, (answer(), False)], calls)
    assert server.connections == 2 and len(server.requests) == 3


def test_fresh_connection_closed_without_answer_is_not_retried():
    async def calls(client, address):
        with pytest.raises(PeerUnreachable) as info:
            await client.get("t", address, "b", "k")
        assert info.value.reason == "closed the connection"
        assert client.health.snapshot()["t"]["last_error"].startswith("disconnected")

    server, client = talk([None, (answer(), False)], calls)
    assert server.connections == 1 and client.lean.stats["retried"] == 0


def test_silent_server_times_out():
    async def calls(client, address):
        client.lean.timeout = 0.5
        with pytest.raises(PeerUnreachable) as info:
            await client.get("t", address, "b", "k")
        assert info.value.reason == "timed out"
        assert client.lean.open_count() == 0

    async def scenario():
        # A server that accepts and reads, but never answers until the client gives up.
        gave_up = asyncio.Event()

        async def handle(reader, writer):
            try:
                await reader.read(65536)
                await reader.read(65536)  # returns at the client's close
            finally:
                gave_up.set()
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        client = new_client()
        try:
            await calls(client, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
            await asyncio.wait_for(gave_up.wait(), 10)  # the client closed its side
        finally:
            await client.close()
            server.close()
            await server.wait_closed()

    run(scenario())


def test_refused_connection_is_unreachable():
    from gateway.testing.server import free_port

    async def scenario():
        client = new_client()
        try:
            with pytest.raises(PeerUnreachable) as info:
                await client.head("t", f"http://127.0.0.1:{free_port()}", "b", "k")
            assert info.value.reason != "timed out"
            assert client.calls["t", "head", "unreachable"] == 1
        finally:
            await client.close()

    run(scenario())


def test_connect_that_gets_no_answer_times_out():
    import socket

    async def scenario():
        # A listener whose accept queue is full: the kernel drops further SYNs, so connecting hangs.
        listener = socket.socket()
        fillers = []
        client = new_client(timeout=0.5)
        try:
            listener.bind(("127.0.0.1", 0))
            listener.listen(0)
            port = listener.getsockname()[1]
            for _ in range(3):
                filler = socket.socket()
                filler.setblocking(False)
                fillers.append(filler)
                try:
                    filler.connect(("127.0.0.1", port))
                except BlockingIOError:
                    pass
            with pytest.raises(PeerUnreachable) as info:
                await client.get("t", f"http://127.0.0.1:{port}", "b", "k")
            assert info.value.reason == "timed out"
            assert client.lean.stats["connected"] == 0 and client.calls["t", "get", "unreachable"] == 1
            assert client.health.snapshot()["t"]["last_error"] == "timed out"
        finally:
            await client.close()
            for filler in fillers:
                filler.close()
            listener.close()

    run(scenario())


def test_a_request_in_flight_that_is_cancelled_closes_its_connection():
    async def calls(client, address):
        slow = asyncio.ensure_future(client.get("t", address, "b", "k"))
        for _ in range(200):  # until the request is on its connection
            if client.lean.open_count():
                break
            await asyncio.sleep(0.01)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        assert client.lean.open_count() == 0 and client.lean.idle_count() == 0
        assert (await client.get("t", address, "b", "k")).data == b"hello"

    async def scenario():
        gate = asyncio.Event()
        connections = []

        async def handle(reader, writer):
            connections.append(writer)
            try:
                await reader.readuntil(b"\r\n\r\n")
                if len(connections) == 1:
                    await asyncio.wait_for(gate.wait(), 30)  # the first request is never answered in time
                writer.write(answer())
                await writer.drain()
                await reader.read(1)
            except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        client = new_client()
        try:
            await calls(client, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        finally:
            gate.set()
            await client.close()
            server.close()
            await server.wait_closed()
        assert len(connections) == 2

    run(scenario())


def test_a_cancel_that_comes_after_the_answer_leaves_the_pooled_connection_to_the_next_request():
    # The answer completes and its connection returns to the pool; before the waiting caller resumes,
    # it is cancelled and another request (started eagerly, outside any task) takes that connection.
    # The cancelled caller must not close the connection under the new request.
    async def calls(client, address):
        first = asyncio.ensure_future(client.get("t", address, "b", "k"))
        second = {}
        release = client.lean._release

        def release_then_race(connection):
            release(connection)
            client.lean._release = release
            first.cancel()
            second["started"] = start_eagerly(client.get("t", address, "b", "k"))

        client.lean._release = release_then_race
        with pytest.raises(asyncio.CancelledError):
            await first
        started = second["started"]
        assert isinstance(started, Suspended)
        assert (await started).data == b"hello"
        assert client.lean.stats["connected"] == 1 and client.lean.idle_count(address) == 1

    server, _ = talk([(answer(), False), (answer(), False)], calls)
    assert server.connections == 1 and len(server.requests) == 2
