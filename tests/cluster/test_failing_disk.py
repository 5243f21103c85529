"""A storing node whose disk answers EIO while it runs (gateway/testing/faulty_disk.py): writes are
placed elsewhere, reads through it are answered by the peers, its own objects are 503 (never 404)
until the disk works again, and no request is a 500.

Real cluster: a primary on an ordinary directory, a redundant node whose cv-storage is a FUSE
passthrough that fails every call with EIO on demand (a dying disk, a hung NFS server), a proxy.
"""

from __future__ import annotations

from botocore.exceptions import ClientError

from gateway.testing.faulty_disk import FaultyDisk

from .conftest import error_of, wait_for
from .unwritable_helpers import primary_redundant_proxy, store_left_out_in_metrics, write_many

RETRY = 6  # failed_store_retry
BODY = b"e" * 4 * 1024


def status_of(call) -> int:
    try:
        call()
    except ClientError as exc:
        return exc.response["ResponseMetadata"]["HTTPStatusCode"]
    return 200


def get_status(s3, key: str) -> int:
    return status_of(lambda: s3.get_object(Bucket="faces", Key=key)["Body"].read())


def test_a_node_whose_disk_fails_with_eio_is_gone_around_and_its_objects_are_503_until_it_works(tmp_path):
    with FaultyDisk(tmp_path / "r1-backing", tmp_path / "r1" / "cv-storage") as disk, \
            primary_redundant_proxy(tmp_path, "r1", {"GATEWAY_FAILED_STORE_RETRY": str(RETRY)}) as nodes:
        s3 = {name: nodes[name].client() for name in ("p1", "r1", "x1")}
        s3["p1"].create_bucket(Bucket="faces")
        for n in range(3):  # a redundant node stores what its own clients send it
            s3["r1"].put_object(Bucket="faces", Key=f"on-r1-{n}", Body=BODY)

        disk.fail()
        says = ("Input/output error",)
        refused = (write_many(s3["p1"], "faces", "via-primary", 20, BODY, 503, says=says)
                   + write_many(s3["x1"], "faces", "via-proxy", 20, BODY, 503, says=says))
        assert refused == [], f"{len(refused)} of 40 writes were answered 503: {refused}"
        assert store_left_out_in_metrics(nodes, "x1", "gateway_cluster_store_failed", "r1"), \
            "the proxy never placed a write on the failing node"

        # What the others hold reads through the failing node (its peers answer), HEAD included.
        written = [f"{p}-{n}" for p in ("via-primary", "via-proxy") for n in range(20)]
        unread = [k for k in written if s3["r1"].get_object(Bucket="faces", Key=k)["Body"].read() != BODY]
        assert not unread, f"not readable through the node whose disk fails: {unread}"
        assert s3["r1"].head_object(Bucket="faces", Key=written[0])["ContentLength"] == len(BODY)
        # Its own objects cannot be read now, anywhere: 503 (retry later), never 404 (gone).
        statuses = {(via, key): get_status(s3[via], key) for via in s3 for key in ("on-r1-0", "on-r1-2")}
        assert set(statuses.values()) == {503}, statuses
        # Through the others the 503 says it is r1's storage, not that r1 cannot be reached.
        message = error_of(lambda: s3["x1"].get_object(Bucket="faces", Key="on-r1-0")).response["Error"]["Message"]
        assert "may be on a server that cannot answer now (r1: its storage failed)" in message, message
        # A key no node has: 503 too, since the failing node could not say.
        assert status_of(lambda: s3["x1"].head_object(Bucket="faces", Key="nowhere")) == 503
        assert "Traceback" not in nodes["r1"].log(), "a failing disk is not an internal error"

        disk.heal()
        for via in s3:
            for n in range(3):
                assert s3[via].get_object(Bucket="faces", Key=f"on-r1-{n}")["Body"].read() == BODY, via
        wait_for(lambda: not store_left_out_in_metrics(nodes, "p1", "gateway_cluster_store_failed", "r1"),
                 RETRY + 15, "the primary forgetting the failed store")
        assert write_many(s3["p1"], "faces", "after", 20, BODY, 503) == []
        listed = {o["Key"] for o in s3["x1"].list_objects_v2(Bucket="faces")["Contents"]}
        assert listed >= {f"on-r1-{n}" for n in range(3)} | set(written), "objects missing from the listing"
