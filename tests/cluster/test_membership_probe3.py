"""Membership mistakes an operator makes (docs/cluster.md, "Start a cluster"), with real gateway processes:
a node id given twice, a frozen node, the registry."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from botocore.exceptions import ClientError

from gateway.testing.server import GatewayProcess

from .conftest import NODE_ENV, ClusterNodes, start_cluster, wait_for


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
        assert "r1 is running" in left.stderr and "stop" in left.stderr, left.stderr
        time.sleep(3)
        log = nodes["r1"].log()
        assert log.count("this node was removed from the registry") == 1
        assert "is not registered" not in log, log[-2000:]
        # Outside the cluster it takes no writes: a PUT was 200, and 404 through every other node.
        with pytest.raises(ClientError) as info:
            nodes["r1"].client().put_object(Bucket="leaving", Key="after-leave", Body=b"lost")
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert "removed from the cluster" in info.value.response["Error"]["Message"]
        assert nodes["r1"].client().get_object(Bucket="leaving", Key="on-r2/1")["Body"].read() == b"only on r2"
        with pytest.raises(urllib.error.HTTPError) as ready:
            urllib.request.urlopen(nodes["r1"].endpoint + "/readyz", timeout=5)
        assert ready.value.code == 503 and b"removed from the cluster" in ready.value.read()
        forced = cluster_cli(nodes, "leave", "--node-id", "r2", "--force")
        assert forced.returncode == 0, forced.stderr
    finally:
        nodes.stop()


def test_writes_do_not_wait_for_a_frozen_node_once_it_failed_and_it_drops_its_old_copy_when_it_runs(tmp_path):
    """A node frozen (SIGSTOP; a host gone without refusing connections behaves alike) was de-prioritized
    for reads after its first timeout, but every PUT through any node still waited the peer timeout (3 s
    here) for its overwrite retirement, and a PUT through the proxy twice that (its bucket check asked
    every node and waited for all), for as long as the node stayed frozen."""
    nodes = start_cluster(tmp_path, f"sqlite:///{tmp_path}/registry.db")
    s3 = {name: nodes[name].client() for name in ("p1", "r1", "r2", "x1")}
    try:
        s3["x1"].create_bucket(Bucket="frozen")
        s3["r2"].put_object(Bucket="frozen", Key="k", Body=b"old, on r2")
        nodes["r2"].pause()
        try:
            for name in ("p1", "r1", "x1"):  # each node learns once that r2 does not answer: 503
                with pytest.raises(ClientError) as info:
                    s3[name].get_object(Bucket="frozen", Key="nowhere")
                assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
            time.sleep(5.5)  # the proxy's memory of the bucket runs out: its next PUT checks it again
            for name in ("p1", "r1", "x1", "x1"):
                started = time.monotonic()
                s3[name].put_object(Bucket="frozen", Key="k", Body=f"new through {name}".encode())
                assert time.monotonic() - started < 1.5, name
        finally:
            nodes["r2"].resume(settle=False)
        # r2 finds the retirement request in its socket when it runs again, and reads the registry's at once;
        # until it has, its reads are 503s (Cluster.reads_held), never the old copy.
        def r2_reads_the_new_version() -> bool:
            try:
                body = s3["r2"].get_object(Bucket="frozen", Key="k")["Body"].read()
            except ClientError as exc:
                assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 503, exc.response
                return False
            assert body != b"old, on r2", "r2 served the copy the overwrites replaced"
            return body == b"new through x1"

        wait_for(r2_reads_the_new_version, 5, "r2 dropping its old copy")
        for name in s3:
            assert s3[name].get_object(Bucket="frozen", Key="k")["Body"].read() == b"new through x1", name
    finally:
        nodes.stop()


def test_a_node_restarted_at_another_address_keeps_its_id_and_leaves_no_ghost_record(tmp_path):
    """A node without GATEWAY_NODE_ID is named after its address (host:port). Restarted at another
    address (a new IP, another --advertise) it came back under a new id, and its old record stayed,
    down for good: a miss through any node answered 503 naming that ghost, never 404 again. Its
    storage now remembers the id it first ran under (.gateway/node-id)."""
    nodes = ClusterNodes(tmp_path, f"sqlite:///{tmp_path}/registry.db")
    env = {**NODE_ENV}  # no GATEWAY_NODE_ID: the default id
    data = tmp_path / "moving" / "cv-storage"
    args = ["--role", "redundant", "--registry", nodes.registry, "--insecure-peers"]
    first = GatewayProcess(data, args=args, env=env)
    moved = GatewayProcess(data, args=args, env=env)
    assert first.port != moved.port
    try:
        nodes.add("p1", "primary")
        first.start()
        nodes.wait_known(2)
        first_id = f"127.0.0.1:{first.port}"
        assert (data / ".gateway" / "node-id").read_text().strip() == first_id
        first.client().create_bucket(Bucket="moving")
        first.client().put_object(Bucket="moving", Key="kept", Body=b"on the moving node")
        first.stop()
        moved.start()
        wait_for(lambda: {row["node_id"]: row["address"] for row in nodes.status()}.get(first_id) == moved.endpoint,
                 10, "the record following the node to its new address")
        assert {row["node_id"] for row in nodes.status()} == {"p1", first_id}
        primary = nodes["p1"].client()

        def found() -> bool:
            try:
                return primary.get_object(Bucket="moving", Key="kept")["Body"].read() == b"on the moving node"
            except ClientError as exc:  # p1 may ask the old address once before the announcement reaches it
                if exc.response["Error"]["Code"] != "ServiceUnavailable":
                    raise
                return False

        wait_for(found, 10, "the object found at the node's new address")
        with pytest.raises(ClientError) as missing:
            primary.get_object(Bucket="moving", Key="never-written")
        assert missing.value.response["Error"]["Code"] == "NoSuchKey"
    finally:
        moved.stop()
        first.stop()
        nodes.stop()


def test_a_node_restarted_at_another_address_is_found_there_at_once_not_at_the_next_reload(tmp_path):
    """A node that comes back at another address tells the others where it is when it announces itself.
    They knew its id already, so the announcement changed nothing: a node re-read the registry only at
    its next reload or after a relay to the old address had failed, and answered that read 503 (CI)."""
    nodes = ClusterNodes(tmp_path, f"sqlite:///{tmp_path}/registry.db")
    # p1 reloads and pings nothing for the length of the test: only the announcement can tell it.
    quiet = {"GATEWAY_HEARTBEAT_INTERVAL": "30", "GATEWAY_FAILOVER_AFTER": "60",
             "GATEWAY_REGISTRY_RELOAD_INTERVAL": "600"}

    def p1_sees_r1_at() -> str | None:
        return {n["node_id"]: n["address"] for n in nodes.admin("p1")["nodes"]}.get("r1")

    try:
        nodes.add("p1", "primary", extra_env=quiet)
        nodes.add("r1", "redundant")
        wait_for(lambda: p1_sees_r1_at() == nodes["r1"].endpoint, 10, "p1 knowing r1")
        nodes["r1"].kill()
        moved = nodes.new_node("r1-moved", "redundant", {"GATEWAY_NODE_ID": "r1"}, None)
        nodes.nodes["r1-moved"] = moved
        moved.start()
        assert moved.endpoint != nodes["r1"].endpoint
        wait_for(lambda: p1_sees_r1_at() == moved.endpoint, 5, "p1 knowing r1 at its new address")
    finally:
        nodes.stop()


def test_a_node_back_under_a_new_id_at_a_registered_address_is_refused_with_the_id_to_use(tmp_path):
    """A node whose id its local storage remembered, switched to shared storage (which keeps no node
    id), came back under its default id host:port: a second record at the same address, the old one
    down for good (every miss a 503, and a failover vote held by a ghost)."""
    nodes = ClusterNodes(tmp_path, f"sqlite:///{tmp_path}/registry.db")
    again = nodes.new_node("again", "redundant", {"GATEWAY_NODE_ID": ""}, None)  # the default id, fresh storage
    try:
        nodes.add("p1", "primary")
        nodes.add("r1", "redundant")
        nodes.wait_known(2)
        nodes["r1"].stop()
        again.port = nodes["r1"].port
        with pytest.raises(RuntimeError) as info:
            again.start()
        message = str(info.value)
        assert f"node r1 is registered at {nodes['r1'].endpoint}" in message, message
        assert "GATEWAY_NODE_ID=r1" in message, message
        assert {row["node_id"] for row in nodes.status()} == {"p1", "r1"}
        again.env["GATEWAY_NODE_ID"] = "r1"  # as the message says
        again.start()
        assert {row["node_id"] for row in nodes.status()} == {"p1", "r1"}
    finally:
        again.stop()
        nodes.stop()
