"""Membership mistakes an operator makes (docs/cluster.md, "Start a cluster"), with real gateway processes:
a node id given twice, a frozen node, the registry."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from .conftest import ClusterNodes, wait_for


def test_a_node_started_with_the_id_of_a_running_node_is_refused_and_the_running_one_keeps_its_record(tmp_path):
    """Two nodes given one GATEWAY_NODE_ID (a copied unit file): the second one used to register silently,
    moving the first one's record to its own address, so that every peer asked it for the first one's
    objects and answered 404 for them once it had reloaded the registry."""
    nodes = ClusterNodes(tmp_path, f"sqlite:///{tmp_path}/registry.db")
    duplicate = nodes.new_node("dup", "redundant", {"GATEWAY_NODE_ID": "r1"}, None)
    try:
        nodes.add("p1", "primary")
        nodes.add("r1", "redundant")
        nodes.wait_known(2)
        nodes["r1"].client().create_bucket(Bucket="ids")
        nodes["r1"].client().put_object(Bucket="ids", Key="on-r1", Body=b"kept by r1")
        with pytest.raises(RuntimeError) as info:
            duplicate.start()
        assert f"node id r1 is in use by a running node at {nodes['r1'].endpoint}" in str(info.value)
        rows = {row["node_id"]: row for row in nodes.status()}
        assert rows["r1"]["address"] == nodes["r1"].endpoint
        assert nodes["p1"].client().get_object(Bucket="ids", Key="on-r1")["Body"].read() == b"kept by r1"
        # A node restarted at another address (its old one is gone) still takes its record over.
        nodes["r1"].kill()
        moved = nodes.new_node("r1-moved", "redundant", {"GATEWAY_NODE_ID": "r1"}, None)
        nodes.nodes["r1-moved"] = moved
        moved.start()
        assert {row["node_id"]: row for row in nodes.status()}["r1"]["address"] == moved.endpoint
    finally:
        duplicate.stop()
        nodes.stop()


def cluster_cli(nodes: ClusterNodes, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", "cluster", *args, "--registry", nodes.registry],
                          capture_output=True, text=True, timeout=60)


def test_leave_of_a_node_that_holds_objects_is_refused_with_the_reason_and_a_running_one_says_so_once(tmp_path):
    """`cluster leave` of a redundant node that holds objects answered "left the cluster" and nothing more:
    its objects were then 404 (not found) through every node, which a client takes as deleted. And a
    node removed while running warned on every heartbeat round, not once as docs/cluster.md says."""
    nodes = ClusterNodes(tmp_path, f"sqlite:///{tmp_path}/registry.db")
    try:
        nodes.add("p1", "primary")
        nodes.add_many([("r1", "redundant"), ("r2", "redundant")])
        nodes.wait_known(3)
        r2 = nodes["r2"].client()
        r2.create_bucket(Bucket="leaving")
        for i in range(3):
            r2.put_object(Bucket="leaving", Key=f"on-r2/{i}", Body=b"only on r2")
        nodes["r2"].stop()
        nodes.restart("r2")  # it counts its objects at start (and every few minutes)
        wait_for(lambda: {row["node_id"]: row for row in nodes.status()}["r2"]["objects"] == 3, 10,
                 "r2 publishing its object count")
        nodes["r2"].stop()
        refused = cluster_cli(nodes, "leave", "--node-id", "r2")
        assert refused.returncode == 1, refused.stdout
        assert "r2 holds 3 objects" in refused.stderr and "--force" in refused.stderr, refused.stderr
        assert "r2" in {row["node_id"] for row in nodes.status()}
        nodes.restart("r2")
        assert nodes["p1"].client().get_object(Bucket="leaving", Key="on-r2/0")["Body"].read() == b"only on r2"
        # r1 holds nothing: it may leave, running; it says so once, not on every heartbeat (0.5 s).
        left = cluster_cli(nodes, "leave", "--node-id", "r1")
        assert left.returncode == 0, left.stderr
        time.sleep(3)
        log = nodes["r1"].log()
        assert log.count("this node was removed from the registry") == 1
        assert "is not registered" not in log, log[-2000:]
        forced = cluster_cli(nodes, "leave", "--node-id", "r2", "--force")
        assert forced.returncode == 0, forced.stderr
    finally:
        nodes.stop()
