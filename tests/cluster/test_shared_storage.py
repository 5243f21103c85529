"""Shared storage mode: the storing nodes use one directory through the sharedfs backend (as on NFS/EFS/SMB)."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from .conftest import ClusterNodes

NODES = ("p1", "r1", "x1")


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("cluster-shared")
    nodes = ClusterNodes(base, f"sqlite:///{base}/registry.db")
    (base / "shared").mkdir()
    config = f'default_backend = "shared"\n[backends.shared]\ntype = "sharedfs"\nroot = "{base / "shared"}"\n'
    try:
        nodes.add_many([("p1", "primary")], config=config)
        nodes.add_many([("r1", "redundant"), ("x1", "proxy")], config=config)
        nodes.wait_known(3)
    except BaseException:
        nodes.stop()
        raise
    yield nodes
    nodes.stop()


def test_shared_storage_cluster_reads_lists_and_deletes_consistently(shared_cluster):
    s3 = {name: shared_cluster[name].client() for name in NODES}
    s3["p1"].create_bucket(Bucket="shared")
    for i, writer in enumerate(NODES * 3):
        s3[writer].put_object(Bucket="shared", Key=f"obj/{i:02d}", Body=f"{i}".encode())
    expected = [f"obj/{i:02d}" for i in range(9)]
    for name in NODES:
        for i, key in enumerate(expected):
            assert s3[name].get_object(Bucket="shared", Key=key)["Body"].read() == f"{i}".encode()
        # Every storing node lists the same files: the merged listing must not repeat them.
        keys = [o["Key"] for o in s3[name].list_objects_v2(Bucket="shared")["Contents"]]
        assert keys == expected, name
    s3["x1"].delete_object(Bucket="shared", Key="obj/00")
    for name in NODES:
        with pytest.raises(ClientError) as info:
            s3[name].head_object(Bucket="shared", Key="obj/00")
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
