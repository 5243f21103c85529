"""A node with another cluster secret is refused by its peers, and that shows as 503, never as data or 404."""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError

from .conftest import ClusterNodes


def test_node_with_a_wrong_secret_cannot_read_or_be_read(tmp_path):
    nodes = ClusterNodes(tmp_path, f"sqlite:///{tmp_path}/registry.db")
    try:
        # A node with another secret refuses to start while a running node refuses its signature
        # (test_membership_probe5.py); it still gets in when it starts while no other node runs.
        nodes.add("bad", "redundant", extra_env={"GATEWAY_CLUSTER_SECRET": "another-cluster-secret-0123456789"})
        nodes["bad"].pause()  # silent: r1 has nobody to check its secret with, and starts
        try:
            time.sleep(2)  # bad's heartbeat is no longer fresh (3 intervals of 0.5 s)
            nodes.add("r1", "redundant")
        finally:
            nodes["bad"].resume()
        nodes.wait_known(2)
        good, bad = nodes["r1"].client(), nodes["bad"].client()
        good.create_bucket(Bucket="guarded")
        bad.create_bucket(Bucket="guarded")
        good.put_object(Bucket="guarded", Key="private", Body=b"only for the cluster")
        with pytest.raises(ClientError) as info:
            bad.get_object(Bucket="guarded", Key="private")
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        with pytest.raises(ClientError) as info:
            good.get_object(Bucket="guarded", Key="not-anywhere")
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        view = nodes.admin("bad")["peers"]["r1"]
        assert not view["healthy"] and "GATEWAY_CLUSTER_SECRET" in view["last_error"]
        assert "refused a peer request" in nodes["r1"].log()
    finally:
        nodes.stop()
