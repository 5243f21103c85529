"""A storing node whose disk is full takes no placed writes for a while (gateway/cluster/unwritable.py).

Real cluster: a primary on an ordinary directory, a redundant node whose storage is a 1 MiB tmpfs
filled to the last byte, and a proxy. Before, the primary and the proxy kept placing about half of
the writes on the full node, and each of those was a 507 that S3 clients do not retry, while the
primary had room. Then each placing node still answered 507 to the one write that found the node
full; now that write is placed again elsewhere with the body it kept (``_put_placed``).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gateway.testing.disks import tmpfs

from .conftest import wait_for
from .unwritable_helpers import primary_redundant_proxy, store_left_out_in_metrics, stored_on, write_many

RETRY = 6  # full_store_retry: seconds the full node is left out before a write is placed there again
BODY = b"f" * 16 * 1024


def full_in_metrics(nodes, name: str) -> bool:
    return store_left_out_in_metrics(nodes, name, "gateway_cluster_store_full", "full")


def writes(s3, prefix: str, count: int) -> list[str]:
    """The keys of ``count`` PUTs refused 507."""
    return write_many(s3, "fill", prefix, count, BODY, 507)


def fill(disk) -> None:
    """Take every byte the tmpfs has left."""
    with open(disk / "filler", "wb", buffering=0) as f, pytest.raises(OSError):
        for _ in range(1024):
            f.write(b"\0" * 4096)


def test_writes_through_the_primary_and_the_proxy_go_around_a_full_node_until_it_has_room(tmp_path):
    with tmpfs(tmp_path / "full", "1m") as disk, \
            primary_redundant_proxy(tmp_path, "full", {"GATEWAY_FULL_STORE_RETRY": str(RETRY)}) as nodes:
        primary, proxy = nodes["p1"].client(), nodes["x1"].client()
        primary.create_bucket(Bucket="fill")
        primary.put_object(Bucket="fill", Key="warm-up", Body=b"x")
        nodes["full"].client().put_object(Bucket="fill", Key="on-full", Body=b"stored before it filled")
        fill(disk)

        refused = writes(primary, "via-primary", 30) + writes(proxy, "via-proxy", 30)
        # Each placing node finds it full once, places that write elsewhere, then leaves it out.
        assert refused == [], f"{len(refused)} of 60 writes were answered 507: {refused}"
        assert full_in_metrics(nodes, "x1"), "the proxy never placed a write on the full node"
        # The full node says so itself, with its heartbeat: `cluster status` and /metrics show it.
        # (Checked first: the flag lasts RETRY seconds from the last write that found it full.)
        wait_for(lambda: {r["node_id"]: r["storage_full"] for r in nodes.status()}["full"], 10,
                 "the full node publishing storage_full")
        table = subprocess.run([sys.executable, "-m", "gateway", "cluster", "status", "--registry",
                                nodes.registry], capture_output=True, text=True, timeout=30)
        assert "full: " in table.stdout, table.stdout
        assert full_in_metrics(nodes, "p1"), "the primary never placed a write on the full node"

        missing = [f"{p}-{n}" for p in ("via-primary", "via-proxy") for n in range(30)
                   if proxy.get_object(Bucket="fill", Key=f"{p}-{n}")["Body"].read() != BODY]
        assert not missing, f"answered 200 but not readable: {missing}"
        assert proxy.get_object(Bucket="fill", Key="on-full")["Body"].read() == b"stored before it filled"

        # A write sent to the full node itself, and a multipart upload begun through it, go to a
        # node with room (the upload's parts and completion follow it there).
        on_full = nodes["full"].client()
        held = stored_on(nodes, "full", "fill")
        on_full.put_object(Bucket="fill", Key="direct", Body=BODY)
        assert proxy.get_object(Bucket="fill", Key="direct")["Body"].read() == BODY
        assert stored_on(nodes, "full", "fill") == held
        upload = on_full.create_multipart_upload(Bucket="fill", Key="video.bin")["UploadId"]
        parts = [on_full.upload_part(Bucket="fill", Key="video.bin", UploadId=upload, PartNumber=n,
                                     Body=bytes([n]) * 6000)["ETag"] for n in (1, 2)]
        on_full.complete_multipart_upload(Bucket="fill", Key="video.bin", UploadId=upload, MultipartUpload={
            "Parts": [{"PartNumber": n, "ETag": etag} for n, etag in zip((1, 2), parts)]})
        assert proxy.get_object(Bucket="fill", Key="video.bin")["Body"].read() == b"\1" * 6000 + b"\2" * 6000

        # Room again: once full_store_retry has passed, writes are placed there again.
        (disk / "filler").unlink()
        wait_for(lambda: not full_in_metrics(nodes, "p1"), RETRY + 15, "the primary forgetting the full store")
        before = stored_on(nodes, "full", "fill")
        assert writes(primary, "after", 30) == []
        assert stored_on(nodes, "full", "fill") > before, "no write was placed on the node that has room again"
        assert json.dumps(nodes.admin("p1"))  # still answering
