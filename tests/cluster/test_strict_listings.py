"""strict_listings: while a storing node cannot be asked, LIST, ListBuckets and ListMultipartUploads
are 503s that name it, not 200s that leave its entries out, so a one-way sync from the cluster with
deletion deletes nothing (docs/cluster.md, "Limits"). Real gateway processes (1 primary + 2 redundant
+ 1 proxy on SQLite), a node stopped with kill -9; boto3 and rclone as clients."""

from __future__ import annotations

import subprocess

import pytest
from botocore.exceptions import ClientError

from gateway.testing.rclone import run_rclone

from .conftest import NODES, ClusterNodes, clients, error_of, repair_command, wait_for


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("strict-listings")
    nodes = ClusterNodes(base, f"sqlite:///{base}/registry.db")
    strict = {"GATEWAY_STRICT_LISTINGS": "true"}
    try:
        nodes.add("p1", "primary", strict)
        nodes.add_many([("r1", "redundant"), ("r2", "redundant"), ("x1", "proxy")], strict)
        nodes.wait_known(4)
    except BaseException:
        nodes.stop()
        raise
    yield nodes
    nodes.stop()


def keys(s3, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def rclone_sync(node, source: str, target: str) -> subprocess.CompletedProcess:
    """``rclone sync`` from this node's ``source`` (bucket/prefix) to a local ``target``: a mirror
    with deletion, as a backup job runs it. One try, no low-level retries: the 503 is the answer."""
    return run_rclone(node, "sync", f"GW:{source}", target, check=False)


def test_listings_with_a_storing_node_down_are_503s_naming_it_and_whole_again_once_it_is_back(cluster, tmp_path):
    s3 = clients(cluster)
    s3["p1"].create_bucket(Bucket="strict")
    s3["r1"].put_object(Bucket="strict", Key="cam/on-r1.jpg", Body=b"kept by r1")
    s3["r2"].put_object(Bucket="strict", Key="cam/on-r2.jpg", Body=b"kept by r2")
    upload = s3["r2"].create_multipart_upload(Bucket="strict", Key="cam/big.bin")["UploadId"]
    for name in NODES:
        assert keys(s3[name], "strict") == ["cam/on-r1.jpg", "cam/on-r2.jpg"], name
    mirror = tmp_path / "mirror"
    assert rclone_sync(cluster["x1"], "strict/cam", str(mirror)).returncode == 0
    assert sorted(p.name for p in mirror.iterdir()) == ["on-r1.jpg", "on-r2.jpg"]

    cluster["r2"].kill()  # kill -9
    try:
        for name in ("p1", "r1", "x1"):
            client = s3[name]
            for call in (lambda client=client: client.list_objects_v2(Bucket="strict"),
                         lambda client=client: client.list_objects(Bucket="strict", Prefix="cam/"),
                         lambda client=client: client.list_buckets(),
                         lambda client=client: client.list_multipart_uploads(Bucket="strict")):
                error = error_of(call)
                assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 503, name
                assert error.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "5", name
                message = error.response["Error"]["Message"]
                assert "cannot be listed whole now" in message and "(r2)" in message, (name, message)
            # Reads and writes of other objects keep working.
            assert client.get_object(Bucket="strict", Key="cam/on-r1.jpg")["Body"].read() == b"kept by r1"
            client.put_object(Bucket="strict", Key=f"while-down/{name}", Body=b"w")
        # The backup job fails and deletes nothing from its mirror (without the setting, it deleted on-r2.jpg).
        synced = rclone_sync(cluster["x1"], "strict/cam", str(mirror))
        assert synced.returncode != 0 and "cannot be listed whole now" in synced.stderr, synced.stderr
        assert sorted(p.name for p in mirror.iterdir()) == ["on-r1.jpg", "on-r2.jpg"]
        assert (mirror / "on-r2.jpg").read_bytes() == b"kept by r2"
        # `cluster repair` walks what it can and names the node it could not check (exit 1, not a 503).
        repaired = repair_command(cluster, "p1", "--bucket", "strict")
        assert repaired.returncode == 1 and "not checked on r2 (could not be reached)" in repaired.stderr, \
            repaired.stderr
    finally:
        cluster.restart("r2")

    def whole() -> bool:
        try:
            return all(keys(s3[name], "strict")[:2] == ["cam/on-r1.jpg", "cam/on-r2.jpg"] for name in NODES)
        except ClientError:  # a 503 while a node has not seen r2 answer again yet
            return False

    wait_for(whole, 15, "every node to list r2's objects again")
    for name in NODES:
        assert keys(s3[name], "strict") == ["cam/on-r1.jpg", "cam/on-r2.jpg", "while-down/p1", "while-down/r1",
                                            "while-down/x1"], name
        assert "strict" in [b["Name"] for b in s3[name].list_buckets()["Buckets"]], name
        uploads = s3[name].list_multipart_uploads(Bucket="strict").get("Uploads", [])
        assert [u["UploadId"] for u in uploads] == [upload], name
    assert rclone_sync(cluster["x1"], "strict/cam", str(mirror)).returncode == 0


def test_on_shared_storage_a_node_down_does_not_fail_listings_the_share_answers(tmp_path_factory):
    """The share is one tree: a node on it that is down holds nothing the others did not list."""
    base = tmp_path_factory.mktemp("strict-shared")
    (base / "shared").mkdir()
    config = f'default_backend = "shared"\n[backends.shared]\ntype = "sharedfs"\nroot = "{base / "shared"}"\n'
    nodes = ClusterNodes(base, f"sqlite:///{base}/registry.db")
    strict = {"GATEWAY_STRICT_LISTINGS": "true"}
    try:
        nodes.add_many([("p1", "primary")], strict, config)
        nodes.add_many([("r1", "redundant"), ("x1", "proxy")], strict, config)
        nodes.wait_known(3)
        s3 = clients(nodes, ("p1", "r1", "x1"))
        s3["p1"].create_bucket(Bucket="strict-shared")
        s3["r1"].put_object(Bucket="strict-shared", Key="on-the-share", Body=b"s")
        nodes["r1"].kill()  # kill -9
        for name in ("p1", "x1"):
            assert keys(s3[name], "strict-shared") == ["on-the-share"], name
            assert "strict-shared" in [b["Name"] for b in s3[name].list_buckets()["Buckets"]], name
            assert s3[name].list_multipart_uploads(Bucket="strict-shared").get("Uploads", []) == [], name
    finally:
        nodes.stop()
