"""Membership mistakes an operator makes (docs/cluster.md, "Start a cluster"), with real gateway processes:
a node id given twice, a frozen node, the registry."""

from __future__ import annotations

import pytest

from .conftest import ClusterNodes


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
