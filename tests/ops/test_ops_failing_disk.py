"""`gateway backup`, `restore` and `migrate` when a disk fails with EIO under them: the archive's, the
store's, the share's. Each message names the file and the disk that failed, and what to do; nothing
is said to be removed that is still there, and an I/O error never passes for a missing file.

A FUSE passthrough fails every call on demand (gateway/testing/faulty_disk.py). To fail it at one
step of a command, not at a moment guessed with a sleep, the real CLI runs through
tests/ops/fail_disk_at.py, which fails the disk when the tool first calls a given function.
"""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.testing.faulty_disk import FaultyDisk
from gateway.testing.server import GatewayProcess
from ops.test_ops_edges import MiB, gateway_cmd, no_traceback

FAIL_DISK_AT = Path(__file__).with_name("fail_disk_at.py")


def gateway_failing(disk: FaultyDisk, at: str, *args) -> subprocess.CompletedProcess:
    """``gateway ARGS``, the disk failing when the tool first calls ``at`` (module:qualname)."""
    result = subprocess.run([sys.executable, FAIL_DISK_AT, disk.switch, at, *map(str, args)], capture_output=True,
                            text=True, timeout=180, cwd="/")
    assert f"the disk fails before {at.partition(':')[2]}" in result.stderr, result.stderr
    return result


def fill(data_dir: Path, objects: int = 3, size: int = 2 * MiB) -> None:
    """A store with ``objects`` objects of ``size`` bytes in bucket "faces" (more than the archive's
    1 MiB buffer, so the archive's disk is written while the store is read)."""
    with GatewayProcess(data_dir) as gw:
        s3 = gw.client()
        s3.create_bucket(Bucket="faces")
        for n in range(objects):
            s3.put_object(Bucket="faces", Key=f"cam1/{n}.jpg", Body=bytes([n]) * size)


@pytest.fixture
def store(tmp_path) -> Path:
    fill(tmp_path / "cv")
    return tmp_path / "cv"


@pytest.fixture
def disk(tmp_path):
    with FaultyDisk(tmp_path / "backing", tmp_path / "disk") as faulty:
        yield faulty


def last_error(result) -> str:
    no_traceback(result)
    return result.stderr.strip().splitlines()[-1]


# Backup ---------------------------------------------------------------------------------------------


def test_backup_onto_a_failing_disk_says_the_unfinished_archive_is_still_there_and_that_the_disk_failed(store, disk):
    """Before: "the unfinished archive was removed. Free space there (or raise the limit)" while the
    .partial was still there (its unlink failed too) and the disk was not full."""
    result = gateway_failing(disk, "gateway.ops.backup:_add_store", "backup", "--data-dir", store, disk.path)
    assert result.returncode == 2, result.stderr
    message = last_error(result)
    (partial,) = [name for name in os.listdir(disk.backing) if name.endswith(".tar.partial")]
    assert f"cannot write the archive {disk.path / partial}: Input/output error" in message
    assert f"the unfinished archive {disk.path / partial} could not be removed" in message
    assert "delete it" in message and "dmesg" in message and "another disk" in message
    assert "was removed" not in message and "Free space" not in message

    disk.heal()  # the next backup into that directory names it
    again = gateway_cmd("backup", "-q", "--data-dir", store, disk.path)
    assert again.returncode == 0, again.stderr
    assert "holds 1 unfinished archive(s)" in again.stderr and partial in again.stderr


def test_an_interrupted_backup_says_its_unfinished_archive_is_still_there_when_it_could_not_be_removed(store, disk):
    """Ctrl-C while the archive is written, and the archive's disk fails as the clean-up removes it.
    Before: "the unfinished archive was removed" (the command line said it without knowing), exit 130."""
    result = gateway_failing(disk, "gateway.ops.backup:_discard", "--interrupt-before", "gateway.ops.backup:_add_store",
                             "backup", "--data-dir", store, disk.path)
    assert "Ctrl-C before _add_store" in result.stderr, result.stderr
    assert result.returncode == 130, result.stderr
    message = last_error(result)
    (partial,) = [name for name in os.listdir(disk.backing) if name.endswith(".tar.partial")]
    assert message.startswith("error: interrupted: the backup was stopped"), message
    assert f"the unfinished archive {disk.path / partial} could not be removed (Input/output error)" in message
    assert "was removed" not in message


def test_an_interrupted_backup_says_its_unfinished_archive_was_removed(store, tmp_path):
    """The same on a disk that works: the .partial is gone, and the message says so."""
    archives = tmp_path / "archives"
    archives.mkdir()
    result = subprocess.run([sys.executable, FAIL_DISK_AT, tmp_path / "unused-switch", "gateway.ops.backup:_discard",
                             "--interrupt-before", "gateway.ops.backup:_add_store",
                             "backup", "--data-dir", store, archives], capture_output=True, text=True, timeout=180)
    assert result.returncode == 130, result.stderr
    assert os.listdir(archives) == []
    assert last_error(result) == "error: interrupted: the backup was stopped; the unfinished archive was removed"


def test_backup_of_a_failing_store_names_the_file_it_could_not_read_and_says_it_is_the_store(tmp_path, disk):
    """Before: "the backup failed: [Errno 5] Input/output error; the unfinished archive was removed"."""
    fill(disk.path / "cv")
    out = tmp_path / "out"
    out.mkdir()
    result = gateway_failing(disk, "gateway.ops.backup:_add_open_file", "backup", "--data-dir", disk.path / "cv", out)
    assert result.returncode == 2, result.stderr
    message = last_error(result)
    assert f"cannot read {disk.path / 'cv' / 'faces'}/" in message and ": Input/output error (errno 5)" in message
    assert "reading the store failed, not writing the archive" in message and "dmesg" in message
    assert "the unfinished archive was removed" in message
    assert os.listdir(out) == []


def test_a_backup_into_a_directory_takes_a_new_name_when_the_time_stamped_one_is_taken(store, tmp_path):
    """Before: a second backup in the same second was refused, "... already exists: give a new file
    name, or a directory to name it after the time", a directory given. Here every name of the next
    minute is taken, as a backup a moment earlier takes the one of its second."""
    out = tmp_path / "out"
    out.mkdir()
    now = datetime.datetime.now()
    for second in range(60):
        stamp = (now + datetime.timedelta(seconds=second)).strftime("%Y%m%d-%H%M%S")
        (out / f"cv-backup-objects-{socket.gethostname()}-{stamp}.tar").write_bytes(b"an earlier backup")
    result = gateway_cmd("backup", "-q", "-o", "--data-dir", store, out)
    assert result.returncode == 0, result.stderr
    (made,) = [name for name in os.listdir(out) if name.endswith("-2.tar")]
    assert gateway_cmd("restore", "--check", out / made).returncode == 0
    assert len(os.listdir(out)) == 61

    named = out / made  # a file name given is still never overwritten
    refused = gateway_cmd("backup", "-q", "-o", "--data-dir", store, named)
    assert refused.returncode == 2 and "already exists" in refused.stderr


# Restore --------------------------------------------------------------------------------------------


def test_restore_from_an_archive_whose_disk_fails_names_the_archive_not_a_file_of_the_store(store, tmp_path, disk):
    """Before: "the restore stopped: <store>/faces/%bucket.json: Input/output error", the archive's
    read error reported against the file being written."""
    archive = disk.path / "full.tar"
    assert gateway_cmd("backup", "-q", "--data-dir", store, archive).returncode == 0
    target = tmp_path / "restored"
    result = gateway_failing(disk, "gateway.ops.tree:Installer.install", "restore", "--data-dir", target, archive)
    assert result.returncode == 2, result.stderr
    message = last_error(result)
    assert f"cannot read the archive {archive}: Input/output error (errno 5)" in message, message
    assert "dmesg" in message and "run the same command again" in message
    assert str(target) not in message

    disk.heal()
    again = gateway_cmd("restore", "-q", "--data-dir", target, archive)
    assert again.returncode == 0, again.stderr


# Migrate --------------------------------------------------------------------------------------------


def migrate_cmd(store: Path, target: Path) -> subprocess.CompletedProcess:
    return gateway_cmd("migrate", "-q", "--data-dir", store, "--to", target)


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_migrate_onto_a_target_that_fails_stops_at_once_and_never_calls_it_another_version(tmp_path, disk):
    """Before: the copy read back with EIO said "after the copy the target holds another version",
    and the pass went on with every remaining file, one error line each."""
    fill(tmp_path / "cv", objects=20, size=1024)
    result = gateway_failing(disk, "gateway.ops.migrate:object_header", "migrate", "-q", "--data-dir",
                             tmp_path / "cv", "--to", disk.path)
    assert result.returncode == 2, result.stderr
    assert "another version" not in result.stderr
    (message,) = error_lines(result)
    assert f"the target {disk.path} failed (Input/output error, errno 5)" in message
    assert "the pass stopped after copying 0 objects" in message and "every copy made so far is whole" in message

    disk.heal()
    again = migrate_cmd(tmp_path / "cv", disk.path)
    assert again.returncode == 0 and "verified: all" in again.stdout, again.stdout + again.stderr


def test_a_deletion_is_not_forgotten_when_the_target_cannot_be_read(tmp_path, disk):
    """Before: the target's copy read with EIO passed for "not there", and the journal forgot the
    object deleted here: it stayed on the share for good."""
    store = tmp_path / "cv"
    fill(store, objects=2, size=1024)
    assert migrate_cmd(store, disk.path).returncode == 0
    (deleted, _) = sorted((store / "faces").rglob("*%obj"))
    on_target = disk.backing / deleted.relative_to(store)
    assert on_target.exists()
    deleted.unlink()

    failed = gateway_failing(disk, "gateway.ops.migrate:Migration._remove_deleted", "migrate", "-q", "--data-dir",
                             store, "--to", disk.path)
    assert failed.returncode == 2 and "the target" in error_lines(failed)[-1], failed.stderr
    assert on_target.exists()

    disk.heal()
    again = migrate_cmd(store, disk.path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "removed as deleted:        1" in again.stdout
    assert not on_target.exists()


def test_a_verification_that_cannot_read_the_target_says_not_checked_not_missing(tmp_path, disk):
    """Before: "verification FAILED: N files of this server are not on the target" while they were
    there and only could not be read."""
    fill(tmp_path / "cv", objects=3, size=1024)
    result = gateway_failing(disk, "gateway.ops.migrate:Migration._verify", "migrate", "-q", "--data-dir",
                             tmp_path / "cv", "--to", disk.path)
    assert result.returncode == 1, result.stderr
    assert "are not on the target" not in result.stdout
    assert "files of this server could not be checked on the target: reading it failed (Input/output error, " \
           "errno 5" in result.stdout, result.stdout
    assert "run the pass again once the target works" in result.stdout
    assert "Next steps" not in result.stdout


def test_migrate_from_a_failing_store_names_the_files_and_says_the_store_could_not_be_read(tmp_path, disk):
    """Before: "error: Input/output error", no path (a file's stat in the walk failed)."""
    fill(disk.path / "cv", objects=3, size=1024)
    target = tmp_path / "share"
    target.mkdir()
    result = gateway_failing(disk, "gateway.ops.migrate:Migration._object", "migrate", "-q", "--data-dir",
                             disk.path / "cv", "--to", target)
    assert result.returncode in (1, 2), result.stderr
    errors = error_lines(result)
    assert errors and all(str(disk.path / "cv") in line or "%obj: " in line for line in errors), errors
    assert any(f"the store {disk.path / 'cv'} could not be read: cannot read {disk.path / 'cv'}/" in line
               for line in errors), errors
    assert "error: Input/output error" not in result.stderr
