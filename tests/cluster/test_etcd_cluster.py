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
