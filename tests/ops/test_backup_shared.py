"""Backups of shared storage in a mixed cluster: the primary in local mode, a redundant node on a share.

The primary's full backup holds its own disk only, and an objects-only backup used to leave shared
stores out (and refused a node with nothing else): nobody's backup held the share. Now `backup -o`
on a node on the share includes it when the registry says the primary keeps its objects on its own
disk, and `--include-shared` asks for it where the registry cannot tell.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from cluster.conftest import NODE_ENV, start_cluster

from gateway.testing.server import GatewayProcess

from .test_backup import gateway_cmd


def _ops(cluster, node: str, config_path, *args, check=None) -> subprocess.CompletedProcess:
    """`gateway ARGS` with the settings the sharedfs node ``node`` serves with."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway", *map(str, args), "--config", str(config_path), "--role", "redundant",
         "--registry", cluster.registry, "--insecure-peers"],
        capture_output=True, text=True, cwd="/", timeout=120, env={**os.environ, **NODE_ENV, "GATEWAY_NODE_ID": node})
    assert "Traceback" not in result.stderr, result.stderr
    if check is not None:
        assert result.returncode == check, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def _published(cluster, node: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = next(r for r in cluster.status() if r["node_id"] == node)
        if row["shared_storage"] is not None:
            return row
        time.sleep(0.2)
    raise AssertionError(f"{node} published no storage mode within {timeout}s")


def test_objects_only_backup_on_a_share_the_local_primary_does_not_hold(tmp_path):
    cluster = start_cluster(tmp_path / "c", f"sqlite:///{tmp_path}/registry.db")
    try:
        share = tmp_path / "share"
        share.mkdir()
        r1 = cluster["r1"]
        r1.stop()
        r1.config = f'[backends.local]\ntype = "sharedfs"\nroot = "{share}"\nrequire_mount = false\n'
        cluster.restart("r1")
        cluster.wait_known(4)
        assert _published(cluster, "r1")["shared_storage"] is True
        assert _published(cluster, "p1")["shared_storage"] is False
        s3 = r1.client()
        s3.create_bucket(Bucket="shared")
        objects = {f"cam/{i}.jpg": os.urandom(20_000 + i) for i in range(12)}
        for key, body in objects.items():
            s3.put_object(Bucket="shared", Key=key, Body=body)
        config_path = r1.log_path.with_suffix(".toml")

        archive = tmp_path / "r1-objects.tar"
        result = _ops(cluster, "r1", config_path, "backup", "-o", "-q", archive, check=0)
        assert "the primary p1 keeps its objects on its own disk" in result.stderr
        assert "in this backup: backend 'local', shared storage" in result.stderr

        # The share is lost; the objects-only backup goes back to the server it came from.
        r1.stop()
        shutil.rmtree(share)
        share.mkdir()
        restored = _ops(cluster, "r1", config_path, "restore", "-q", archive, check=0)
        assert "Traceback" not in restored.stderr
        cluster.restart("r1")
        cluster.wait_known(4)
        p1 = cluster["p1"].client()
        for key, body in objects.items():  # through the primary: relayed from r1, which has them again
            assert p1.get_object(Bucket="shared", Key=key)["Body"].read() == body
    finally:
        cluster.stop()


def test_include_shared_where_the_registry_cannot_tell(tmp_path):
    """A stand-alone sharedfs gateway: -o refuses and names --include-shared, which then backs the share up."""
    share = tmp_path / "share"
    share.mkdir()
    config = f'[backends.local]\ntype = "sharedfs"\nroot = "{share}"\nrequire_mount = false\n'
    with GatewayProcess(tmp_path / "unused", config=config) as gateway:
        s3 = gateway.client()
        s3.create_bucket(Bucket="bkt")
        s3.put_object(Bucket="bkt", Key="k", Body=b"on the share")
        config_path = gateway.log_path.with_suffix(".toml")
    refused = gateway_cmd("backup", "-o", "--config", config_path, tmp_path / "a.tar", check=2)
    assert "--include-shared" in refused.stderr
    assert not (tmp_path / "a.tar").exists()
    gateway_cmd("backup", "-o", "--include-shared", "-q", "--config", config_path, tmp_path / "a.tar", check=0)
    check = gateway_cmd("restore", "--check", tmp_path / "a.tar", check=0)
    assert "1 object" in check.stderr or "1 objects" in check.stderr, check.stderr
    wrong = gateway_cmd("backup", "--include-shared", "--config", config_path, tmp_path / "b.tar", check=2)
    assert "goes with -o" in wrong.stderr
