"""Failover votes (gateway/cluster/election.py) on real registries: SQLite and a 3-member etcd.

Heartbeat ages come from the registry's records; "the primary died" is its
lease released and its last heartbeat moved into the past, so no test sleeps.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.cluster.election import HANDOVER, LEASE, Election, voters
from gateway.cluster.registry import NodeRecord, open_registry
from gateway.cluster.registry_etcd import LOCK_PREFIX, _under

LEASE_SECONDS = 15.0


@pytest.fixture(params=["sqlite", "etcd"])
def registry_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/registry.db"
    etcd = request.getfixturevalue("etcd")
    # One etcd for the module: each test clears what the previous one left.
    registry = open_registry(etcd.url)

    async def clear():
        for node in await registry.nodes():
            await registry.remove(node.node_id)
        await registry._call("/v3/kv/deleterange", _under(LOCK_PREFIX))  # leases and handovers left behind
        await registry.close()

    asyncio.run(clear())
    return etcd.url


class Cluster:
    """Registered nodes, each with its own registry connection and Election."""

    def __init__(self, url: str):
        self.url = url
        self.registries = {}
        self.elections = {}
        self.mono = 1000.0  # the voters' own clock for how long they saw the primary silent

    def wait_out(self) -> None:
        """The voters keep reading the same last heartbeat of the primary for a whole lease."""
        self.mono += LEASE_SECONDS

    async def add(self, node_id: str, role: str, interval: float = 5.0) -> None:
        registry = open_registry(self.url)
        self.registries[node_id] = registry
        self.elections[node_id] = Election(registry, node_id, LEASE_SECONDS, monotonic=lambda: self.mono)
        if role == "primary":
            role = await self.elections[node_id].start_role("primary")
        await registry.register(node_id, role, f"http://127.0.0.1:9/{node_id}")
        await registry.heartbeat(node_id, {"heartbeat_interval": interval})

    async def beat(self, node_id: str) -> None:
        await self.registries[node_id].heartbeat(node_id, {"heartbeat_interval": 5.0})

    async def die(self, node_id: str) -> None:
        """The node stops: its lease is gone and its last heartbeat is a minute old."""
        registry = self.registries[node_id]
        await registry.release_lock(LEASE, node_id)
        await registry.heartbeat(node_id, {"heartbeat_interval": 5.0})
        await _age(registry, node_id, 60)

    async def r1_takes_over(self) -> None:
        """p1 dies; voter r1 sees it silent, waits a whole lease, and becomes primary (r2 is up)."""
        await self.die("p1")
        assert await self.elections["r1"].round("redundant") == "redundant"
        self.wait_out()
        assert await self.elections["r1"].round("redundant") == "primary"

    async def start_again(self, node_id: str, role: str) -> str:
        """The role a fresh process of ``node_id`` started with ``--role role`` takes."""
        again = Election(open_registry(self.url), node_id, LEASE_SECONDS)
        try:
            return await again.start_role(role)
        finally:
            await again.registry.close()

    async def roles(self) -> dict[str, str]:
        registry = next(iter(self.registries.values()))
        return {n.node_id: n.role for n in await registry.nodes()}

    async def close(self) -> None:
        for registry in self.registries.values():
            await registry.close()


async def _age(registry, node_id: str, seconds: float) -> None:
    """Move a node's last heartbeat ``seconds`` into the past, in the registry itself."""
    if hasattr(registry, "path"):
        registry._run(lambda conn: conn.execute("UPDATE nodes SET last_seen = ? WHERE node_id = ?",
                                                (time.time() - seconds, node_id)))
        return
    import base64
    import json

    key = base64.b64encode(f"/cv-gateway/nodes/{node_id}".encode()).decode()
    kv = (await registry._call("/v3/kv/range", {"key": key}))["kvs"][0]
    record = json.loads(base64.b64decode(kv["value"]))
    record["last_seen"] = time.time() - seconds
    await registry._call("/v3/kv/put", {"key": key, "value": base64.b64encode(json.dumps(record).encode()).decode()})
    registry._records.pop(node_id, None)


def run(url, scenario):
    async def main():
        cluster = Cluster(url)
        try:
            await scenario(cluster)
        finally:
            await cluster.close()

    asyncio.run(main())


async def four_nodes(cluster: Cluster) -> None:
    await cluster.add("p1", "primary")
    for name in ("r1", "r2", "r3"):
        await cluster.add(name, "redundant")


def test_voters_are_the_first_two_redundant_nodes():
    nodes = [NodeRecord("p1", "primary", "a", 1), NodeRecord("r3", "redundant", "a", 4),
             NodeRecord("r1", "redundant", "a", 2), NodeRecord("x1", "proxy", "a", 5),
             NodeRecord("r2", "redundant", "a", 3)]
    assert voters(nodes, "p1") == ["r1", "r2"]
    assert voters(nodes[:3], "p1") == ["r1", "r3"]
    assert voters([nodes[0], nodes[2], nodes[3]], "p1") == []  # one redundant node: no failover


def test_nobody_takes_over_from_a_live_primary(registry_url):
    async def scenario(cluster):
        await four_nodes(cluster)
        for name in ("r1", "r2", "r3"):
            assert await cluster.elections[name].round("redundant") == "redundant"
        assert await cluster.elections["p1"].round("primary") == "primary"
        assert (await cluster.roles())["p1"] == "primary"

    run(registry_url, scenario)


def test_a_lapsed_lease_alone_is_not_a_dead_primary(registry_url):
    async def scenario(cluster):
        await four_nodes(cluster)
        await cluster.registries["p1"].release_lock(LEASE, "p1")  # a registry hiccup; p1 still beats
        assert await cluster.elections["r1"].round("redundant") == "redundant"
        assert await cluster.elections["p1"].round("primary") == "primary"  # takes its lease again

    run(registry_url, scenario)


def test_a_dead_primary_is_replaced_by_exactly_one_voter(registry_url):
    async def scenario(cluster):
        await four_nodes(cluster)
        await cluster.die("p1")
        for voter in ("r1", "r2"):  # they see the primary silent for the first time: they wait
            assert await cluster.elections[voter].round("redundant") == "redundant"
        cluster.wait_out()
        outcomes = await asyncio.gather(cluster.elections["r1"].round("redundant"),
                                        cluster.elections["r2"].round("redundant"))
        assert sorted(outcomes) == ["primary", "redundant"]
        winner = "r1" if outcomes[0] == "primary" else "r2"
        assert await cluster.registries["r1"].lock_holder(LEASE) == winner
        assert (await cluster.roles())["p1"] == "redundant"  # the dead primary is marked, its heartbeat untouched
        assert cluster.elections[winner].took_over_from == "p1"
        assert await cluster.elections["r3"].round("redundant") == "redundant"

    run(registry_url, scenario)


def test_a_registry_outage_does_not_count_as_the_primary_s_silence(registry_url):
    async def scenario(cluster):
        await four_nodes(cluster)
        await cluster.die("p1")  # its last heartbeat looks old: the registry was down for everyone
        assert await cluster.elections["r1"].round("redundant") == "redundant"
        cluster.wait_out()
        cluster.elections["r1"].registry_failed()  # r1's own rounds failed meanwhile
        assert await cluster.elections["r1"].round("redundant") == "redundant"  # starts watching afresh
        await cluster.beat("p1")  # the primary was alive all along
        await cluster.registries["p1"].acquire_lock(LEASE, "p1", LEASE_SECONDS)
        cluster.wait_out()
        assert await cluster.elections["r1"].round("redundant") == "redundant"
        assert (await cluster.roles())["p1"] == "primary"

    run(registry_url, scenario)


def test_no_failover_unless_both_voters_are_up(registry_url):
    async def scenario(cluster):
        await four_nodes(cluster)
        await cluster.die("p1")
        await cluster.die("r2")
        assert await cluster.elections["r1"].round("redundant") == "redundant"
        cluster.wait_out()
        assert await cluster.elections["r1"].round("redundant") == "redundant"
        assert await cluster.elections["r3"].round("redundant") == "redundant"  # r3 does not vote
        assert await cluster.registries["r1"].lock_holder(LEASE) is None
        assert (await cluster.roles())["p1"] == "primary"

    run(registry_url, scenario)


def test_no_failover_with_fewer_than_two_redundant_nodes(registry_url):
    async def scenario(cluster):
        await cluster.add("p1", "primary")
        await cluster.add("r1", "redundant")
        await cluster.die("p1")
        assert await cluster.elections["r1"].round("redundant") == "redundant"

    run(registry_url, scenario)


def test_the_old_primary_steps_down_when_it_returns(registry_url):
    async def scenario(cluster):
        await four_nodes(cluster)
        await cluster.r1_takes_over()
        # p1 only paused (or was cut off) and runs its next round ...
        assert await cluster.elections["p1"].round("primary") == "redundant"
        # ... or it restarts with --role primary: it joins as redundant.
        assert await cluster.start_again("p1", "primary") == "redundant"
        # The new primary keeps its lease.
        assert await cluster.elections["r1"].round("primary") == "primary"

    run(registry_url, scenario)


def test_a_restarted_primary_keeps_its_own_lease(registry_url):
    async def scenario(cluster):
        await four_nodes(cluster)
        # kill -9 and start again at once: the lease of the old process has not lapsed yet.
        again = Election(open_registry(cluster.url), "p1", LEASE_SECONDS)
        try:
            assert await again.start_role("primary") == "primary"
            assert await again.round("primary") == "primary"
        finally:
            await again.registry.close()
        assert await cluster.elections["r1"].round("redundant") == "redundant"

    run(registry_url, scenario)


def test_promote_hands_the_role_over_to_the_chosen_node(registry_url):
    async def scenario(cluster):
        await four_nodes(cluster)
        command = open_registry(cluster.url)  # what `gateway cluster promote r3` does first
        try:
            assert await command.acquire_lock(HANDOVER, "r3", 60)
            assert await cluster.elections["r3"].round("redundant") == "redundant"  # p1 still holds the lease
            assert await cluster.elections["p1"].round("primary") == "primary"  # gives the lease up
            for voter in ("r1", "r2"):  # a handover is not a failure: the voters stay out of it
                assert await cluster.elections[voter].round("redundant") == "redundant"
            assert await cluster.elections["r3"].round("redundant") == "primary"
            assert await command.lock_holder(LEASE) == "r3"
            await command.release_lock(HANDOVER, "r3")
            assert await cluster.elections["p1"].round("primary") == "redundant"  # r3 holds it: step down
            assert await cluster.elections["r3"].round("primary") == "primary"
        finally:
            await command.close()

    run(registry_url, scenario)


def test_a_handover_to_a_node_that_is_down_is_ignored(registry_url):
    async def scenario(cluster):
        await four_nodes(cluster)
        await cluster.die("r3")
        await cluster.registries["r1"].acquire_lock(HANDOVER, "r3", 60)
        assert await cluster.elections["p1"].round("primary") == "primary"
        assert await cluster.registries["r1"].lock_holder(LEASE) == "p1"

    run(registry_url, scenario)


def test_a_handover_that_never_completes_leaves_the_primary_in_place(registry_url):
    async def scenario(cluster):
        await four_nodes(cluster)
        command = open_registry(cluster.url)
        try:
            await command.acquire_lock(HANDOVER, "r3", 60)
            assert await cluster.elections["p1"].round("primary") == "primary"  # gave the lease up for r3
            assert await command.lock_holder(LEASE) is None
            assert await cluster.elections["r1"].round("redundant") == "redundant"
            assert await cluster.elections["p1"].round("primary") == "primary"  # still waiting for r3
            await command.release_lock(HANDOVER, "r3")  # r3 never came: the command gave up
        finally:
            await command.close()
        assert await cluster.elections["p1"].round("primary") == "primary"
        assert await cluster.registries["r1"].lock_holder(LEASE) == "p1"

    run(registry_url, scenario)


def test_a_primary_restarted_with_role_redundant_stays_primary(registry_url):
    async def scenario(cluster):
        await four_nodes(cluster)
        await cluster.r1_takes_over()
        # r1's unit still says --role redundant; restarted at once, its lease is still its own.
        assert await cluster.start_again("r1", "redundant") == "primary"
        assert await cluster.elections["r3"].start_role("redundant") == "redundant"

    run(registry_url, scenario)


def test_taking_the_lease_leaves_one_node_listed_primary(registry_url):
    async def scenario(cluster):
        await four_nodes(cluster)
        await cluster.r1_takes_over()
        await cluster.registries["r1"].register("r1", "primary", "http://127.0.0.1:9/r1")
        await cluster.die("r1")  # the new primary dies too; the old one comes back with --role primary
        assert await cluster.start_again("p1", "primary") == "primary"
        await cluster.registries["p1"].register("p1", "primary", "http://127.0.0.1:9/p1")
        roles = await cluster.roles()
        assert [n for n, r in roles.items() if r == "primary"] == ["p1"], roles

    run(registry_url, scenario)
