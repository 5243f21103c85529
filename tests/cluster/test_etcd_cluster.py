"""The same cluster on the etcd registry (a real 3-member etcd on loopback)."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from .conftest import start_cluster

NODES = ("p1", "r1", "r2", "x1")


@pytest.fixture(scope="module")
def etcd_cluster(etcd, tmp_path_factory):
    nodes = start_cluster(tmp_path_factory.mktemp("cluster-etcd"), etcd.url)
    yield nodes
    nodes.stop()


def test_relay_and_status_on_etcd(etcd_cluster):
    cluster = etcd_cluster
    s3 = {name: cluster[name].client() for name in NODES}
    s3["x1"].create_bucket(Bucket="etcd-relay")
    for writer in NODES:
        s3[writer].put_object(Bucket="etcd-relay", Key=f"k-{writer}", Body=writer.encode())
    for name in NODES:
        for writer in NODES:
            assert s3[name].get_object(Bucket="etcd-relay", Key=f"k-{writer}")["Body"].read() == writer.encode()
        keys = [o["Key"] for o in s3[name].list_objects_v2(Bucket="etcd-relay")["Contents"]]
        assert keys == sorted(f"k-{w}" for w in NODES), name
    s3["r1"].delete_object(Bucket="etcd-relay", Key="k-r2")
    with pytest.raises(ClientError) as info:
        s3["x1"].head_object(Bucket="etcd-relay", Key="k-r2")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    rows = {row["node_id"]: row for row in cluster.status()}
    assert [rows[n]["role"] for n in NODES] == ["primary", "redundant", "redundant", "proxy"]
    assert rows["p1"]["install_order"] < min(rows[n]["install_order"] for n in NODES[1:])


def test_killed_node_gives_503_on_etcd_too(etcd_cluster):
    cluster = etcd_cluster
    s3 = cluster["p1"].client()
    s3.create_bucket(Bucket="etcd-kill")
    cluster["r1"].client().put_object(Bucket="etcd-kill", Key="on-r1", Body=b"r1")
    cluster["r1"].kill()
    try:
        with pytest.raises(ClientError) as info:
            s3.get_object(Bucket="etcd-kill", Key="on-r1")
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    finally:
        cluster.restart("r1")
    assert cluster["x1"].client().get_object(Bucket="etcd-kill", Key="on-r1")["Body"].read() == b"r1"


def registry_up(node) -> float:
    import re
    import urllib.request

    with urllib.request.urlopen(node.endpoint + "/metrics", timeout=10) as response:
        return float(re.search(r"^gateway_cluster_registry_up (\S+)$", response.read().decode(), re.M).group(1))


def test_nodes_keep_serving_while_the_registry_is_down(etcd_cluster, etcd):
    """The registry is read every reload interval, never on a request: with every etcd member frozen
    (SIGSTOP: connections hang, the worst case) objects are still read, written and relayed through
    every node, and once etcd is back the heartbeats and `cluster status` carry on."""
    import signal
    import time

    cluster = etcd_cluster
    s3 = {name: cluster[name].client() for name in NODES}
    s3["p1"].create_bucket(Bucket="etcd-down")
    s3["r2"].put_object(Bucket="etcd-down", Key="on-r2", Body=b"kept by r2")
    for member in etcd.processes:
        member.send_signal(signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 6  # heartbeats (0.5 s) and reloads (2 s) fail meanwhile
        rounds = 0
        while time.monotonic() < deadline and rounds < 100:
            for name in NODES:
                assert s3[name].get_object(Bucket="etcd-down", Key="on-r2")["Body"].read() == b"kept by r2", name
                s3[name].put_object(Bucket="etcd-down", Key=f"while-down/{name}", Body=name.encode())
            rounds += 1
            time.sleep(0.2)
        # Seen where an operator looks: /metrics, and one warning (not one every heartbeat). A call to a
        # frozen etcd fails at its own timeout.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and registry_up(cluster["p1"]) != 0:
            time.sleep(0.2)
        assert registry_up(cluster["p1"]) == 0
        time.sleep(2)  # heartbeats go on failing meanwhile
        said = [line for line in cluster["p1"].log().splitlines() if "cluster registry etcd://" in line]
        assert len(said) == 1 and "cannot be reached" in said[0], said
    finally:
        for member in etcd.processes:
            member.send_signal(signal.SIGCONT)
    etcd.wait_healthy()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and registry_up(cluster["p1"]) != 1:
        time.sleep(0.2)
    assert registry_up(cluster["p1"]) == 1
    assert "answers again, after" in cluster["p1"].log()
    for name in NODES:
        keys = [o["Key"] for o in s3[name].list_objects_v2(Bucket="etcd-down")["Contents"]]
        assert keys == ["on-r2"] + sorted(f"while-down/{n}" for n in NODES), name
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rows = {row["node_id"]: row for row in cluster.status()}
        if set(NODES) <= set(rows) and all(rows[n]["healthy"] for n in NODES):
            break
        time.sleep(0.5)
    assert set(NODES) <= set(rows) and all(rows[n]["healthy"] for n in NODES), rows


def test_retirement_in_etcd_survives_a_restart_of_the_writer(etcd_cluster):
    """As tests/cluster/test_overwrite.py, on etcd: r2 misses an overwrite, the writer is killed,
    and r2 drops its old copy when it starts again."""
    cluster = etcd_cluster
    cluster["p1"].client().create_bucket(Bucket="etcd-retire")

    def path(node):
        return cluster[node].data_dir / "etcd-retire" / "k%obj"

    cluster["r2"].client().put_object(Bucket="etcd-retire", Key="k", Body=b"old")
    cluster["r2"].kill()
    try:
        cluster["r1"].client().put_object(Bucket="etcd-retire", Key="k", Body=b"new")
        cluster["r1"].kill()
        cluster.restart("r1")
    finally:
        cluster.restart("r2")
    assert path("r1").exists() and not path("r2").exists()
    for name in NODES:
        assert cluster[name].client().get_object(Bucket="etcd-retire", Key="k")["Body"].read() == b"new", name
