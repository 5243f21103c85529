"""Membership after the fifth probe (docs/cluster.md, "Registry and membership", "Failover"), with real
gateway processes: the registry file deleted under a running cluster, a node started with another
cluster secret, and how long a failover takes."""

from __future__ import annotations

import asyncio
import collections
import glob
import threading
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from gateway.cluster.election import LEASE, Election
from gateway.cluster.registry import open_registry

from .conftest import ClusterNodes, start_cluster, wait_for

BUCKET = "kept"


def _status_code(exc: ClientError) -> int:
    return exc.response["ResponseMetadata"]["HTTPStatusCode"]


def _delete_registry(nodes: ClusterNodes) -> None:
    for path in glob.glob(nodes.registry.split("://", 1)[1] + "*"):  # registry.db, -wal, -shm
        # A node's last connection closing removes -wal and -shm itself: gone between glob and here.
        Path(path).unlink(missing_ok=True)


def test_deleting_the_registry_under_a_running_cluster_gives_no_false_404_and_keeps_install_orders(tmp_path):
    """Probe 5, bug 4: deleting the SQLite registry file under a running cluster gave seconds of
    404 NoSuchKey for existing objects and LISTs missing keys, with every node up: a node reloaded
    an empty or partial node list (the others had not registered again yet) and had no peer left
    to ask. A node down at that moment was never listed again, so its objects read as 404 for good;
    and the nodes came back with new install orders, in the order they happened to register."""
    nodes = start_cluster(tmp_path, f"sqlite:///{tmp_path}/registry.db")
    try:
        s3 = {name: nodes[name].client() for name in ("p1", "r1", "r2", "x1")}
        s3["x1"].create_bucket(Bucket=BUCKET)
        keys = []
        for name in ("r1", "r2"):  # a redundant node stores what it is sent: each key lives on one node
            for i in range(5):
                key = f"on-{name}/{i}"
                s3[name].put_object(Bucket=BUCKET, Key=key, Body=name.encode())
                keys.append(key)
        orders = {row["node_id"]: row["install_order"] for row in nodes.status()}

        stop = threading.Event()
        outcomes: collections.Counter = collections.Counter()
        wrong: list = []

        def reads(via: str) -> None:
            client = nodes[via].client()  # boto3 clients are not shared between threads
            while not stop.is_set():
                for key in keys:
                    try:
                        client.head_object(Bucket=BUCKET, Key=key)
                        outcomes[via, 200] += 1
                    except ClientError as exc:
                        outcomes[via, _status_code(exc)] += 1
                        if _status_code(exc) == 404:
                            wrong.append((via, "HEAD", key))
                try:
                    listed = client.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0)
                    outcomes[via, "list"] += 1
                    if listed != len(keys):
                        wrong.append((via, "LIST", listed))
                except ClientError as exc:
                    outcomes[via, _status_code(exc)] += 1

        threads = [threading.Thread(target=reads, args=(via,)) for via in s3]
        for thread in threads:
            thread.start()
        try:
            time.sleep(1)
            _delete_registry(nodes)
            time.sleep(5)  # 10 heartbeats and two reloads of every node (NODE_ENV)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        assert not wrong, (wrong[:10], len(wrong), dict(outcomes))
        assert all(outcomes[via, "list"] > 3 for via in s3), dict(outcomes)
        assert {row["node_id"]: row["install_order"] for row in nodes.status()} == orders

        # A node that is down when the registry goes is put back by the others: its objects are a
        # 503 (it may hold them), not a 404, and it is found again when it restarts.
        nodes["r2"].kill()
        _delete_registry(nodes)
        wait_for(lambda: {row["node_id"] for row in nodes.status(registry_may_be_gone=True)} == set(orders), 10,
                 "the running nodes registering again")
        time.sleep(3)  # every node reloaded its node list (every 2 s)
        for via in ("p1", "r1", "x1"):
            with pytest.raises(ClientError) as info:
                s3[via].get_object(Bucket=BUCKET, Key="on-r2/0")
            assert _status_code(info.value) == 503, (via, info.value.response)
        rows = {row["node_id"]: row for row in nodes.status()}
        assert {n: r["install_order"] for n, r in rows.items()} == orders
        assert rows["r2"]["healthy"] is False
        nodes.restart("r2")
        for via in ("p1", "r1", "x1"):
            wait_for(lambda: s3[via].get_object(Bucket=BUCKET, Key="on-r2/0")["Body"].read() == b"r2", 10,
                     f"r2's object through {via}")
        for via in s3:
            with pytest.raises(ClientError) as missing:
                s3[via].head_object(Bucket=BUCKET, Key="never-written")
            assert _status_code(missing.value) == 404, via
    finally:
        nodes.stop()


def test_a_node_with_another_cluster_secret_refuses_to_start_and_does_not_join(tmp_path):
    """Probe 5, bug 5: a node started with a wrong GATEWAY_CLUSTER_SECRET registered and heartbeated.
    Every other node then counted it as a storing node that refuses them: a miss through any node
    was a 503 naming it instead of a 404, and `cluster status` showed the healthy nodes as slow."""
    nodes = ClusterNodes(tmp_path, f"sqlite:///{tmp_path}/registry.db")
    wrong = nodes.new_node("r3", "redundant", {"GATEWAY_CLUSTER_SECRET": "another-secret-0123456789abcdef"}, None)
    try:
        nodes.add("p1", "primary")
        nodes.add("r1", "redundant")
        nodes.wait_known(2)
        with pytest.raises(RuntimeError) as info:
            wrong.start()
        message = str(info.value)
        assert "gateway exited with 2" in message, message[-3000:]
        assert "the cluster secret differs from the one node" in message, message[-3000:]
        assert "GATEWAY_CLUSTER_SECRET" in message
        assert {row["node_id"] for row in nodes.status()} == {"p1", "r1"}
        for via in ("p1", "r1"):
            with pytest.raises(ClientError) as missing:
                nodes[via].client().head_object(Bucket="nowhere", Key="never")
            assert _status_code(missing.value) == 404, via
        # The same node with the cluster's secret joins.
        nodes.add("r3", "redundant")
        nodes.wait_known(3)
        # Alone (no running node to ask), a node starts with whatever secret it has, as before.
        alone = ClusterNodes(tmp_path / "alone", f"sqlite:///{tmp_path}/alone.db")
        try:
            alone.add("solo", "primary", {"GATEWAY_CLUSTER_SECRET": "another-secret-0123456789abcdef"})
        finally:
            alone.stop()
    finally:
        wrong.stop()
        nodes.stop()


LEASE_SECONDS = 15.0


def test_a_failover_takes_between_failover_after_and_twice_that_after_the_last_heartbeat(tmp_path):
    """Probe 5, bug 7: failover took about twice GATEWAY_FAILOVER_AFTER, where the docs said the primary
    may be silent that long. The docs now give the bound and say why it stays (the voters' watch starts
    once the lease lapsed, which keeps a registry that blocks from deposing a live primary); this pins it, on
    a real SQLite registry with the voters' own clock injected (no sleeping)."""
    url = f"sqlite:///{tmp_path}/registry.db"

    async def scenario():
        mono = [1000.0]
        registries = {name: open_registry(url) for name in ("p1", "r1", "r2")}
        elections = {name: Election(registries[name], name, LEASE_SECONDS, monotonic=lambda: mono[0])
                     for name in registries}
        try:
            assert await elections["p1"].start_role("primary") == "primary"
            for name in registries:
                await registries[name].register(name, "primary" if name == "p1" else "redundant", f"http://h/{name}")
                await registries[name].heartbeat(name, {"heartbeat_interval": 5.0})
            # p1 dies right after its last heartbeat: its lease runs for LEASE_SECONDS from there.
            # The voters beat every 5 s; while the lease is held they do not vote.
            for _ in range(3):
                mono[0] += 5.0
                for name in ("r1", "r2"):
                    await registries[name].heartbeat(name, {"heartbeat_interval": 5.0})
                assert await elections["r1"].round("redundant") == "redundant"
            # The lease lapses (moved into the past in the registry, as 15 s of wall time would).
            await registries["p1"].release_lock(LEASE, "p1")
            registries["p1"]._run(lambda conn: conn.execute("UPDATE nodes SET last_seen = ? WHERE node_id = 'p1'",
                                                            (time.time() - LEASE_SECONDS - 1,)))
            # The voter's watch starts now: no takeover at failover_after + one heartbeat ...
            assert await elections["r1"].round("redundant") == "redundant"
            mono[0] += LEASE_SECONDS - 5.0
            for name in ("r1", "r2"):
                await registries[name].heartbeat(name, {"heartbeat_interval": 5.0})
            assert await elections["r1"].round("redundant") == "redundant"
            # ... but once it watched failover_after after the lapse: at most twice failover_after
            # plus two heartbeats after the primary's last heartbeat.
            mono[0] += 5.0
            for name in ("r1", "r2"):
                await registries[name].heartbeat(name, {"heartbeat_interval": 5.0})
            assert await elections["r1"].round("redundant") == "primary"
        finally:
            for registry in registries.values():
                await registry.close()

    asyncio.run(scenario())
