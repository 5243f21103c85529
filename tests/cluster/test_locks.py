"""ClusterLocks (gateway/cluster/locks.py) on a real SQLite registry: waiting, refreshing, failing clearly."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from gateway import errors
from gateway.cluster.locks import ClusterLocks
from gateway.cluster.registry import RegistryError
from gateway.cluster.registry_sqlite import SqliteRegistry

from .conftest import NodesOnly


class Unreachable(SqliteRegistry):
    async def acquire_lock(self, name, owner, ttl):
        raise RegistryError("etcd registry etcd://10.0.0.9:2379: no endpoint answered")


def test_a_second_holder_waits_for_the_first(tmp_path):
    async def run():
        url = f"sqlite:///{tmp_path}/registry.db"
        a, b = ClusterLocks(SqliteRegistry(url), "a"), ClusterLocks(SqliteRegistry(url), "b")
        order = []

        async def writer(locks, name, hold):
            async with locks.hold("bucket/key"):
                order.append(f"{name} in")
                await asyncio.sleep(hold)
                order.append(f"{name} out")

        first = asyncio.create_task(writer(a, "a", 0.3))
        await asyncio.sleep(0.05)
        await writer(b, "b", 0)
        await first
        assert order == ["a in", "a out", "b in", "b out"]

    asyncio.run(run())


def test_a_long_write_keeps_its_lock_past_the_ttl(tmp_path):
    async def run():
        url = f"sqlite:///{tmp_path}/registry.db"
        a = ClusterLocks(SqliteRegistry(url), "a", ttl=0.3)
        b = ClusterLocks(SqliteRegistry(url), "b", wait=0.2)
        async with a.hold("bucket/key"):
            await asyncio.sleep(1.0)  # three times the ttl: refreshed meanwhile
            with pytest.raises(errors.SlowDown) as info:
                async with b.hold("bucket/key"):
                    raise AssertionError("two holders at once")
            assert info.value.status == 503 and info.value.headers["Retry-After"] == "1"
        async with b.hold("bucket/key"):  # released: free at once
            pass

    asyncio.run(run())


def test_an_unreachable_registry_refuses_the_conditional_write(tmp_path):
    async def run():
        locks = ClusterLocks(Unreachable(f"sqlite:///{tmp_path}/registry.db"), "a")
        with pytest.raises(errors.ServiceUnavailable, match="registry"):
            async with locks.hold("bucket/key"):
                raise AssertionError("written without the lock")

    asyncio.run(run())


def test_without_lock_support_writes_go_ahead(caplog):
    async def run():
        locks = ClusterLocks(NodesOnly("nodes-only://"), "a")
        entered = 0
        for _ in range(2):
            async with locks.hold("bucket/key"):
                entered += 1
        return entered

    assert asyncio.run(run()) == 2
    assert caplog.text.count("keeps no locks") == 1  # said once


def test_a_write_that_lost_its_lock_is_refused_before_it_commits(tmp_path):
    """The holder was stopped past the lock's ttl and another writer took the key: the first one's
    confirm (run by the payload at its end, before the backend commits) refuses its write."""
    async def run():
        url = f"sqlite:///{tmp_path}/registry.db"
        registry = SqliteRegistry(url)
        locks = ClusterLocks(registry, "a", ttl=30)
        async with locks.hold("bucket/key") as confirm:
            await confirm()  # still ours
            with sqlite3.connect(tmp_path / "registry.db") as db:  # expired, as after a long SIGSTOP
                db.execute("DELETE FROM locks")
            assert await SqliteRegistry(url).acquire_lock("bucket/key", "b/other", ttl=30)
            with pytest.raises(errors.ServiceUnavailable, match="lost its lock"):
                await confirm()

    asyncio.run(run())


@pytest.mark.parametrize("kind", ["memory", "local"])
def test_a_failing_check_at_the_end_leaves_nothing_stored(tmp_path, kind):
    from gateway.backend import ObjectMeta
    from gateway.payload import Payload
    from gateway_plugins.local import LocalBackend
    from gateway_plugins.memory import MemoryBackend

    async def refuse():
        raise errors.ServiceUnavailable("lost its lock")

    async def run():
        backend = MemoryBackend() if kind == "memory" else LocalBackend(root=str(tmp_path / "store"))
        await backend.start()
        await backend.create_bucket("b")
        await backend.put("b", "k", Payload.from_bytes(b"old"), ObjectMeta())
        payload = Payload.from_bytes(b"new")
        payload.check_at_end(refuse)
        with pytest.raises(errors.ServiceUnavailable):
            await backend.put("b", "k", payload, ObjectMeta())
        reader = await backend.get("b", "k")
        assert b"".join([chunk async for chunk in reader.chunks()]) == b"old"

    asyncio.run(run())


def test_conditional_writes_queued_on_one_node_each_wait_at_most_the_bound(monkeypatch):
    """Three conditional PUTs of a key whose holder never finishes: each gets its 503 after WAIT
    seconds, not one after another (the third used to wait three times as long)."""
    from gateway.cluster import locks as locks_module
    from gateway.services.objects import ObjectService
    from gateway_plugins.memory import MemoryBackend

    monkeypatch.setattr(locks_module, "WAIT", 0.3)

    async def run():
        service = ObjectService({"memory": MemoryBackend()}, {}, "memory")
        holding = asyncio.Event()

        async def holder():
            async with service.conditional_write("b", "k"):
                holding.set()
                await asyncio.sleep(30)

        async def waiter():
            started = asyncio.get_running_loop().time()
            with pytest.raises(errors.SlowDown):
                async with service.conditional_write("b", "k"):
                    raise AssertionError("two holders")
            return asyncio.get_running_loop().time() - started

        task = asyncio.create_task(holder())
        await holding.wait()
        waits = await asyncio.gather(waiter(), waiter(), waiter())
        task.cancel()
        assert max(waits) < 0.3 * 2, waits
        async with service.conditional_write("b", "k"):  # free again
            pass

    asyncio.run(run())


class Hanging(SqliteRegistry):
    """A registry whose lock calls hang (an SQLite file another process keeps locked)."""

    async def acquire_lock(self, name, owner, ttl):
        await asyncio.sleep(60)


def test_a_hanging_registry_is_a_503_within_the_wait(tmp_path):
    async def run():
        locks = ClusterLocks(Hanging(f"sqlite:///{tmp_path}/registry.db"), "a", wait=0.3)
        started = asyncio.get_running_loop().time()
        with pytest.raises(errors.ServiceUnavailable, match="registry"):
            async with locks.hold("bucket/key"):
                raise AssertionError("written without the lock")
        assert asyncio.get_running_loop().time() - started < 2

    asyncio.run(run())
