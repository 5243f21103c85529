"""`gateway backup` and `gateway migrate` on full disks, damaged object files and operator slips
(the ops probe's bugs 4, 5, 6 and the backup/migrate items of 11). Real gateways write the objects,
the tools run as subprocesses, a full disk is a small tmpfs that really fills up (root, as in CI)."""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from gateway.testing.disks import tmpfs
from gateway.testing.server import GatewayProcess

from .test_migrate import put_big_object

MiB = 1024 * 1024
DEADLINE = 60.0
CLUSTER_ENV = {"GATEWAY_CLUSTER_SECRET": "0123456789abcdef0123", "GATEWAY_INSECURE_PEERS": "1"}


def gateway_cmd(*args, env=None, timeout=DEADLINE * 5, **kw) -> subprocess.CompletedProcess:
    """`gateway ARGS` from /, as an operator runs it (in the checkout its folders would be importable)."""
    kw.setdefault("capture_output", True)
    kw.setdefault("cwd", "/")
    return subprocess.run([sys.executable, "-m", "gateway", *map(str, args)], text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, **kw)


def no_traceback(result) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture
def small_disk(tmp_path):
    """Mount a tmpfs of the given size at tmp_path/<name>; unmounted at the end."""
    with contextlib.ExitStack() as mounted:
        yield lambda name, size: mounted.enter_context(tmpfs(tmp_path / name, size))


def fill_up(path: Path) -> None:
    """Take every free block of the disk ``path`` is on."""
    with open(path, "ab", buffering=0) as f:
        with pytest.raises(OSError) as info:
            for _ in range(1 << 20):
                f.write(b"\0" * 4096)
    assert info.value.errno == errno.ENOSPC


def object_file(store: Path, bucket: str, key: str) -> Path:
    from gateway_plugins import fslayout

    return store / bucket / fslayout.key_to_relpath(key)


def shared_gateway(share: Path, tmp_path: Path) -> GatewayProcess:
    config = f'default_backend = "shared"\n[backends.shared]\ntype = "sharedfs"\nroot = "{share}"\n'
    return GatewayProcess(tmp_path / "unused", config=config)


def bodies(s3) -> dict:
    return {(b["Name"], o["Key"]): s3.get_object(Bucket=b["Name"], Key=o["Key"])["Body"].read()
            for b in s3.list_buckets()["Buckets"]
            for o in s3.list_objects_v2(Bucket=b["Name"]).get("Contents", [])}


def journal_dir(store: Path) -> Path:
    return store / ".gateway" / "migrate"


def migrate_temps(share: Path) -> list[str]:
    return glob.glob(str(share / ".gateway" / "tmp" / socket.gethostname() / "*-migrate-*"))


# Bug 4: the store's own disk is full ---------------------------------------------------------


def test_migrate_with_the_stores_disk_full_stops_with_one_line_and_leaves_no_temp_file(tmp_path, small_disk):
    """The journal lives in the store: when its disk is full, the pass stops with one line that says
    so (exit 2), makes no copy the journal does not know, and leaves no snapshot temp file; one that
    a dead pass left is removed by the next."""
    disk = small_disk("small", "4m")
    store = disk / "src"
    with GatewayProcess(store) as gw:
        s3 = gw.client()
        s3.create_bucket(Bucket="photos")
        for n in range(6):
            s3.put_object(Bucket="photos", Key=f"p{n}.jpg", Body=os.urandom(100 * 1024))
        expected = bodies(s3)
    share = tmp_path / "share"
    share.mkdir()
    filler = disk / "filler"

    # Full from the start: the first journal line cannot be written, so nothing is copied.
    fill_up(filler)
    result = gateway_cmd("migrate", "--quiet", "--data-dir", store, "--to", share)
    no_traceback(result)
    assert result.returncode == 2, result.stderr
    assert len(error_lines(result)) == 1, result.stderr
    assert "No space left on device" in result.stderr and "store's disk is full" in result.stderr
    assert "free space" in result.stderr and str(journal_dir(store)) in result.stderr
    assert not (share / "photos").exists() or not list((share / "photos").iterdir())
    assert glob.glob(str(journal_dir(store) / "*.tmp-*")) == []

    # The log has room for its lines (a page taken earlier) but the snapshot at the end has none:
    # the objects are copied, then the closing snapshot fails (the probe's traceback).
    filler.unlink()
    log = next(journal_dir(store).glob("*.log"))
    log.write_text(json.dumps(["-", "nothing/here%obj"]) + "\n")
    fill_up(filler)
    result = gateway_cmd("migrate", "--quiet", "--data-dir", store, "--to", share)
    no_traceback(result)
    assert result.returncode == 2, result.stderr
    assert len(error_lines(result)) == 1 and "store's disk is full" in result.stderr, result.stderr
    assert len(list((share / "photos").glob("*%obj"))) == 6  # copied: the closing snapshot failed
    assert glob.glob(str(journal_dir(store) / "*.tmp-*")) == []

    # Space freed: the next pass finishes, and removes a snapshot temp file a dead pass left.
    filler.unlink()
    stale = Path(str(log)[:-len(".log")] + ".json.tmp-999999999")
    stale.write_text("{")
    result = gateway_cmd("migrate", "--quiet", "--data-dir", store, "--to", share)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verified: all" in result.stdout
    assert not stale.exists() and glob.glob(str(journal_dir(store) / "*.tmp-*")) == []
    with shared_gateway(share, tmp_path) as target:
        assert bodies(target.client()) == expected


# Bug 6: the target is full -------------------------------------------------------------------


def test_migrate_to_a_full_target_stops_at_the_first_enospc_and_a_rerun_finishes(tmp_path, small_disk):
    with GatewayProcess(tmp_path / "src") as gw:
        s3 = gw.client()
        s3.create_bucket(Bucket="photos")
        for n in range(30):
            s3.put_object(Bucket="photos", Key=f"p{n:02d}.jpg", Body=os.urandom(200 * 1024))
        expected = bodies(s3)
    share = small_disk("share", "2m")
    result = gateway_cmd("migrate", "--quiet", "--data-dir", gw.data_dir, "--to", share)
    no_traceback(result)
    assert result.returncode == 2, result.stdout + result.stderr
    errors = error_lines(result)
    assert len(errors) == 1, result.stderr  # not one line per remaining file
    assert f"the target {share} is full" in errors[0] and "No space left on device" in errors[0]
    assert "run the same command again" in errors[0]
    assert migrate_temps(share) == []  # the copy that hit the wall left no temp file

    subprocess.run(["mount", "-o", "remount,size=64m", "tmpfs", str(share)], check=True, timeout=30)
    result = gateway_cmd("migrate", "--quiet", "--data-dir", gw.data_dir, "--to", share)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verified: all 31 files" in result.stdout and "errors:                    0" in result.stdout
    with shared_gateway(share, tmp_path) as target:
        assert bodies(target.client()) == expected


# Item 11: a target file cut short is not "already there"; progress never over 100% -------------


def test_a_target_file_cut_short_is_copied_again_not_verified(tmp_path):
    with GatewayProcess(tmp_path / "src") as gw:
        s3 = gw.client()
        s3.create_bucket(Bucket="docs")
        for n in range(3):
            s3.put_object(Bucket="docs", Key=f"d{n}", Body=os.urandom(28253))
        expected = bodies(s3)
    share = tmp_path / "share"
    share.mkdir()
    first = gateway_cmd("migrate", "--quiet", "--data-dir", gw.data_dir, "--to", share)
    assert first.returncode == 0, first.stdout + first.stderr
    cut = object_file(share, "docs", "d1")
    os.truncate(cut, 5000)
    again = gateway_cmd("migrate", "--quiet", "--data-dir", gw.data_dir, "--to", share)
    assert again.returncode == 0, again.stdout + again.stderr
    assert re.search(r"already there:\s+2\b", again.stdout) and re.search(r"replaced \(newer here\):\s+1\b",
                                                                          again.stdout), again.stdout
    assert cut.stat().st_size == object_file(gw.data_dir, "docs", "d1").stat().st_size
    with shared_gateway(share, tmp_path) as target:
        assert bodies(target.client()) == expected


def _progress(stderr: str, label: str) -> tuple[int, int, int]:
    """(files, total files, percent) of the last progress line of ``label``."""
    lines = [line for line in stderr.splitlines() if line.startswith(f"{label}: ")]
    assert lines, stderr
    m = re.match(rf"{label}: ([\d,]+) / ([\d,]+) files, .*?, (\d+)%", lines[-1])
    assert m, lines[-1]
    return int(m[1].replace(",", "")), int(m[2].replace(",", "")), int(m[3])


def test_progress_totals_count_files_written_during_the_pass(tmp_path):
    """A pass stopped in the middle of a large object while the gateway writes more files: the
    copy and the verification lines never say more than 100% (the probe saw 378 / 359, 101%)."""
    share = tmp_path / "share"
    share.mkdir()
    with GatewayProcess(tmp_path / "src") as gw:
        s3 = gw.client()
        s3.create_bucket(Bucket="a-big")  # walked first
        s3.create_bucket(Bucket="small")
        put_big_object(s3, "a-big", "video.bin", tmp_path)
        s3.put_object(Bucket="small", Key="k0", Body=b"small")
        cmd = [sys.executable, "-m", "gateway", "migrate", "--quiet", "--to", str(share), "--data-dir",
               str(gw.data_dir)]
        migration = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
        try:
            deadline = time.monotonic() + DEADLINE
            while not any(os.path.getsize(t) >= MiB for t in migrate_temps(share) if os.path.exists(t)):
                assert migration.poll() is None, "the pass ended before it could be stopped"
                assert time.monotonic() < deadline, "no temp file of the pass appeared"
                time.sleep(0.001)
            migration.send_signal(signal.SIGSTOP)
            for n in range(1, 6):  # written after the count, walked by the copy and the verification
                s3.put_object(Bucket="small", Key=f"k{n}", Body=os.urandom(5 * MiB))
        finally:
            migration.send_signal(signal.SIGCONT)
        out, err = migration.communicate(timeout=DEADLINE * 5)
    assert migration.returncode == 0, out + err
    for label in ("migrate", "verify"):
        files, total, percent = _progress(err, label)
        assert files <= total and percent <= 100, err
    in_store = sum(len(names) for top, _, names in os.walk(gw.data_dir)
                   if not Path(top).relative_to(gw.data_dir).parts[:1] == (".gateway",))
    assert _progress(err, "verify")[:2] == (in_store, in_store), err  # every file, those written meanwhile too


# Bug 5: an object file cut short is noticed by backup ------------------------------------------


def test_backup_warns_about_an_object_file_cut_short_and_exits_1(tmp_path):
    with GatewayProcess(tmp_path / "src") as gw:
        s3 = gw.client()
        s3.create_bucket(Bucket="docs")
        for n in range(3):
            s3.put_object(Bucket="docs", Key=f"viaR2/obj{n:05d}.bin", Body=os.urandom(39073))
    cut = object_file(gw.data_dir, "docs", "viaR2/obj00000.bin")
    os.truncate(cut, cut.stat().st_size - 50)
    archive = tmp_path / "damaged.tar"
    result = gateway_cmd("backup", "--data-dir", gw.data_dir, archive)
    no_traceback(result)
    assert result.returncode == 1, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, result.stderr
    assert str(cut) in warnings[0] and "docs/viaR2/obj00000.bin" in warnings[0]
    assert "cut short" in warnings[0] and "39,073" in warnings[0] and "39,023" in warnings[0]
    # As for a header that does not parse: in the archive as it is, the archive itself complete.
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "cv-backup/summary.json" in names
    assert any(name.endswith("obj00000.bin%obj") for name in names)
    whole = gateway_cmd("backup", "-q", "--data-dir", gw.data_dir, tmp_path / "whole.tar")
    assert whole.returncode == 1  # still damaged: every backup says so
    # The archive says so again where it is used, long after the backup's output is gone.
    for command in (["restore", "--check", archive], ["restore", "-q", "--data-dir", tmp_path / "back", archive]):
        used = gateway_cmd(*command)
        assert used.returncode == 0, used.stderr
        lines = used.stderr.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("warning:"))
        assert "1 object file was damaged when this backup was taken" in lines[start], used.stderr
        assert str(cut) in lines[start + 1] and "cut short" in lines[start + 1], used.stderr
    restored = object_file(tmp_path / "back", "docs", "viaR2/obj00000.bin")
    assert restored.stat().st_size == cut.stat().st_size  # as it was, as the warning says
    cut.unlink()
    fine = gateway_cmd("backup", "-q", "--data-dir", gw.data_dir, tmp_path / "fine.tar")
    assert fine.returncode == 0 and "warning" not in fine.stderr, fine.stderr
    checked = gateway_cmd("restore", "--check", tmp_path / "fine.tar")
    assert checked.returncode == 0 and "warning" not in checked.stderr, checked.stderr


# Item 11: backup's output ----------------------------------------------------------------------


def test_backup_into_a_directory_that_does_not_exist_says_so(tmp_path):
    with GatewayProcess(tmp_path / "src") as gw:
        gw.client().create_bucket(Bucket="bkt")
        gw.client().put_object(Bucket="bkt", Key="k", Body=b"x")
    result = gateway_cmd("backup", "--data-dir", gw.data_dir, "newdir/", cwd=tmp_path)
    no_traceback(result)
    assert result.returncode == 2, result.stderr
    assert "the directory newdir/ does not exist" in result.stderr and "mkdir -p newdir/" in result.stderr
    assert ".partial" not in result.stderr
    missing = tmp_path / "nodir" / "b.tar"
    result = gateway_cmd("backup", "--data-dir", gw.data_dir, missing)
    assert result.returncode == 2, result.stderr
    assert f"the directory {missing.parent} does not exist" in result.stderr and ".partial" not in result.stderr
    assert not (tmp_path / "newdir").exists() and not missing.parent.exists()


def test_backup_to_stdout_refuses_a_terminal(tmp_path):
    with GatewayProcess(tmp_path / "src") as gw:
        gw.client().create_bucket(Bucket="bkt")
        gw.client().put_object(Bucket="bkt", Key="k", Body=os.urandom(64 * 1024))
    master, slave = pty.openpty()
    try:
        result = gateway_cmd("backup", "--data-dir", gw.data_dir, "-", capture_output=False, stdout=slave,
                             stderr=subprocess.PIPE)
        os.set_blocking(master, False)
        try:
            written = os.read(master, 1 << 20)
        except (BlockingIOError, OSError):
            written = b""
    finally:
        os.close(slave)
        os.close(master)
    assert result.returncode == 2, result.stderr
    assert "standard output is a terminal" in result.stderr and "redirect" in result.stderr
    assert b"cv-backup" not in written and len(written) < 100, written[:200]


def test_the_manifest_gives_the_role_the_registry_gives(tmp_path):
    """A node started with --role redundant that a failover made the primary: its full backup says
    primary, as the registry does, not the settings' redundant."""
    with GatewayProcess(tmp_path / "src") as gw:
        gw.client().create_bucket(Bucket="bkt")
    registry = f"sqlite:///{tmp_path}/registry.db"
    env = {**CLUSTER_ENV, "GATEWAY_NODE_ID": "n1"}
    joined = gateway_cmd("cluster", "join", "--registry", registry, "--advertise", "http://127.0.0.1:9",
                         "--role", "primary", "--node-id", "n1", env=env)
    assert joined.returncode == 0, joined.stderr
    archive = tmp_path / "full.tar"
    result = gateway_cmd("backup", "-q", "--data-dir", gw.data_dir, "--role", "redundant", "--registry", registry,
                         "--advertise", "http://127.0.0.1:9", archive, env=env)
    assert result.returncode == 0, result.stderr
    assert "lists this node (n1) as primary" in result.stderr
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("cv-backup/manifest.json"))
    assert manifest["role"] == "primary"
    check = gateway_cmd("restore", "--check", archive)
    assert "full backup of node n1 (primary," in check.stderr, check.stderr
