"""SIGTERM (what systemd and `kill` send) stops backup and restore as Ctrl-C does: the clean-up
runs (no unfinished archive, no temp file left), exit 143, and the message says to run it again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from gateway.testing.server import GatewayProcess

from .test_backup import gateway_cmd

BODIES = {f"b{i}": os.urandom(24 << 20) for i in range(6)}


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    with GatewayProcess(tmp_path_factory.mktemp("sigterm") / "cv-storage") as gateway:
        s3 = gateway.client()
        s3.create_bucket(Bucket="big")
        for key, body in BODIES.items():
            s3.put_object(Bucket="big", Key=key, Body=body)
        yield gateway


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gateway", *map(str, args)], stderr=subprocess.PIPE,
                            text=True, cwd="/")


def _terminate_when(process: subprocess.Popen, ready, what: str) -> str:
    deadline = time.monotonic() + 60
    while not ready():
        assert process.poll() is None, f"the {what} finished before SIGTERM: make the objects bigger"
        assert time.monotonic() < deadline, f"the {what} did not get going within 60 s"
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 143, stderr
    assert "stopped by SIGTERM" in stderr
    return stderr


def test_sigterm_stops_a_backup_and_removes_the_unfinished_archive(big_store, tmp_path):
    output = tmp_path / "full.tar"
    partial = tmp_path / "full.tar.partial"
    process = _start("backup", "-q", "--data-dir", big_store.data_dir, output)
    stderr = _terminate_when(process, lambda: partial.exists() and partial.stat().st_size > (8 << 20), "backup")
    assert "the unfinished archive was removed" in stderr
    assert not output.exists() and not partial.exists()


def test_sigterm_stops_a_restore_without_leaving_temp_files(big_store, tmp_path):
    archive = tmp_path / "full.tar"
    gateway_cmd("backup", "-q", "--data-dir", big_store.data_dir, archive, check=0)
    target = tmp_path / "target"
    target.mkdir()
    tmp_dir = target / ".gateway" / "tmp"

    def writing() -> bool:
        return tmp_dir.exists() and any(f.stat().st_size for d in tmp_dir.iterdir() for f in d.iterdir())

    process = _start("restore", "-q", "--data-dir", target, archive)
    stderr = _terminate_when(process, writing, "restore")
    assert "run the same command again" in stderr
    assert not [f for d in tmp_dir.iterdir() for f in d.iterdir()], "a temp file was left behind"
    gateway_cmd("restore", "-q", "--data-dir", target, archive, check=0)
    with GatewayProcess(target) as restored:
        s3 = restored.client()
        for key, body in BODIES.items():
            assert s3.get_object(Bucket="big", Key=key)["Body"].read() == body


def test_sigterm_stops_a_migration_pass_and_the_next_pass_completes(tmp_path):
    from .test_migrate import _temps, contents, migrate_ok, put_big_object, shared_gateway, start_and_stop_mid_copy

    share = tmp_path / "share"
    share.mkdir()
    with GatewayProcess(tmp_path / "server1") as source:
        s3 = source.client()
        s3.create_bucket(Bucket="a-big")
        put_big_object(s3, "a-big", "video.bin", tmp_path)
        s3.put_object(Bucket="a-big", Key="small", Body=b"small")
        expected = contents(s3)
    migration = start_and_stop_mid_copy(source.data_dir, share)  # stopped with a temp file on the share
    migration.send_signal(signal.SIGTERM)  # handled when it runs again
    migration.send_signal(signal.SIGCONT)
    _, stderr = migration.communicate(timeout=60)
    assert migration.returncode == 143, stderr
    assert "stopped by SIGTERM" in stderr and "run the same command again" in stderr
    assert _temps(share) == [], "the stopped pass left its temp file"
    assert "verified: all" in migrate_ok(source.data_dir, share)
    with shared_gateway(share, tmp_path) as target:
        assert contents(target.client()) == expected
