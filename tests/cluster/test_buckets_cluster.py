"""Bucket operations across the cluster: DeleteBucket with a storing node down, ListBuckets as the union
of every storing node. Real gateway processes (1 primary + 2 redundant + 1 proxy on SQLite, and a
shared-storage cluster), nodes stopped with kill -9."""

from __future__ import annotations

import shutil

import pytest
from botocore.exceptions import ClientError

from .conftest import NODES, ClusterNodes, clients, error_of


@pytest.fixture(scope="module")
def cluster(sqlite_cluster):
    return sqlite_cluster


def status_of(error: ClientError) -> int:
    return error.response["ResponseMetadata"]["HTTPStatusCode"]


def listed(s3, **params) -> list[str]:
    return [b["Name"] for b in s3.list_buckets(**params)["Buckets"]]


def on_disk(cluster, name: str, bucket: str) -> bool:
    return (cluster[name].data_dir / bucket).is_dir()


# DeleteBucket ------------------------------------------------------------------------------------


def test_deletebucket_while_a_storing_node_is_down_is_a_503_that_changes_nothing(cluster):
    """r2 holds the only object of one bucket; another bucket is empty everywhere; a third has an
    object on r1. With r2 killed, DeleteBucket through every other node is a 503 with Retry-After
    for the first two (r2 may hold objects: nothing is deleted anywhere), 409 for the third (a node
    that answered holds an object). Once r2 is back the buckets are whole: the non-empty one is
    409, and after its object is deleted both go, from every node."""
    s3 = clients(cluster)
    s3["p1"].create_bucket(Bucket="held-by-r2")
    s3["p1"].create_bucket(Bucket="empty-everywhere")
    s3["p1"].create_bucket(Bucket="held-by-r1")
    s3["r2"].put_object(Bucket="held-by-r2", Key="precious", Body=b"precious")
    s3["r1"].put_object(Bucket="held-by-r1", Key="kept", Body=b"kept")
    assert (cluster["r2"].data_dir / "held-by-r2" / "precious%obj").exists()
    cluster["r2"].kill()  # kill -9
    try:
        for via in ("r1", "p1", "x1"):
            for bucket in ("held-by-r2", "empty-everywhere"):
                error = error_of(lambda c=s3[via], b=bucket: c.delete_bucket(Bucket=b))
                assert status_of(error) == 503, (via, bucket, error.response)
                assert error.response["Error"]["Code"] == "ServiceUnavailable", (via, bucket)
                assert error.response["ResponseMetadata"]["HTTPHeaders"].get("retry-after"), (via, bucket)
                message = error.response["Error"]["Message"]
                assert "cannot be reached" in message and "r2" in message, (via, message)
                assert ".multipart" not in message, (via, message)
                for name in ("p1", "r1"):
                    assert on_disk(cluster, name, bucket), (via, bucket, name)
            error = error_of(lambda c=s3[via]: c.delete_bucket(Bucket="held-by-r1"))
            assert error.response["Error"]["Code"] == "BucketNotEmpty", (via, error.response)
        for name in ("p1", "r1", "x1"):
            s3[name].head_bucket(Bucket="held-by-r2")
            s3[name].head_bucket(Bucket="empty-everywhere")
    finally:
        cluster.restart("r2")
    for name in NODES:
        assert s3[name].get_object(Bucket="held-by-r2", Key="precious")["Body"].read() == b"precious", name
        assert {"held-by-r2", "empty-everywhere", "held-by-r1"} <= set(listed(s3[name])), name
    error = error_of(lambda: s3["x1"].delete_bucket(Bucket="held-by-r2"))
    assert error.response["Error"]["Code"] == "BucketNotEmpty"
    s3["p1"].delete_object(Bucket="held-by-r2", Key="precious")
    s3["r1"].delete_object(Bucket="held-by-r1", Key="kept")
    s3["x1"].delete_bucket(Bucket="held-by-r2")
    s3["r1"].delete_bucket(Bucket="empty-everywhere")
    s3["p1"].delete_bucket(Bucket="held-by-r1")
    for bucket in ("held-by-r2", "empty-everywhere", "held-by-r1"):
        for name in ("p1", "r1", "r2"):
            assert not on_disk(cluster, name, bucket), (bucket, name)
        for name in NODES:
            assert status_of(error_of(lambda c=s3[name], b=bucket: c.head_bucket(Bucket=b))) == 404, (bucket, name)
            assert bucket not in listed(s3[name]), (bucket, name)


def test_deletebucket_with_a_node_down_names_no_internal_bucket_even_with_uploads(cluster):
    """Unfinished uploads of the bucket live in the gateway's internal bucket; the 503 must not name it."""
    s3 = clients(cluster)
    s3["p1"].create_bucket(Bucket="uploads-and-down")
    for name in NODES:
        s3[name].create_multipart_upload(Bucket="uploads-and-down", Key=f"via-{name}")
    cluster["r2"].kill()  # kill -9
    try:
        for via in ("p1", "r1", "x1"):
            error = error_of(lambda c=s3[via]: c.delete_bucket(Bucket="uploads-and-down"))
            assert status_of(error) == 503, (via, error.response)
            assert ".multipart" not in error.response["Error"]["Message"], via
            assert on_disk(cluster, "p1", "uploads-and-down") and on_disk(cluster, "r1", "uploads-and-down")
    finally:
        cluster.restart("r2")
    s3["x1"].delete_bucket(Bucket="uploads-and-down")
    s3["p1"].create_bucket(Bucket="uploads-and-down")
    for name in NODES:
        assert s3[name].list_multipart_uploads(Bucket="uploads-and-down").get("Uploads", []) == [], name
    s3["p1"].delete_bucket(Bucket="uploads-and-down")


def test_a_bucket_left_on_one_node_by_an_interrupted_delete_is_deleted_by_the_retry(cluster):
    """A node that fails between the check and the delete keeps the bucket (the client got a 503);
    the retry finds it gone elsewhere and deletes it there, answering 204."""
    s3 = clients(cluster)
    s3["p1"].create_bucket(Bucket="half-deleted")
    for name in ("p1", "r1"):  # what the delete did before r2 failed
        shutil.rmtree(cluster[name].data_dir / "half-deleted")
    assert on_disk(cluster, "r2", "half-deleted")
    s3["x1"].delete_bucket(Bucket="half-deleted")
    assert not on_disk(cluster, "r2", "half-deleted")
    for name in NODES:
        assert status_of(error_of(lambda c=s3[name]: c.head_bucket(Bucket="half-deleted"))) == 404, name
        assert error_of(lambda c=s3[name]: c.delete_bucket(Bucket="half-deleted")).response[
            "Error"]["Code"] == "NoSuchBucket", name


def test_a_write_through_the_proxy_right_after_deletebucket_elsewhere_does_not_make_the_bucket_again(cluster):
    """A proxy trusts for a few seconds that a bucket it checked exists (no check per PUT), and the
    node it placed a write on created a missing bucket for it: a PUT through the proxy within 5 s of a
    DeleteBucket through another node made the deleted bucket again, with that one object in it.
    DeleteBucket now tells every node, the proxies too, before it is answered."""
    s3 = clients(cluster)
    for deleter in ("p1", "r1", "r2"):
        bucket = f"gone-after-delete-{deleter}"
        s3["p1"].create_bucket(Bucket=bucket)
        s3["x1"].put_object(Bucket=bucket, Key="k", Body=b"seen through the proxy")
        s3["x1"].delete_object(Bucket=bucket, Key="k")
        s3[deleter].delete_bucket(Bucket=bucket)
        error = error_of(lambda: s3["x1"].put_object(Bucket=bucket, Key="after", Body=b"too late"))
        assert error.response["Error"]["Code"] == "NoSuchBucket", deleter
        for name in NODES:
            assert bucket not in listed(s3[name]), (deleter, name)
        for name in ("p1", "r1", "r2"):  # the storing nodes
            assert not on_disk(cluster, name, bucket), (deleter, name)


def test_headbucket_of_a_bucket_only_a_down_node_holds_is_503_not_404(cluster):
    """r2 may hold it (and does): a 404 would be taken as final (a PUT through the proxy checks it too)."""
    s3 = clients(cluster)
    (cluster["r2"].data_dir / "hb-only-on-r2").mkdir()
    cluster["r2"].kill()  # kill -9
    try:
        for name in ("p1", "r1", "x1"):
            error = error_of(lambda c=s3[name]: c.head_bucket(Bucket="hb-only-on-r2"))
            assert status_of(error) == 503, (name, error.response)
            assert error.response["ResponseMetadata"]["HTTPHeaders"].get("retry-after"), name
            assert status_of(error_of(lambda c=s3[name]: c.put_object(Bucket="hb-only-on-r2", Key="k",
                                                                       Body=b"x"))) == 503, name
    finally:
        cluster.restart("r2")
    for name in NODES:
        s3[name].head_bucket(Bucket="hb-only-on-r2")
    (cluster["r2"].data_dir / "hb-only-on-r2").rmdir()


# ListBuckets ---------------------------------------------------------------------------------------


def test_listbuckets_through_every_node_is_the_union_of_the_storing_nodes(cluster):
    """A bucket only r2 holds (made while the others missed it) is listed through every node, a bucket
    r2 made later itself (its first write) shows the earliest creation date, and paging with prefix,
    max-buckets and continuation tokens runs over the union."""
    s3 = clients(cluster)
    (cluster["r2"].data_dir / "lb-only-on-r2").mkdir()  # a bucket directory made by hand, on one node
    cluster["r2"].kill()  # kill -9
    try:
        s3["r1"].create_bucket(Bucket="lb-made-while-down")
    finally:
        cluster.restart("r2")
    assert not on_disk(cluster, "r2", "lb-made-while-down")
    s3["r2"].put_object(Bucket="lb-made-while-down", Key="first", Body=b"r2 makes the bucket now")
    assert on_disk(cluster, "r2", "lb-made-while-down")
    for name in ("p1", "r1"):
        s3[name].create_bucket(Bucket=f"lb-by-{name}")
    expected = ["lb-by-p1", "lb-by-r1", "lb-made-while-down", "lb-only-on-r2"]
    answers = {}
    for name in NODES:
        for _ in range(3):  # the proxy once answered with whichever peer it asked first
            buckets = s3[name].list_buckets()["Buckets"]
            names = [b["Name"] for b in buckets]
            assert names == sorted(names), name
            assert set(expected) <= set(names), (name, names)
            answers.setdefault(name, {b["Name"]: b["CreationDate"] for b in buckets})
            assert answers[name] == {b["Name"]: b["CreationDate"] for b in buckets}, name
    assert len({tuple(sorted(a.items())) for a in answers.values()}) == 1, answers
    created = s3["p1"].list_buckets()["Buckets"]
    made_while_down = next(b["CreationDate"] for b in created if b["Name"] == "lb-made-while-down")
    assert next(b["CreationDate"] for b in s3["r2"].list_buckets()["Buckets"]
                if b["Name"] == "lb-made-while-down") == made_while_down  # the earliest, not r2's own
    for name in NODES:
        assert listed(s3[name], Prefix="lb-") == expected, name
        pages, token = [], None
        while True:
            page = s3[name].list_buckets(Prefix="lb-", MaxBuckets=1, **({"ContinuationToken": token} if token else {}))
            pages += [b["Name"] for b in page["Buckets"]]
            token = page.get("ContinuationToken")
            if not token:
                break
        assert pages == expected, name


def test_listbuckets_with_a_storing_node_down_lists_the_reachable_ones_and_warns(cluster):
    s3 = clients(cluster)
    (cluster["r2"].data_dir / "lbd-only-on-r2").mkdir()
    s3["p1"].create_bucket(Bucket="lbd-everywhere")
    for name in NODES:
        assert {"lbd-only-on-r2", "lbd-everywhere"} <= set(listed(s3[name])), name
    cluster["r2"].kill()  # kill -9
    try:
        for name in ("p1", "r1", "x1"):
            names = listed(s3[name])
            assert "lbd-everywhere" in names and "lbd-only-on-r2" not in names, (name, names)
            assert "listing buckets without unreachable nodes r2" in cluster[name].log(), name
    finally:
        cluster.restart("r2")
    for name in NODES:
        assert {"lbd-only-on-r2", "lbd-everywhere"} <= set(listed(s3[name])), name


# Shared storage ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("buckets-shared")
    (base / "shared").mkdir()
    config = f'default_backend = "shared"\n[backends.shared]\ntype = "sharedfs"\nroot = "{base / "shared"}"\n'
    nodes = ClusterNodes(base, f"sqlite:///{base}/registry.db")
    try:
        nodes.add_many([("p1", "primary")], config=config)
        nodes.add_many([("r1", "redundant"), ("x1", "proxy")], config=config)
        nodes.wait_known(3)
    except BaseException:
        nodes.stop()
        raise
    nodes.share = base / "shared"
    yield nodes
    nodes.stop()


def test_bucket_operations_on_shared_storage(shared_cluster):
    """Every node sees one tree: buckets are listed once, a non-empty bucket is 409, an empty one is
    deleted through any node, and with a storing node down the others still delete (they see its files)."""
    names = ("p1", "r1", "x1")
    s3 = {name: shared_cluster[name].client() for name in names}
    for name in names:
        s3[name].create_bucket(Bucket=f"sh-{name}")
    s3["r1"].put_object(Bucket="sh-p1", Key="k", Body=b"on the share")
    for name in names:
        assert listed(s3[name], Prefix="sh-") == ["sh-p1", "sh-r1", "sh-x1"], name
        assert error_of(lambda c=s3[name]: c.delete_bucket(Bucket="sh-p1")).response[
            "Error"]["Code"] == "BucketNotEmpty", name
    s3["x1"].delete_bucket(Bucket="sh-r1")
    s3["r1"].delete_bucket(Bucket="sh-x1")
    assert not (shared_cluster.share / "sh-r1").exists() and not (shared_cluster.share / "sh-x1").exists()
    s3["p1"].create_bucket(Bucket="sh-down")
    shared_cluster["r1"].kill()  # kill -9
    try:
        for name in ("p1", "x1"):
            assert error_of(lambda c=s3[name]: c.delete_bucket(Bucket="sh-p1")).response[
                "Error"]["Code"] == "BucketNotEmpty", name
            assert listed(s3[name], Prefix="sh-") == ["sh-down", "sh-p1"], name
        s3["x1"].delete_bucket(Bucket="sh-down")
        assert not (shared_cluster.share / "sh-down").exists()
    finally:
        shared_cluster.restart("r1")
    for name in names:
        assert listed(s3[name], Prefix="sh-") == ["sh-p1"], name
