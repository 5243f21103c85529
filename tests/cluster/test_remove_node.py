"""Removing a redundant node for good, its objects moved to the others (docs/cluster.md, "Removing a
node"): stop it, serve its directory with a stand-alone gateway, `rclone copy --ignore-existing` into
the cluster, then `cluster leave --force`. Nothing is lost, and a key overwritten in the cluster
while the node was stopped keeps its newer version."""

from __future__ import annotations

import subprocess
import sys

from gateway.testing.rclone import run_rclone
from gateway.testing.server import GatewayProcess

from .conftest import ClusterNodes


def test_a_redundant_node_is_removed_with_its_objects_moved_to_the_others(tmp_path):
    registry = f"sqlite:///{tmp_path}/registry.db"
    nodes = ClusterNodes(tmp_path / "cluster", registry)
    try:
        nodes.add("p1", "primary")
        nodes.add_many([("r1", "redundant"), ("r2", "redundant")])
        nodes.wait_known(3)
        s3 = {name: nodes[name].client() for name in ("p1", "r1", "r2")}
        for bucket in ("cams", "events"):
            s3["p1"].create_bucket(Bucket=bucket)
        moved = {("cams", f"face/{i}.jpg"): bytes([i]) * 30_000 for i in range(12)}
        moved[("events", "e/1.json")] = b'{"event": 1}'
        for (bucket, key), body in moved.items():
            s3["r2"].put_object(Bucket=bucket, Key=key, Body=body, Metadata={"camera": "7"})  # kept by r2
        s3["r1"].put_object(Bucket="cams", Key="face/on-r1.jpg", Body=b"stays on r1")
        s3["r2"].put_object(Bucket="cams", Key="face/overwritten.jpg", Body=b"old, on r2")

        nodes["r2"].stop()  # as `systemctl stop`: it stays listed, its objects answer 503 meanwhile
        s3["p1"].put_object(Bucket="cams", Key="face/overwritten.jpg", Body=b"new, written while r2 was stopped")
        with GatewayProcess(nodes["r2"].data_dir) as alone:  # its directory, served stand-alone
            run_rclone(nodes["p1"], "copy", "--ignore-existing", "--metadata", "R2:", "GW:", others={"R2": alone})
        leave = subprocess.run([sys.executable, "-m", "gateway", "cluster", "leave", "--registry", registry,
                                "--node-id", "r2", "--force"], capture_output=True, text=True, timeout=60)
        assert leave.returncode == 0, leave.stderr
        nodes.wait_known(2)

        for reader in ("p1", "r1"):
            for (bucket, key), body in moved.items():
                got = s3[reader].get_object(Bucket=bucket, Key=key)
                assert got["Body"].read() == body, (reader, key)
                assert got["Metadata"]["camera"] == "7", (reader, key)  # kept by --metadata (rclone adds mtime)
            assert s3[reader].get_object(Bucket="cams", Key="face/overwritten.jpg")["Body"].read() == \
                b"new, written while r2 was stopped", "the stopped node's old copy replaced a newer write"
            listed = [o["Key"] for o in s3[reader].list_objects_v2(Bucket="cams")["Contents"]]
            assert listed == sorted([k for b, k in moved if b == "cams"] + ["face/on-r1.jpg", "face/overwritten.jpg"])
    finally:
        nodes.stop()
