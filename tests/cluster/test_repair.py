"""Copies an overwrite could not retire are found and retired: by listings, and by `gateway cluster repair`
(docs/cluster.md, "Repair"). The stale copy is made as it happens in the field: a node's object files put
back by hand (an old disk, a copied directory) while it was down, after an overwrite elsewhere had
retired them."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import pytest

from gateway.cluster.peer_auth import PeerSigner

from .conftest import SECRET, error_of, repair_command, wait_for

NODES = ("p1", "r1", "r2", "x1")
STORING = ("p1", "r1", "r2")


@pytest.fixture(scope="module")
def cluster(sqlite_cluster):
    return sqlite_cluster


def read(cluster, node: str, bucket: str, key: str) -> bytes:
    return cluster[node].client().get_object(Bucket=bucket, Key=key)["Body"].read()


def stale_copies(cluster, bucket: str, keys: list[str]) -> None:
    """Each key: old bytes written through r2 (its copy), new bytes through r1 (which retires r2's), then
    r2's old file put back while r2 is down, as an old disk or a copied directory would. Afterwards r2
    reads the old version (local first), every other node the new one."""
    s3 = {n: cluster[n].client() for n in ("p1", "r1", "r2")}
    if bucket not in [b["Name"] for b in s3["p1"].list_buckets()["Buckets"]]:
        s3["p1"].create_bucket(Bucket=bucket)
    saved = {}
    for key in keys:
        s3["r2"].put_object(Bucket=bucket, Key=key, Body=b"old " + key.encode())
        path = cluster["r2"].data_dir / bucket / f"{key}%obj"
        saved[path] = path.read_bytes()
    time.sleep(0.02)  # the new version's time is later than the old one's
    for key in keys:
        s3["r1"].put_object(Bucket=bucket, Key=key, Body=b"new " + key.encode())
    assert not any(path.exists() for path in saved), "the overwrite did not retire r2's copies"
    cluster["r2"].stop()
    for path, data in saved.items():
        path.write_bytes(data)
    cluster.restart("r2")
    cluster.wait_known(4)
    for key in keys:
        assert read(cluster, "r2", bucket, key) == b"old " + key.encode(), "the stale copy was not served"
        assert read(cluster, "x1", bucket, key) in (b"old " + key.encode(), b"new " + key.encode())


def test_a_listing_retires_an_older_copy_it_sees(cluster):
    bucket, key = "repair-listed", "k1"
    stale_copies(cluster, bucket, [key])
    listed = cluster["x1"].client().list_objects_v2(Bucket=bucket)["Contents"]
    # The listing shows the newest version, once; and the older copy goes in the background.
    new_etag = cluster["r1"].client().head_object(Bucket=bucket, Key=key)["ETag"]
    assert [(o["Key"], o["ETag"]) for o in listed] == [(key, new_etag)]
    wait_for(lambda: read(cluster, "r2", bucket, key) == b"new k1", 10, "r2 dropping its older copy")
    assert not (cluster["r2"].data_dir / bucket / f"{key}%obj").exists()
    assert (cluster["r1"].data_dir / bucket / f"{key}%obj").exists(), "the newest copy must stay"
    assert "an older copy on r2 that an overwrite did not retire" in cluster["x1"].log()
    with urllib.request.urlopen(cluster["x1"].endpoint + "/metrics", timeout=10) as response:
        assert 'gateway_cluster_repaired_copies_total{node="r2"} 1' in response.read().decode()
    assert {read(cluster, n, bucket, key) for n in NODES} == {b"new k1"}


def test_repair_command_walks_every_bucket_page_by_page(cluster):
    keys = [f"k{i}" for i in range(7)]
    stale_copies(cluster, "repair-a", keys[:4])
    stale_copies(cluster, "repair-b", keys[4:])
    cluster["p1"].client().put_object(Bucket="repair-a", Key="only-once", Body=b"one copy")

    dry = repair_command(cluster, "p1", "--dry-run", "--page-size", "2")
    assert dry.returncode == 0, dry.stderr
    for key in keys[:4]:
        assert f"repair-a/{key}: would drop the older copy on r2 (the newest is on r1)" in dry.stderr
    assert "only-once" not in dry.stderr
    assert "repair-b/k4: would drop the older copy on r2" in dry.stderr  # every bucket, none named
    assert "7 keys with an older copy found" in dry.stderr
    assert read(cluster, "r2", "repair-a", "k0") == b"old k0", "a dry run changed something"

    done = repair_command(cluster, "p1", "--page-size", "2")
    assert done.returncode == 0, done.stderr
    for key in keys:
        bucket = "repair-a" if key in keys[:4] else "repair-b"
        assert f"{bucket}/{key}: dropped the older copy on r2 (the newest is on r1)" in done.stderr
        assert {read(cluster, n, bucket, key) for n in NODES} == {b"new " + key.encode()}
    assert "7 keys with an older copy repaired" in done.stderr
    assert read(cluster, "p1", "repair-a", "only-once") == b"one copy"

    again = repair_command(cluster, "r1", "--bucket", "repair-a")  # through another node: nothing left
    assert again.returncode == 0, again.stderr
    assert "5 keys in 1 bucket checked; 0 keys with an older copy repaired" in again.stderr


def test_repair_command_bad_inputs(cluster):
    cluster["p1"].client().create_bucket(Bucket="repair-c")
    unknown = repair_command(cluster, "p1", "--bucket", "no-such-bucket")
    assert unknown.returncode == 2 and "no bucket 'no-such-bucket' in the cluster" in unknown.stderr
    no_secret = repair_command(cluster, "p1", env={"GATEWAY_CLUSTER_SECRET": ""})
    assert no_secret.returncode == 2 and "needs a cluster secret" in no_secret.stderr
    wrong = repair_command(cluster, "p1", env={"GATEWAY_CLUSTER_SECRET": "x" * len(SECRET)})
    assert wrong.returncode == 2 and "answered 403" in wrong.stderr
    assert repair_command(cluster, "p1", "--page-size", "0").returncode == 2  # click names the range
    # The route itself: unsigned, a wrong method, a bad page size; the node stays up.
    endpoint = cluster["p1"].endpoint
    signer = PeerSigner(SECRET, "p1")

    def call(method: str, target: str, signed: bool = True) -> int:
        headers = signer.headers(method, target) if signed else {}
        request = urllib.request.Request(endpoint + target, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert call("POST", "/_cluster/v1/repair/repair-c", signed=False) == 403
    assert call("GET", "/_cluster/v1/repair/repair-c") == 405
    assert call("POST", "/_cluster/v1/repair/repair-c?max-keys=0") == 400
    assert call("POST", "/_cluster/v1/repair/repair-c?max-keys=x") == 400
    assert call("POST", "/_cluster/v1/repair/no-such-bucket") == 404
    assert call("POST", "/_cluster/v1/repair/repair-c?max-keys=5") == 200
    assert error_of(lambda: cluster["p1"].client().head_object(Bucket="repair-c", Key="x")).response[
        "Error"]["Code"] == "404"


def test_repair_command_says_which_node_it_could_not_check(cluster):
    stale_copies(cluster, "repair-d", ["k1"])
    cluster["r1"].kill()  # holds the newest copy
    try:
        out = repair_command(cluster, "p1", "--bucket", "repair-d")
        assert out.returncode == 1, out.stderr
        assert "not checked on r1 (could not be reached)" in out.stderr
        assert read(cluster, "r2", "repair-d", "k1") == b"old k1", "nothing may go while r1 cannot be compared"
    finally:
        cluster.restart("r1")
        cluster.wait_known(4)
    out = repair_command(cluster, "p1", "--bucket", "repair-d")
    assert out.returncode == 0, out.stderr
    assert {read(cluster, n, "repair-d", "k1") for n in NODES} == {b"new k1"}
