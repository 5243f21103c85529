"""Both registries through the same interface: SQLite (a file) and etcd (a real 3-member cluster)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.cluster.registry import RegistryError, Retirement, open_registry, registry_classes


def test_registries_are_plugins():
    classes = registry_classes()
    assert {"sqlite", "etcd"} <= set(classes)
    with pytest.raises(ValueError, match="no registry plugin for nosuch://"):
        open_registry("nosuch://x")


async def exercise(registry) -> None:
    identity = await registry.identity()
    assert identity and identity == await registry.identity()  # kept for as long as the registry lives
    first = await registry.register("n1", "primary", "http://127.0.0.1:1")
    second = await registry.register("n2", "redundant", "http://127.0.0.1:2")
    assert first.install_order < second.install_order
    again = await registry.register("n1", "primary", "http://127.0.0.1:11")  # re-registering keeps the order
    assert again.install_order == first.install_order and again.address == "http://127.0.0.1:11"
    await registry.heartbeat("n2", {"objects": 5})
    nodes = await registry.nodes()
    assert [n.node_id for n in nodes] == ["n1", "n2"]
    assert nodes[1].info == {"objects": 5} and nodes[1].last_seen > 0
    assert await registry.remove("n2") and not await registry.remove("n2")
    with pytest.raises(RegistryError, match="not registered"):
        await registry.heartbeat("n2", {})
    assert [n.node_id for n in await registry.nodes()] == ["n1"]


async def exercise_retirements(registry) -> None:
    """Older copies a node must drop: one entry per key, the newest version kept, bounded per node."""
    v1, v2 = Retirement("b", "k/ü 1", 100.0, '"e1"'), Retirement("b", "k/ü 1", 200.0, '"e2"')
    assert await registry.add_retirement("n1", v1, limit=2)
    assert await registry.add_retirement("n1", v2, limit=2)
    assert await registry.add_retirement("n1", v1, limit=2)  # older than what is recorded: ignored
    assert await registry.add_retirement("n1", Retirement("b", "other", 5.0, '"x"'), limit=2)
    assert not await registry.add_retirement("n1", Retirement("b", "third", 5.0, '"x"'), limit=2)  # bound
    assert await registry.add_retirement("n1", Retirement("b", "k/ü 1", 300.0, '"e3"'), limit=2)  # known key
    assert await registry.add_retirement("n9", v1, limit=2)
    assert await registry.retirement_counts(["n1", "n9", "nobody"]) == {"n1": 2, "n9": 1, "nobody": 0}
    pending = {(r.bucket, r.key): r for r in await registry.retirements("n1", 10)}
    assert {k: (r.last_modified, r.etag) for k, r in pending.items()} == {
        ("b", "k/ü 1"): (300.0, '"e3"'), ("b", "other"): (5.0, '"x"')}
    assert len(await registry.retirements("n1", 1)) == 1
    # Applied, then dropped: a newer entry written between the read and the drop stays.
    read = pending["b", "k/ü 1"]
    assert await registry.add_retirement("n1", Retirement("b", "k/ü 1", 400.0, '"e4"'), limit=2)
    await registry.drop_retirement("n1", read)
    await registry.drop_retirement("n1", pending["b", "other"])
    left = await registry.retirements("n1", 10)
    assert [(r.key, r.last_modified) for r in left] == [("k/ü 1", 400.0)]
    await registry.drop_retirement("n1", left[0])
    assert await registry.retirements("n1", 10) == []
    # A node that leaves keeps its retirements: if it rejoins with its old data, it must still apply them.
    await registry.register("n9", "redundant", "http://127.0.0.1:9")
    assert await registry.remove("n9")
    assert await registry.retirement_counts(["n9"]) == {"n9": 1}
    await registry.drop_retirement("n9", (await registry.retirements("n9", 10))[0])


async def exercise_restore(registry, same_orders: bool) -> None:
    """A lost registry refilled from a node's last snapshot (Registry.restore, membership.py): the
    nodes come back with their roles, addresses and published info, in their install order (on
    SQLite the same numbers; etcd hands out new ones, the order among them kept), and a node that
    registered again meanwhile keeps its own record."""
    names = ["rs-a", "rs-b", "rs-c"]
    for name in names:
        await registry.register(name, "redundant", f"http://{name}")
        await registry.heartbeat(name, {"objects": len(name)})
    snapshot = [n for n in await registry.nodes() if n.node_id in names]
    for name in names:
        assert await registry.remove(name)
    await registry.register("rs-b", "primary", "http://rs-b-again")  # back on its own first
    assert await registry.restore(snapshot) == ["rs-a", "rs-c"]
    assert await registry.restore(snapshot) == []  # all there now: nothing added twice
    back = {n.node_id: n for n in await registry.nodes() if n.node_id in names}
    assert back["rs-b"].role == "primary" and back["rs-b"].address == "http://rs-b-again"
    for before in snapshot:
        if before.node_id != "rs-b":
            after = back[before.node_id]
            assert (after.role, after.address, after.info, after.last_seen) == (
                before.role, before.address, before.info, before.last_seen)
    assert back["rs-a"].install_order < back["rs-c"].install_order
    if same_orders:
        assert [back[n].install_order for n in ("rs-a", "rs-c")] == [
            next(b.install_order for b in snapshot if b.node_id == n) for n in ("rs-a", "rs-c")]
    for name in names:
        await registry.remove(name)


async def exercise_locks(registry) -> None:
    """One holder at a time; refresh and release only by the holder."""
    assert await registry.acquire_lock("b/k ü", "n1/a", ttl=30)
    assert not await registry.acquire_lock("b/k ü", "n2/b", ttl=30)
    assert await registry.acquire_lock("b/other", "n2/b", ttl=30)  # another name is another lock
    assert await registry.refresh_lock("b/k ü", "n1/a", ttl=30)
    assert not await registry.refresh_lock("b/k ü", "n2/b", ttl=30)
    await registry.release_lock("b/k ü", "n2/b")  # not the holder: nothing happens
    assert not await registry.acquire_lock("b/k ü", "n2/b", ttl=30)
    await registry.release_lock("b/k ü", "n1/a")
    assert await registry.acquire_lock("b/k ü", "n2/b", ttl=30)
    await registry.release_lock("b/k ü", "n2/b")
    await registry.release_lock("b/other", "n2/b")


def test_sqlite_registry(tmp_path):
    async def run():
        registry = open_registry(f"sqlite:///{tmp_path}/reg/registry.db")
        try:
            await exercise(registry)
            await exercise_retirements(registry)
            await exercise_locks(registry)
            await exercise_restore(registry, same_orders=True)
        finally:
            await registry.close()

    asyncio.run(run())


def _register_at(url: str, node: str, start: float) -> str | None:
    import time

    while time.time() < start:  # all processes begin together
        pass
    registry = open_registry(url)
    try:
        asyncio.run(registry.register(node, "redundant", f"http://{node}"))
    except RegistryError as exc:
        return str(exc)
    return None


def test_nodes_starting_together_on_a_fresh_sqlite_registry_all_join(tmp_path):
    """SQLite answers "database is locked" at once, past its busy timeout, while another process turns
    a new file into WAL mode: one start in about 15 of three nodes started together failed so (CI)."""
    import multiprocessing
    import time

    failures = []
    with multiprocessing.get_context("fork").Pool(3) as pool:
        for attempt in range(100):
            url = f"sqlite:///{tmp_path}/{attempt}/registry.db"
            start = time.time() + 0.05
            failures += [f for f in pool.starmap(_register_at, [(url, f"n{k}", start) for k in range(3)]) if f]
    assert failures == []


def test_sqlite_reads_do_not_wait_for_a_writer(tmp_path):
    """A node frozen (SIGSTOP) in the middle of its heartbeat's write holds SQLite's write lock. Reads
    of the node list (every node's reload, the ops tools) must not wait for it: every connection ran
    the schema script, which writes, and waited the busy timeout, then failed "database is locked"
    (a restore said it could not read the registry). In WAL mode a read does not wait."""
    import sqlite3

    url = f"sqlite:///{tmp_path}/registry.db"
    running = open_registry(url)  # a running node's: it keeps its registry object
    asyncio.run(running.register("p1", "primary", "http://127.0.0.1:9001"))

    def reads_while_a_writer_holds_the_lock(registry):
        writer = sqlite3.connect(tmp_path / "registry.db", isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE nodes SET last_seen = last_seen")  # holds the write lock, as a frozen heartbeat
        try:
            return [n.node_id for n in asyncio.run(registry.nodes())]
        finally:
            writer.execute("ROLLBACK")
            writer.close()

    assert reads_while_a_writer_holds_the_lock(open_registry(url)) == ["p1"]  # a fresh object: a fresh connection
    # The schema comes back on a file recreated under the nodes, in WAL mode too: the running node
    # made it again in rollback-journal mode, where every read waited for a writer (10 s, then failed).
    (tmp_path / "registry.db").unlink()
    for leftover in tmp_path.glob("registry.db-*"):
        leftover.unlink()
    assert asyncio.run(running.nodes()) == []
    assert asyncio.run(running.identity())
    header = (tmp_path / "registry.db").read_bytes()[18:20]
    assert header == b"\x02\x02", header  # WAL (rollback journal: 01 01)
    asyncio.run(running.register("p1", "primary", "http://127.0.0.1:9001"))
    assert reads_while_a_writer_holds_the_lock(running) == ["p1"]


def test_sqlite_lock_of_a_holder_that_stopped_refreshing_expires(tmp_path):
    async def run():
        registry = open_registry(f"sqlite:///{tmp_path}/registry.db")
        assert await registry.acquire_lock("b/k", "dead/1", ttl=0.2)
        assert not await registry.acquire_lock("b/k", "n2/b", ttl=30)
        await asyncio.sleep(0.3)
        assert await registry.acquire_lock("b/k", "n2/b", ttl=30)
        assert not await registry.refresh_lock("b/k", "dead/1", ttl=30)

    asyncio.run(run())


def test_etcd_lock_of_a_holder_that_stopped_refreshing_expires(etcd):
    """etcd deletes the lock with its lease; the holder's own refresh then says it is gone."""
    async def run():
        dead, alive = open_registry(etcd.url), open_registry(etcd.url)
        try:
            assert await dead.acquire_lock("b/expiring", "dead/1", ttl=1)
            assert not await alive.acquire_lock("b/expiring", "n2/b", ttl=30)
            deadline = asyncio.get_running_loop().time() + 15  # etcd may round short leases up
            while not await alive.acquire_lock("b/expiring", "n2/b", ttl=30):
                assert asyncio.get_running_loop().time() < deadline, "the lock never expired"
                await asyncio.sleep(0.2)
            assert not await dead.refresh_lock("b/expiring", "dead/1", ttl=30)
            await alive.release_lock("b/expiring", "n2/b")
        finally:
            await dead.close()
            await alive.close()

    asyncio.run(run())


def test_etcd_registry(etcd):
    async def run():
        registry = open_registry(etcd.url)
        try:
            await exercise(registry)
            await exercise_retirements(registry)
            await exercise_locks(registry)
            await exercise_restore(registry, same_orders=False)
            await registry.remove("n1")
        finally:
            await registry.close()

    asyncio.run(run())


def test_etcd_registry_uses_the_next_member_when_one_is_down(etcd):
    async def run():
        dead = "etcd://127.0.0.1:1," + etcd.url.split("://", 1)[1]
        registry = open_registry(dead)
        try:
            await registry.register("failover", "redundant", "http://127.0.0.1:3")
            assert "failover" in [n.node_id for n in await registry.nodes()]
            assert await registry.remove("failover")
        finally:
            await registry.close()

    asyncio.run(run())


def test_a_frozen_etcd_member_is_waited_for_once_per_call_and_then_asked_last(etcd):
    """A member that takes connections and never answers (stopped: SIGSTOP, a hung host), listed first.
    Calls that began before the first one gave up on it each wait for it once; one of them, walking the
    list the first call had reordered meanwhile, met it again and waited twice (three members, one
    frozen: a heartbeat 15 s late, the failover of a live primary). Calls begun after go to it last."""
    import socket
    import time

    from gateway.cluster import registry_etcd

    frozen = socket.socket()
    frozen.bind(("127.0.0.1", 0))
    frozen.listen(16)  # connections are taken (the backlog), never answered

    async def timed(registry, delay):
        await asyncio.sleep(delay)
        started = time.monotonic()
        await registry.nodes()
        return time.monotonic() - started

    async def run():
        registry = open_registry(f"etcd://127.0.0.1:{frozen.getsockname()[1]}," + etcd.url.split("://", 1)[1])
        try:
            # The second call is still waiting for the frozen member when the first one has been answered.
            waits = await asyncio.gather(timed(registry, 0), timed(registry, 2))
            once = registry_etcd.TIMEOUT.total
            assert all(once <= wait < 1.5 * once for wait in waits), waits  # the frozen member once each
            assert registry.endpoints[-1].endswith(f":{frozen.getsockname()[1]}")
            assert await timed(registry, 0) < once  # asked last now: answered before it would time out
        finally:
            await registry.close()

    try:
        asyncio.run(run())
    finally:
        frozen.close()


def test_unreachable_etcd_is_a_clear_error():
    async def run():
        registry = open_registry("etcd://127.0.0.1:1")
        try:
            with pytest.raises(RegistryError, match="no endpoint answered"):
                await registry.nodes()
        finally:
            await registry.close()

    asyncio.run(run())


@pytest.mark.parametrize("status, body", [(200, b"null"), (200, b"[]"), (200, b'"text"'), (200, b'{"kvs": "x"}'),
                                          (200, b'{"kvs": [7]}'), (500, b"null"), (404, b"<html>no</html>")])
def test_a_service_that_is_not_etcd_is_a_clear_error(status, body):
    """Something else answers on the etcd port (a proxy, another service): RegistryError naming it,
    never an AttributeError from deep in the parsing (found by probing the CLI)."""
    import http.server
    import threading

    class NotEtcd(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(status)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotEtcd)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    async def run():
        registry = open_registry(f"etcd://127.0.0.1:{server.server_address[1]}")
        try:
            with pytest.raises(RegistryError, match="etcd registry"):
                await registry.nodes()
        finally:
            await registry.close()

    try:
        asyncio.run(run())
    finally:
        server.shutdown()
        server.server_close()


def test_etcds_is_the_https_form_of_etcd():
    registry = open_registry("etcds://10.0.0.1:2379,10.0.0.2:2379")
    assert registry.endpoints == ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]


def test_a_node_rereads_the_list_soon_while_a_listed_node_has_not_published_its_info(tmp_path):
    """Nodes started together: one that reads the registry between another's registration and that
    node's first heartbeat saw it without its info (shared storage or its own) and kept that view
    until its next reload, 60 s by default; a proxy then answered a DeleteBucket with a node down
    with 503 where the share covered that node (CI). A node with no published info is now re-read
    for at every heartbeat. Here: r9's info is blanked while it is frozen, p1 starts and reads that,
    then r9 runs again and publishes; p1, whose reload interval is 600 s, must see the info soon."""
    import sqlite3
    import time

    from .conftest import ClusterNodes, wait_for

    nodes = ClusterNodes(tmp_path, f"sqlite:///{tmp_path}/registry.db")
    slow_reload = {"GATEWAY_REGISTRY_RELOAD_INTERVAL": "600"}

    def p1_sees() -> dict[str, dict]:
        return {n["node_id"]: n["info"] for n in nodes.admin("p1")["nodes"]}

    try:
        nodes.add("p1", "primary", extra_env=slow_reload)
        nodes.add("r9", "redundant", extra_env=slow_reload)
        nodes["r9"].pause()
        with sqlite3.connect(tmp_path / "registry.db") as db:
            db.execute("UPDATE nodes SET info = '{}' WHERE node_id = 'r9'")
        nodes["p1"].stop()
        nodes["p1"].start()
        # p1's announcement to the frozen r9 fails (and makes p1 re-read the list, r9 still blank):
        # wait until p1 holds r9 as failed, so nothing but the heartbeat rounds reads the list after.
        wait_for(lambda: nodes.admin("p1")["peers"].get("r9", {}).get("failed", 0) > 0, 15, "p1's ping of r9 failing")
        time.sleep(1.5)  # the reload a failure asks for comes within a second
        view = p1_sees()
        assert view["r9"] == {}, view  # read before r9 published again
        nodes["r9"].resume()
        # Heartbeats every 0.5 s: a reload within a few (it took the 600 s reload interval).
        info = wait_for(lambda: p1_sees()["r9"], 10, "p1 seeing the info r9 published")
        assert info.get("shared_storage") is False, info
    finally:
        nodes.stop()


def test_a_sqlite_registry_url_naming_a_directory_says_so(tmp_path):
    """SQLite's own words were "unable to open database file", about a path that exists."""
    registry = open_registry(f"sqlite:///{tmp_path}")
    with pytest.raises(RegistryError, match=f"{tmp_path} is a directory, and the registry URL names a file in it, "
                                            f"e.g. sqlite://{tmp_path}/registry.db"):
        asyncio.run(registry.nodes())
