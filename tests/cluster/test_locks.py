"""ClusterLocks (gateway/cluster/locks.py) on a real SQLite registry: waiting, refreshing, failing clearly."""

from __future__ import annotations

import asyncio

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
