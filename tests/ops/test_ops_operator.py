"""`gateway backup`, `restore` and `migrate` as an operator runs them at 3 a.m.: a share that is not
mounted, a restore killed and run again, an archive piped in, a backup piped out that fails.

Real gateways (GatewayProcess), the real CLI as a subprocess from /, every wait bounded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.testing.disks import tmpfs
from gateway.testing.server import GatewayProcess
from ops.test_ops_edges import DEADLINE, MiB, gateway_cmd, no_traceback, popen, wait_for


@pytest.fixture
def source(tmp_path):
    with GatewayProcess(tmp_path / "src") as gw:
        yield gw


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


# A shared store whose share is not mounted ---------------------------------------------------------


def _shared_config(tmp_path: Path, root: Path) -> Path:
    config = tmp_path / "shared.toml"
    config.write_text(f'default_backend = "storage"\n[backends.storage]\ntype = "sharedfs"\nroot = "{root}"\n'
                      "require_mount = true\n")
    return config


@pytest.fixture
def archive_of_a_share(source, tmp_path):
    """A full backup taken while the share was mounted (its tree, served by a plain directory here)."""
    s3 = source.client()
    s3.create_bucket(Bucket="faces")
    s3.put_object(Bucket="faces", Key="cam1/1.jpg", Body=b"a face")
    archive = tmp_path / "full.tar"
    assert gateway_cmd("backup", "-q", "--data-dir", source.data_dir, archive).returncode == 0
    return archive


def test_backup_of_a_share_that_is_not_mounted_is_refused(tmp_path):
    mount_point = tmp_path / "mnt" / "cv-share"
    mount_point.mkdir(parents=True)  # the empty directory the share is mounted on, when it is
    result = gateway_cmd("backup", "--config", _shared_config(tmp_path, mount_point), tmp_path / "nightly.tar")
    # Exit 0 with "0 objects" would pass for a good nightly backup while the share's objects are in none.
    assert result.returncode == 2, result.stderr
    no_traceback(result)
    assert "not a mount point" in result.stderr and "Mount the share there" in result.stderr
    assert not (tmp_path / "nightly.tar").exists() and not (tmp_path / "nightly.tar.partial").exists()


@pytest.mark.parametrize("mounted_on", ["empty directory", "missing"])
def test_restore_onto_a_share_that_is_not_mounted_writes_nothing(archive_of_a_share, tmp_path, mounted_on):
    mount_point = tmp_path / "mnt" / "cv-share"
    if mounted_on == "empty directory":
        mount_point.mkdir(parents=True)
    result = gateway_cmd("restore", "--config", _shared_config(tmp_path, mount_point), archive_of_a_share)
    # Restored there, the objects would sit on this server's own disk, hidden once the share is mounted.
    assert result.returncode == 2, result.stderr
    no_traceback(result)
    assert "mount" in result.stderr.splitlines()[-1].lower()
    assert files_under(mount_point) == []
    assert mounted_on == "empty directory" or not mount_point.exists()  # the backend never creates its root


# A restore killed and run again ---------------------------------------------------------------------


def _restore_temps(store: Path) -> list[Path]:
    return [f for d in (store / ".gateway" / "tmp").glob("*") for f in d.iterdir() if "-ops-" in f.name]


def test_running_a_killed_restore_again_removes_the_half_written_temp_file(source, tmp_path):
    s3 = source.client()
    s3.create_bucket(Bucket="big")
    s3.put_object(Bucket="big", Key="video", Body=os.urandom(96 * MiB))
    archive = tmp_path / "full.tar"
    assert gateway_cmd("backup", "-q", "--data-dir", source.data_dir, archive).returncode == 0
    s3.delete_object(Bucket="big", Key="video")
    store = Path(source.data_dir)

    # The gateway keeps running (docs: it may), so its start-up clean-up never sees the dead file.
    restore = popen("restore", "-q", "--data-dir", store, archive)
    try:
        wait_for(lambda: any(f.stat().st_size > 4 * MiB for f in _restore_temps(store)), "the object's copy", restore)
    finally:
        restore.kill()
        restore.wait(timeout=DEADLINE)
    assert _restore_temps(store), "the kill left no temp file: nothing to test"

    result = gateway_cmd("restore", "-q", "--data-dir", store, archive)
    assert result.returncode == 0, result.stderr
    assert s3.head_object(Bucket="big", Key="video")["ContentLength"] == 96 * MiB
    # Docs: a restore stopped by kill -9 "is finished by running it again". The dead restore's
    # temp file (up to the size of the largest object) must not stay behind, eating the disk.
    assert _restore_temps(store) == []


# An archive piped in ------------------------------------------------------------------------------


def _piped_restore(archive: Path, *args) -> subprocess.CompletedProcess:
    """`ssh backup-host cat cv.tar | gateway restore ... /dev/stdin`: the archive arrives through a pipe."""
    with open(archive, "rb") as f:
        data = f.read()
    return subprocess.run([sys.executable, "-m", "gateway", "restore", *map(str, args), "/dev/stdin"], input=data,
                          capture_output=True, cwd="/", timeout=120)


def test_restore_from_a_pipe_is_refused_up_front_and_check_reads_one(archive_of_a_share, tmp_path):
    target = tmp_path / "target"
    result = _piped_restore(archive_of_a_share, "--data-dir", target)
    err = result.stderr.decode()
    # It used to say "archive OK", then "/dev/stdin is not a backup archive (not a tar file: empty file)":
    # the check had read the pipe to its end, and the restore found nothing left to read.
    assert result.returncode == 2, err
    assert "Traceback" not in err and "archive OK" not in err and "not a tar file" not in err, err
    assert "pipe" in err and "save it to a file" in err, err
    assert files_under(target) == []

    assert _piped_restore(archive_of_a_share, "--check").returncode == 0  # one read is all --check needs
    with open(archive_of_a_share, "rb") as f:  # `gateway restore ... /dev/stdin < cv.tar` is a file: fine
        redirected = subprocess.run([sys.executable, "-m", "gateway", "restore", "-q", "--data-dir", target,
                                     "/dev/stdin"], stdin=f, capture_output=True, text=True, cwd="/", timeout=120)
    assert redirected.returncode == 0, redirected.stderr
    assert "faces/cam1/1.jpg%obj" in files_under(target)


def test_restore_of_dash_reads_standard_input(archive_of_a_share, tmp_path):
    piped = subprocess.run([sys.executable, "-m", "gateway", "restore", "--data-dir", tmp_path / "t", "-"],
                           input=archive_of_a_share.read_bytes(), capture_output=True, cwd="/", timeout=120)
    assert piped.returncode == 2 and b"save it to a file" in piped.stderr, piped.stderr  # not "- does not exist"
    checked = subprocess.run([sys.executable, "-m", "gateway", "restore", "--check", "-"],
                             input=archive_of_a_share.read_bytes(), capture_output=True, cwd="/", timeout=120)
    assert checked.returncode == 0 and b"archive OK" in checked.stderr, checked.stderr


# A backup whose archive cannot be written to the end -------------------------------------------------


@pytest.fixture
def some_objects(source):
    s3 = source.client()
    s3.create_bucket(Bucket="big")
    for i in range(3):
        s3.put_object(Bucket="big", Key=f"k{i}", Body=os.urandom(2 * MiB))
    return source


def test_a_backup_to_standard_output_that_fails_does_not_claim_the_archive_was_removed(some_objects, tmp_path):
    # `gateway backup - > /dev/full`: the disk behind standard output is full. What reached it is no
    # file of ours to remove; the operator has to know it is there, and unfinished.
    result = subprocess.run(f"{sys.executable} -m gateway backup -q --data-dir {some_objects.data_dir} - > /dev/full",
                            shell=True, capture_output=True, text=True, cwd="/", timeout=120)
    assert result.returncode == 2, result.stderr
    no_traceback(result)
    assert "was removed" not in result.stderr, result.stderr
    assert "standard output" in result.stderr and "No space left on device" in result.stderr, result.stderr


def test_a_backup_that_cannot_write_its_archive_names_it(some_objects, tmp_path):
    import resource

    def small_files():  # like a FAT32 disk's 4 GiB limit, or a quota: the archive cannot grow past 1 MiB
        resource.setrlimit(resource.RLIMIT_FSIZE, (MiB, MiB))

    output = tmp_path / "usb" / "cv.tar"
    output.parent.mkdir()
    result = subprocess.run([sys.executable, "-m", "gateway", "backup", "-q", "--data-dir", some_objects.data_dir,
                             output], capture_output=True, text=True, cwd="/", timeout=120, preexec_fn=small_files)
    assert result.returncode == 2, result.stderr
    no_traceback(result)
    # Not just "[Errno 27] File too large": which file, so the operator knows it is the archive's disk.
    assert str(output) in result.stderr and "File too large" in result.stderr, result.stderr
    assert list(output.parent.iterdir()) == []


# A damaged manifest ---------------------------------------------------------------------------------


def test_a_flipped_byte_in_the_manifest_is_found_by_the_check(archive_of_a_share, tmp_path):
    data = bytearray(archive_of_a_share.read_bytes())
    at = data.index(b'"gateway_version": "') + len(b'"gateway_version": "')  # inside the manifest's JSON
    data[at] ^= 0x02  # "0.1.0" -> "2.1.0": still valid JSON, a different manifest
    damaged = tmp_path / "damaged.tar"
    damaged.write_bytes(bytes(data))
    result = gateway_cmd("restore", "--check", damaged)
    # Docs: "every file against its SHA-256"; the manifest says where the backup goes (its node, its
    # stores), so a manifest that is not the one the backup wrote must not pass as "archive OK".
    assert result.returncode == 2, result.stderr
    no_traceback(result)
    assert "manifest" in result.stderr and "damaged" in result.stderr, result.stderr


def test_a_restore_that_cannot_write_an_object_names_it(some_objects, tmp_path):
    import resource

    archive = tmp_path / "full.tar"
    assert gateway_cmd("backup", "-q", "--data-dir", some_objects.data_dir, archive).returncode == 0

    def small_files():  # a full disk or a quota, as far as the restore can tell: no file past 1 MiB
        resource.setrlimit(resource.RLIMIT_FSIZE, (MiB, MiB))

    target = tmp_path / "target"
    result = subprocess.run([sys.executable, "-m", "gateway", "restore", "-q", "--data-dir", target, archive],
                            capture_output=True, text=True, cwd="/", timeout=120, preexec_fn=small_files)
    assert result.returncode == 2, result.stderr
    no_traceback(result)
    # Not just "[Errno 27] File too large": where, so the operator knows which disk to free.
    assert "File too large" in result.stderr and str(target / "big" / "k0%obj") in result.stderr, result.stderr
    assert _restore_temps(target) == []


# Migrate onto a share mounted read-only ---------------------------------------------------------------


@pytest.fixture
def read_only_mount(tmp_path):
    with tmpfs(tmp_path / "ro-share", "4m", read_only=True) as mount_point:
        yield mount_point


def test_a_backup_into_a_read_only_directory_says_what_to_do(some_objects, read_only_mount):
    result = gateway_cmd("backup", "--data-dir", some_objects.data_dir, read_only_mount)
    assert result.returncode == 2, result.stderr
    no_traceback(result)
    assert "Read-only file system" in result.stderr and "remount it read-write" in result.stderr, result.stderr


def test_migrate_onto_a_read_only_share_says_read_only(some_objects, read_only_mount):
    result = gateway_cmd("migrate", "--data-dir", some_objects.data_dir, "--to", read_only_mount)
    assert result.returncode == 2, result.stderr
    no_traceback(result)
    # Not "not writable by this user: run as the gateway's user, or fix the mount's owner".
    assert "read-only" in result.stderr and "owner" not in result.stderr, result.stderr


def test_restore_onto_a_share_uses_the_servers_host_id_for_its_temp_files(archive_of_a_share, tmp_path):
    """Servers sharing a store write their temp files under .gateway/tmp/<host_id>/, and take what a
    dead process left there for theirs to remove. Restore used the host name even when the sharedfs
    backend names this server otherwise (host_id: containers often share a host name), so it removed
    another server's temp files and never its own."""
    import socket

    share = tmp_path / "share"
    share.mkdir()
    config = tmp_path / "shared.toml"
    config.write_text(f'default_backend = "storage"\n[backends.storage]\ntype = "sharedfs"\nroot = "{share}"\n'
                      'host_id = "recorder-7"\n')
    dead = "999999999.1-ops-0-deadbeef"  # named as a restore's temp file, by a process that is gone
    ours = share / ".gateway" / "tmp" / "recorder-7" / dead
    other = share / ".gateway" / "tmp" / (socket.gethostname() or "localhost") / dead
    for path in (ours, other):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"half an object")
    result = gateway_cmd("restore", "-q", "--config", config, archive_of_a_share)
    assert result.returncode == 0, result.stderr
    assert (share / "faces").is_dir()
    assert not ours.exists(), "this server's dead temp file stayed"
    assert other.exists(), "another server's temp file was taken for this server's"


@pytest.mark.parametrize("settings, said", [
    (lambda tmp: ["--config", _bad_port_config(tmp)], "port"),
    (lambda tmp: ["--data-dir", tmp / "new", "--role", "redundant"], "registry"),
])
def test_a_wrong_setting_is_refused_before_the_archive_is_read(archive_of_a_share, tmp_path, settings, said):
    """A setting that is wrong whatever the archive holds is said at once (the archive's check takes
    hours for a large one), as backup says it; only a file the archive restores is waited for."""
    result = gateway_cmd("restore", *settings(tmp_path), archive_of_a_share)
    assert result.returncode == 2, result.stderr
    no_traceback(result)
    assert said in result.stderr and "archive OK" not in result.stderr and "checking" not in result.stderr, \
        result.stderr
    assert not (tmp_path / "new").exists()


def _bad_port_config(tmp_path: Path) -> Path:
    config = tmp_path / "bad.toml"
    config.write_text(f'data_dir = "{tmp_path / "new"}"\nport = "notaport"\n')
    return config


def test_a_bucket_made_again_since_the_backup_is_not_reported_as_a_kept_object(source, tmp_path):
    """Its %bucket.json differs from the backup's (another creation time): it was listed among the kept
    objects, with the advice to restore again with --overwrite, though it is no object."""
    s3 = source.client()
    s3.create_bucket(Bucket="again")
    s3.put_object(Bucket="again", Key="a.jpg", Body=b"a face")
    archive = tmp_path / "full.tar"
    assert gateway_cmd("backup", "-q", "--data-dir", source.data_dir, archive).returncode == 0
    s3.delete_object(Bucket="again", Key="a.jpg")
    s3.delete_bucket(Bucket="again")
    s3.create_bucket(Bucket="again")
    result = gateway_cmd("restore", "--data-dir", source.data_dir, archive)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "kept:" not in result.stderr and "--overwrite" not in result.stderr, result.stderr
    assert "1 layout file left as found" in result.stderr, result.stderr
    assert s3.get_object(Bucket="again", Key="a.jpg")["Body"].read() == b"a face"
