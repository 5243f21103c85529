"""Retirements on their own (gateway/cluster/retirements.py): kept in a real SQLite registry, or in memory
when the registry cannot take them; applied by the node they are for."""

from __future__ import annotations

import asyncio

from gateway.backend import ObjectInfo
from gateway.cluster import retirements as retirements_module
from gateway.cluster.registry import RegistryError, Retirement
from gateway.cluster.registry_sqlite import SqliteRegistry
from gateway.cluster.relay import PeerUnreachable
from gateway.cluster.retirements import Retirements

from .conftest import NodesOnly


def version(key: str, modified: float) -> ObjectInfo:
    return ObjectInfo(key=key, size=1, etag=f'"{modified}"', last_modified=modified)


async def waiting_for_r2(tmp_path, count: int, bucket=lambda i: "b") -> Retirements:
    """``count`` retirements recorded by r1 for r2 (keys k0, k1, ...) in a SQLite registry; r2's side."""
    url = f"sqlite:///{tmp_path}/registry.db"
    writer = Retirements(SqliteRegistry(url), "r1")
    for i in range(count):
        await writer.add("r2", bucket(i), f"k{i}", version(f"k{i}", 1.0))
    return Retirements(SqliteRegistry(url), "r2")


class FlakySqlite(SqliteRegistry):
    """The SQLite registry, with a switch that makes every call fail as an unreachable registry does."""

    down = False

    async def add_retirement(self, node_id, item, limit):
        if self.down:
            raise RegistryError("sqlite registry: disk I/O error")
        return await super().add_retirement(node_id, item, limit)


def test_recorded_in_the_registry_and_applied_by_the_node_it_is_for(tmp_path):
    async def run():
        url = f"sqlite:///{tmp_path}/registry.db"
        writer, target = Retirements(SqliteRegistry(url), "r1"), Retirements(SqliteRegistry(url), "r2")
        await writer.add("r2", "b", "k1", version("k1", 10.0))
        await writer.add("r2", "b", "k2", version("k2", 20.0))
        assert writer.pending() == {"r2": 2}
        applied = []

        async def drop_older(item: Retirement) -> None:
            applied.append((item.key, item.last_modified))

        assert await target.apply_own(drop_older) == 2
        assert sorted(applied) == [("k1", 10.0), ("k2", 20.0)]
        assert await target.apply_own(drop_older) == 0  # each is applied once
        await writer.refresh_counts(["r2"])
        assert writer.pending() == {}

    asyncio.run(run())


def test_a_failing_drop_keeps_the_retirement_for_the_next_round(tmp_path):
    async def run():
        url = f"sqlite:///{tmp_path}/registry.db"
        await Retirements(SqliteRegistry(url), "r1").add("r2", "b", "k", version("k", 1.0))
        target = Retirements(SqliteRegistry(url), "r2")

        async def broken(item):
            raise OSError("EIO")

        assert await target.apply_own(broken, everything=True) == 0  # logged, kept, and no endless loop
        seen = []

        async def works(item):
            seen.append(item.key)

        assert await target.apply_own(works) == 1 and seen == ["k"]

    asyncio.run(run())


def test_storage_that_does_not_answer_stops_the_round_with_one_line_and_keeps_everything(tmp_path, caplog):
    """A node whose store has not started (services/pending.py) or whose NAS is down: every drop fails
    alike. It used to log one warning per retirement, up to 1,000 per heartbeat round."""
    from gateway import errors

    async def run():
        target = await waiting_for_r2(tmp_path, 5)
        tried = []

        async def store_down(item):
            tried.append(item.key)
            raise errors.BackendUnavailable("backend 'nas' (smb): SMB server 10.0.0.5:445 is not answering")

        with caplog.at_level("WARNING", logger="gateway.cluster"):
            assert await target.apply_own(store_down, everything=True) == 0
            assert await target.apply_own(store_down) == 0  # the next round: not said again within a minute
        assert len(tried) == 2, tried  # one try per round, not one per retirement
        lines = [r.getMessage() for r in caplog.records if "could not drop" in r.getMessage()]
        assert len(lines) == 1 and "its storage does not answer" in lines[0] and "10.0.0.5" in lines[0], lines
        seen = []

        async def works(item):
            seen.append(item.key)

        assert await target.apply_own(works) == 5 and len(seen) == 5  # none was lost

    asyncio.run(run())


def test_a_store_that_has_not_started_holds_back_only_its_own_retirements(tmp_path):
    """A node with two backends, one of them not started (services/pending.py): the other's older
    copies are still dropped, at start-up and on every round, so it never serves an outdated one."""
    from gateway.services.pending import PendingBackend
    from gateway_plugins.memory import MemoryBackend

    async def run():
        target = await waiting_for_r2(tmp_path, 4, lambda i: "on-nas" if i % 2 else "local")
        pending = PendingBackend(MemoryBackend("nas"), "backend 'nas' (smb): not answering")
        applied = []

        async def drop_older(item):
            if item.bucket == "on-nas":
                await pending.head(item.bucket, item.key)
            applied.append(item.key)

        assert await target.apply_own(drop_older, everything=True) == 2
        assert sorted(applied) == ["k0", "k2"]

        async def nas_started(item):
            applied.append(item.key)

        assert await target.apply_own(nas_started) == 2  # kept until the store answered
        assert sorted(applied) == ["k0", "k1", "k2", "k3"]

    asyncio.run(run())


def test_start_up_applies_everything_in_rounds(tmp_path, monkeypatch):
    monkeypatch.setattr(retirements_module, "PER_ROUND", 3)

    async def run():
        target = await waiting_for_r2(tmp_path, 8)
        seen = []

        async def drop_older(item):
            seen.append(item.key)

        assert await target.apply_own(drop_older) == 3  # a heartbeat round: one batch
        assert await target.apply_own(drop_older, everything=True) == 5
        assert sorted(seen) == [f"k{i}" for i in range(8)]

    asyncio.run(run())


def test_registry_down_keeps_it_in_memory_until_the_registry_takes_it(tmp_path):
    async def run():
        registry = FlakySqlite(f"sqlite:///{tmp_path}/registry.db")
        writer = Retirements(registry, "r1")
        registry.down = True
        await writer.add("r2", "b", "k", version("k", 5.0))
        assert writer.pending() == {"r2": 1}
        sent = []

        async def send(peer, item):
            sent.append(peer)

        await writer.send_remembered({"r2": "http://r2"}, lambda p: False, send)  # both still out of reach
        assert writer.pending() == {"r2": 1} and sent == []
        registry.down = False
        await writer.send_remembered({"r2": "http://r2"}, lambda p: False, send)
        assert sent == [] and writer._memory["r2"] == {}
        assert [r.key for r in await registry.retirements("r2", 10)] == ["k"]

    asyncio.run(run())


def test_without_registry_support_the_writer_sends_it_when_the_peer_answers():
    async def run():
        writer = Retirements(NodesOnly("nodes-only://"), "r1")
        await writer.add("r2", "b", "k", version("k", 5.0))
        await writer.add("r3", "b", "k", version("k", 5.0))
        assert writer.pending() == {"r2": 1, "r3": 1}
        sent = []

        async def send(peer, item):
            if peer == "r3":
                raise PeerUnreachable(peer, "refused")
            sent.append((peer, item.key, item.last_modified))

        await writer.send_remembered({"r2": "a", "r3": "b"}, lambda p: True, send)
        assert sent == [("r2", "k", 5.0)]
        assert writer.pending() == {"r3": 1}  # r3 did not answer: kept for the next round
        await writer.send_remembered({"r2": "a"}, lambda p: True, send)  # r3 left: kept, in case it rejoins
        assert writer.pending() == {"r3": 1} and len(sent) == 1

        async def send_to_anyone(peer, item):
            sent.append((peer, item.key, item.last_modified))

        await writer.send_remembered({"r2": "a", "r3": "b"}, lambda p: True, send_to_anyone)  # it rejoined
        assert writer.pending() == {} and sent[-1] == ("r3", "k", 5.0)
        assert await writer.apply_own(send) == 0  # nothing to read for this node either

    asyncio.run(run())


def test_after_the_registry_failed_the_next_ones_do_not_wait_for_it_a_while(tmp_path, monkeypatch):
    """With the registry down, every write or delete that has a node to tell waited REGISTRY_WAIT for
    it; after one failure the next ones go to memory at once for REGISTRY_RETRY seconds."""
    from gateway.testing.clock import ManualClock

    monkeypatch.setattr(retirements_module, "REGISTRY_WAIT", 0.2)

    class Hanging(SqliteRegistry):
        calls = 0
        hang = True

        async def add_retirement(self, node_id, item, limit):
            self.calls += 1
            if self.hang:
                await asyncio.sleep(60)
            return await super().add_retirement(node_id, item, limit)

    async def run():
        clock = ManualClock()
        registry = Hanging(f"sqlite:///{tmp_path}/registry.db")
        writer = Retirements(registry, "r1", clock=clock)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await writer.add("r2", "b", "k1", version("k1", 5.0)) is False  # waited, then memory
        assert loop.time() - started >= 0.2 and registry.calls == 1
        started = loop.time()
        assert await writer.add("r2", "b", "k2", version("k2", 5.0)) is False
        assert loop.time() - started < 0.1 and registry.calls == 1  # not asked again so soon
        assert writer.pending() == {"r2": 2}
        registry.hang = False
        clock.now += retirements_module.REGISTRY_RETRY
        assert await writer.add("r2", "b", "k3", version("k3", 5.0)) is True and registry.calls == 2

    asyncio.run(run())
