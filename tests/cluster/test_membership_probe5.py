"""Membership after the fifth probe (docs/cluster.md, "Registry and membership", "Failover"), with real
gateway processes: the registry file deleted under a running cluster, a node started with another
cluster secret, and how long a failover takes."""

from __future__ import annotations

import collections
import glob
import os
import threading
import time

import pytest
from botocore.exceptions import ClientError


from .conftest import ClusterNodes, start_cluster, wait_for

BUCKET = "kept"


def _status_code(exc: ClientError) -> int:
    return exc.response["ResponseMetadata"]["HTTPStatusCode"]


def _delete_registry(nodes: ClusterNodes) -> None:
    for path in glob.glob(nodes.registry.split("://", 1)[1] + "*"):  # registry.db, -wal, -shm
        os.remove(path)


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
        wait_for(lambda: {row["node_id"] for row in nodes.status()} == set(orders), 10,
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
