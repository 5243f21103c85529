"""A storing node whose store failed takes no placed writes for a while (gateway/cluster/unwritable.py).

Real cluster: a primary on an ordinary directory, a redundant node whose storage is a tmpfs that is
remounted read-only while it runs (what the kernel does to a filesystem after disk errors), and a
proxy. Before, each write placed on that node was a 500 InternalError with a traceback in its log,
and the primary and the proxy kept placing about half of the writes there; then the one write per
placing node that found it failed was a 503; now that write is placed again elsewhere. Reads of
what it holds go on: a read-only disk still reads.
"""

from __future__ import annotations

import subprocess
import sys
import time

from gateway.testing.disks import remount, tmpfs

from .conftest import wait_for
from .unwritable_helpers import primary_redundant_proxy, store_left_out_in_metrics, stored_on, write_many

RETRY = 6  # failed_store_retry: seconds the failed node is left out before a write is placed there again
BODY = b"r" * 16 * 1024


def failed_in_metrics(nodes, name: str) -> bool:
    return store_left_out_in_metrics(nodes, name, "gateway_cluster_store_failed", "ro")


def writes(s3, prefix: str, count: int) -> list[str]:
    """The keys of ``count`` PUTs refused 503 naming the cause."""
    return write_many(s3, "photos", prefix, count, BODY, 503, says=("Read-only file system", "dmesg"))


def test_writes_go_around_a_node_whose_disk_turned_read_only_and_its_objects_stay_readable(tmp_path):
    with tmpfs(tmp_path / "ro", "64m") as disk, \
            primary_redundant_proxy(tmp_path, "ro", {"GATEWAY_FAILED_STORE_RETRY": str(RETRY)}) as nodes:
        primary, proxy, on_ro = nodes["p1"].client(), nodes["x1"].client(), nodes["ro"].client()
        primary.create_bucket(Bucket="photos")
        on_ro.put_object(Bucket="photos", Key="on-ro", Body=b"stored before the disk failed")
        remount(disk, read_only=True)

        refused = writes(primary, "via-primary", 30) + writes(proxy, "via-proxy", 30)
        # Each placing node finds it failed once, places that write elsewhere, then leaves it out.
        assert refused == [], f"{len(refused)} of 60 writes were answered 503: {refused}"
        assert failed_in_metrics(nodes, "x1"), "the proxy never placed a write on the read-only node"
        # A write sent to the node itself goes to a node that takes writes.
        on_ro.put_object(Bucket="photos", Key="direct", Body=BODY)
        assert proxy.get_object(Bucket="photos", Key="direct")["Body"].read() == BODY
        # The node says so itself, with its heartbeat: `cluster status` and /metrics show it.
        wait_for(lambda: {r["node_id"]: r["storage_failed"] for r in nodes.status()}["ro"] == ["local"], 10,
                 "the read-only node publishing storage_failed")
        table = subprocess.run([sys.executable, "-m", "gateway", "cluster", "status", "--registry",
                                nodes.registry], capture_output=True, text=True, timeout=30, check=False)
        assert "store down: local" in table.stdout, table.stdout
        # And goes on saying so while the disk stays read-only, with no write to find it again: the
        # note lapsed after failed_store_retry, and `cluster status` said ok while /readyz said 503.
        time.sleep(RETRY + 2)
        assert {r["node_id"]: r["storage_failed"] for r in nodes.status()}["ro"] == ["local"]
        assert failed_in_metrics(nodes, "p1"), "the primary never placed a write on the read-only node"
        assert "Traceback" not in nodes["ro"].log(), "a read-only disk is not an internal error"

        missing = [f"{p}-{n}" for p in ("via-primary", "via-proxy") for n in range(30)
                   if proxy.get_object(Bucket="photos", Key=f"{p}-{n}")["Body"].read() != BODY]
        assert not missing, f"answered 200 but not readable: {missing}"
        for client in (primary, proxy, on_ro):  # what it holds is read through every node
            assert client.get_object(Bucket="photos", Key="on-ro")["Body"].read() == \
                b"stored before the disk failed"

        # A multipart upload begun through the failed node is begun on a node that takes writes.
        upload = on_ro.create_multipart_upload(Bucket="photos", Key="clip.bin")["UploadId"]
        etag = on_ro.upload_part(Bucket="photos", Key="clip.bin", UploadId=upload, PartNumber=1,
                                 Body=b"c" * 7000)["ETag"]
        on_ro.complete_multipart_upload(Bucket="photos", Key="clip.bin", UploadId=upload, MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": etag}]})
        assert proxy.get_object(Bucket="photos", Key="clip.bin")["Body"].read() == b"c" * 7000

        # Writable again: once failed_store_retry has passed, writes are placed there again.
        remount(disk, read_only=False)
        wait_for(lambda: not failed_in_metrics(nodes, "p1"), RETRY + 15, "the primary forgetting the failed store")
        before = stored_on(nodes, "ro", "photos")
        assert writes(primary, "after", 30) == []
        assert stored_on(nodes, "ro", "photos") > before, "no write was placed on the node that is writable again"
