"""Edge cases of `gateway backup`, `gateway restore` and `gateway migrate`: hostile archives, races
with a running gateway, interruptions, symlinked buckets, damaged journals.

Run as the other ops tests do: real gateways (GatewayProcess), the real CLI as a subprocess from /.
Archives with odd contents are made with tarfile, in the format `gateway backup` writes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from gateway.testing.server import GatewayProcess

SHA = "SCHILY.xattr.user.cv-gateway.sha256"
PATH = "SCHILY.xattr.user.cv-gateway.path"
MiB = 1024 * 1024
DEADLINE = 60.0


def gateway_cmd(*args, env=None, timeout=180, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, cwd="/", **kw)


def popen(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gateway", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd="/", **kw)


def temp_file_over(tmp_dir: Path, size: int, marker: str = "") -> bool:
    """Whether a temp file under ``tmp_dir`` (one directory per host) with ``marker`` in its name holds more
    than ``size`` bytes. A writer renames its finished temp files away: one gone between the listing and
    its stat is not it (a migrate's small copy, seen in CI: FileNotFoundError)."""
    for directory in tmp_dir.glob("*"):
        for path in directory.glob("*"):
            try:
                if marker in path.name and path.stat().st_size > size:
                    return True
            except FileNotFoundError:
                continue
    return False


def wait_for(predicate, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the command ended before {what}: make the objects bigger")
        time.sleep(0.002)
    raise AssertionError(f"timed out waiting for {what}")


def no_traceback(result) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error:"), result.stderr


def manifest(**over) -> dict:
    m = {"format": 1, "kind": "full", "created": "2026-01-01T00:00:00+00:00", "gateway_version": "0.1.0",
         "node": "vm", "role": None, "hostname": "vm",
         "stores": [{"name": "local", "type": "local", "root": "/x", "shared": False}], "registry": None, "notes": []}
    m.update(over)
    return m


def craft(path: Path, members: list, man=None, summary=None, raw_manifest: bytes | None = None) -> Path:
    """A tar laid out like `gateway backup`'s: the manifest, the members, a summary whose counts match."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        def add(name, data=b"", typ=tarfile.REGTYPE, pax=None):
            info = tarfile.TarInfo(name)
            info.type = typ
            info.mtime = int(time.time())
            if typ == tarfile.REGTYPE:
                info.size = len(data)
                info.pax_headers = {SHA: hashlib.sha256(data).hexdigest(), **(pax or {})}
                tar.addfile(info, io.BytesIO(data))
            else:
                info.mode = 0o755
                tar.addfile(info)

        add("cv-backup/manifest.json", raw_manifest if raw_manifest is not None else json.dumps(man or manifest()).encode())
        files = objects = nbytes = 0
        for name, data, *rest in members:
            opts = rest[0] if rest else {}
            add(name, data, **opts)
            if name.startswith("cv-backup/storage/") and opts.get("typ", tarfile.REGTYPE) == tarfile.REGTYPE:
                files, nbytes, objects = files + 1, nbytes + len(data), objects + name.endswith("%obj")
        add("cv-backup/summary.json", json.dumps(summary if summary is not None else
                                                 {"objects": objects, "files": files, "bytes": nbytes}).encode())
    return path


@pytest.fixture
def source(tmp_path):
    with GatewayProcess(tmp_path / "src") as gw:
        yield gw


# Restore: archives that are not what `gateway backup` writes --------------------------------------


def test_check_refuses_a_member_of_a_store_the_manifest_does_not_list(tmp_path):
    archive = craft(tmp_path / "a.tar", [("cv-backup/storage/local/bkt/x%obj", b"hello"),
                                          ("cv-backup/storage/other/bkt/y%obj", b"yo")])
    check = gateway_cmd("restore", "--check", archive)
    target = tmp_path / "restored"
    result = gateway_cmd("restore", "--data-dir", target, archive)
    # Expected: the check (step 1, "nothing is written" on a bad archive) refuses it, with an error line.
    assert result.returncode == 2, result.stderr
    no_traceback(result)
    assert not (target / "bkt").exists(), "files were restored from an archive that was then refused"
    assert check.returncode == 2, check.stderr


@pytest.mark.parametrize("case", ["manifest-is-a-list", "manifest-lacks-kind-and-stores", "summary-is-a-list"])
def test_check_refuses_a_manifest_or_summary_of_another_shape(tmp_path, case):
    if case == "manifest-is-a-list":
        archive = craft(tmp_path / "a.tar", [], raw_manifest=b"[1, 2]")
    elif case == "manifest-lacks-kind-and-stores":
        archive = craft(tmp_path / "a.tar", [], man={"format": 1})
    else:
        archive = craft(tmp_path / "a.tar", [], summary=[1])
    result = gateway_cmd("restore", "--check", archive)
    assert result.returncode == 2, result.stderr
    no_traceback(result)


def test_check_refuses_a_node_file_of_an_unknown_kind(tmp_path):
    victim = tmp_path / "elsewhere" / "authorized_keys"
    config = tmp_path / "gateway.toml"
    config.write_text(f'data_dir = "{tmp_path / "store"}"\n')
    archive = craft(tmp_path / "a.tar", [("cv-backup/files/evil/x", b"planted", {"pax": {PATH: str(victim)}})])
    result = gateway_cmd("restore", "--config", config, archive)
    # Only config, tls_cert, tls_key, tls_ca and registry are node files; anything else must be refused
    # (the check lets it through and the restore writes it wherever its pax record says).
    assert not victim.exists(), f"restore wrote {victim}:\n{result.stderr}"


def test_a_directory_member_for_the_store_itself_restores(tmp_path):
    # A store's own directory as a member, after an object (what `tar cf` of cv-backup/storage/local gives).
    archive = craft(tmp_path / "a.tar", [("cv-backup/storage/local/bkt/x%obj", b"hello"),
                                          ("cv-backup/storage/local", b"", {"typ": tarfile.DIRTYPE}),
                                          ("cv-backup/storage/local/bkt/y%obj", b"world")])
    check = gateway_cmd("restore", "--check", archive)
    result = gateway_cmd("restore", "--data-dir", tmp_path / "restored", archive)
    assert check.returncode == 0, check.stderr  # "archive OK" ...
    assert result.returncode == 0, result.stderr  # ... yet the restore stops after writing x%obj


def test_check_refuses_duplicate_members(tmp_path):
    archive = craft(tmp_path / "a.tar", [("cv-backup/storage/local/bkt/x%obj", b"one"),
                                          ("cv-backup/storage/local/bkt/x%obj", b"two")])
    check = gateway_cmd("restore", "--check", archive)
    result = gateway_cmd("restore", "--data-dir", tmp_path / "restored", archive)
    # The restore puts back "one" (tar xf would give "two") and reports the archive's own second copy
    # as "kept at their current version (they differ from the backup: written after it)".
    assert check.returncode == 2 or "kept" not in result.stderr, result.stderr


# Restore into a running gateway -------------------------------------------------------------------


def test_restore_keeps_an_object_put_while_it_runs(source, tmp_path):
    s3 = source.client()
    s3.create_bucket(Bucket="big")
    s3.put_object(Bucket="big", Key="k", Body=os.urandom(64 * MiB))
    archive = tmp_path / "full.tar"
    assert gateway_cmd("backup", "-q", "--data-dir", source.data_dir, archive).returncode == 0
    s3.delete_object(Bucket="big", Key="k")

    restore = popen("restore", "-q", "--data-dir", source.data_dir, archive)
    tmp_dir = Path(source.data_dir) / ".gateway" / "tmp"

    try:
        wait_for(lambda: temp_file_over(tmp_dir, 0, "-ops-"), "the restore writes the object", restore)
        restore.send_signal(signal.SIGSTOP)
        s3.put_object(Bucket="big", Key="k", Body=b"written after the backup")  # a client's new version
    finally:
        restore.send_signal(signal.SIGCONT)
        _, err = restore.communicate(timeout=DEADLINE)
    assert restore.returncode == 0, err
    # Docs: an object that differs from the backup's copy was written after it: it is kept.
    assert s3.get_object(Bucket="big", Key="k")["Body"].read() == b"written after the backup", err


# Backup ---------------------------------------------------------------------------------------------


def test_backup_to_a_closed_stdout_says_so(source):
    result = subprocess.run(f"{sys.executable} -m gateway backup -q --data-dir {source.data_dir} - >&-", shell=True,
                            capture_output=True, text=True, cwd="/", timeout=120)
    assert result.returncode == 2, result.stderr
    no_traceback(result)


@contextmanager
def _backup_frozen_mid_write(source, output):
    """A backup of 96 MiB to ``output``, frozen (SIGSTOP) once 4 MiB are written; resumed and finished on
    exit. Yields the backup's Popen."""
    s3 = source.client()
    s3.create_bucket(Bucket="big")
    for i in range(3):
        s3.put_object(Bucket="big", Key=f"k{i}", Body=os.urandom(32 * MiB))
    partial = output.with_name(output.name + ".partial")
    backup = popen("backup", "-q", "--data-dir", source.data_dir, output)
    try:
        wait_for(lambda: partial.exists() and partial.stat().st_size > 4 * MiB, "the backup writes", backup)
        backup.send_signal(signal.SIGSTOP)
        yield backup
    finally:
        backup.send_signal(signal.SIGCONT)
        backup.communicate(timeout=DEADLINE)


def test_backup_never_overwrites_an_output_file_that_appears_while_it_runs(source, tmp_path):
    output = tmp_path / "out.tar"
    with _backup_frozen_mid_write(source, output):
        output.write_bytes(b"an operator's file")
    # Docs: "An existing file is never overwritten."
    assert output.read_bytes() == b"an operator's file"


def test_a_second_backup_to_the_same_output_is_refused(source, tmp_path):
    output = tmp_path / "out.tar"
    with _backup_frozen_mid_write(source, output) as first:
        s3 = source.client()
        s3.create_bucket(Bucket="aaa")
        s3.put_object(Bucket="aaa", Key="new", Body=os.urandom(MiB))
        second = gateway_cmd("backup", "-q", "--data-dir", source.data_dir, output)
    check = gateway_cmd("restore", "--check", output)
    # Whichever backup said it finished (exit 0) must have left a good archive: the second one
    # truncated the first's OUTPUT.partial (O_TRUNC, no O_EXCL) and both wrote into the same file.
    ok = [p for p in (first, second) if p.returncode == 0]
    assert ok, "neither backup finished"
    assert check.returncode == 0, f"a backup exited 0, but its archive is damaged:\n{check.stderr}"


def test_a_backup_stopped_with_ctrl_c_exits_130(source, tmp_path):
    s3 = source.client()
    s3.create_bucket(Bucket="big")
    for i in range(4):
        s3.put_object(Bucket="big", Key=f"k{i}", Body=os.urandom(32 * MiB))
    output = tmp_path / "out.tar"
    partial = tmp_path / "out.tar.partial"
    backup = popen("backup", "--data-dir", source.data_dir, output)
    wait_for(lambda: partial.exists() and partial.stat().st_size > 4 * MiB, "the backup writes", backup)
    backup.send_signal(signal.SIGINT)
    _, err = backup.communicate(timeout=DEADLINE)
    assert not output.exists()
    # Docs: "Exit status: 0 done; 1 done, but some object files did not parse; 2 nothing written".
    assert backup.returncode not in (0, 1), f"exit {backup.returncode}: {err}"


# Objects the gateway serves that the tools leave out ---------------------------------------------------


@pytest.fixture
def symlinked_bucket(source, tmp_path):
    """A bucket whose directory is a symlink to another disk: the gateway serves it like any other."""
    elsewhere = tmp_path / "other-disk" / "photos"
    elsewhere.mkdir(parents=True)
    os.symlink(elsewhere, Path(source.data_dir) / "photos")
    s3 = source.client()
    s3.put_object(Bucket="photos", Key="p1.jpg", Body=b"a picture")
    assert s3.get_object(Bucket="photos", Key="p1.jpg")["Body"].read() == b"a picture"
    return s3


def test_backup_follows_a_symlinked_bucket(source, tmp_path, symlinked_bucket):
    archive = tmp_path / "full.tar"
    result = gateway_cmd("backup", "--data-dir", source.data_dir, archive)
    assert result.returncode == 0, result.stderr
    gateway_cmd("restore", "-q", "--data-dir", tmp_path / "restored", archive)
    with GatewayProcess(tmp_path / "restored") as restored:
        r3 = restored.client()
        try:
            found = r3.get_object(Bucket="photos", Key="p1.jpg")["Body"].read() == b"a picture"
        except r3.exceptions.NoSuchKey:
            found = False
    # Either the object is in the backup, or the backup says it left something out.
    assert found or "photos" in result.stderr, result.stderr


def test_migrate_follows_a_symlinked_bucket(source, tmp_path, symlinked_bucket):
    share = tmp_path / "share"
    share.mkdir()
    result = gateway_cmd("migrate", "-q", "--data-dir", source.data_dir, "--to", share)
    copied = (share / "photos" / "p1.jpg%obj").exists()
    # "verified: all ..." and exit 0 tell the operator to switch to the share, where the object is missing.
    assert copied or result.returncode != 0, result.stdout + result.stderr


# Migrate: the journal ------------------------------------------------------------------------------------


def _journal_base(data_dir: Path, share: Path) -> Path:
    from gateway.ops.migrate_journal import journal_dir, target_key

    return Path(journal_dir(str(data_dir))) / target_key(os.path.realpath(share))


def test_migrate_skips_and_reports_damaged_journal_lines(source, tmp_path):
    s3 = source.client()
    s3.create_bucket(Bucket="bkt")
    s3.put_object(Bucket="bkt", Key="k", Body=b"data")
    share = tmp_path / "share"
    share.mkdir()
    assert gateway_cmd("migrate", "-q", "--data-dir", source.data_dir, "--to", share).returncode == 0
    log = _journal_base(Path(source.data_dir), share).with_suffix(".log")
    log.write_bytes(b"\xff\xfe\x00garbage from a bad disk\x81\n")
    result = gateway_cmd("migrate", "-q", "--data-dir", source.data_dir, "--to", share)
    assert "Traceback" not in result.stderr, result.stderr
    # The damaged line is skipped, and said so: the pass itself completes.
    assert result.returncode == 0 and "1 lines of the journal" in result.stderr, result.stdout + result.stderr


def test_migrate_after_a_torn_journal_line_and_a_second_kill_still_removes_a_deleted_object(source, tmp_path):
    s3 = source.client()
    s3.create_bucket(Bucket="bkt")
    for i in range(5):
        s3.put_object(Bucket="bkt", Key=f"a{i}", Body=b"small %d" % i)
    s3.put_object(Bucket="bkt", Key="zbig", Body=os.urandom(128 * MiB))
    share = tmp_path / "share"
    share.mkdir()
    log = _journal_base(Path(source.data_dir), share).with_suffix(".log")
    log.parent.mkdir(parents=True)
    # What a pass killed in the middle of a log write leaves (the docs: "A torn last line is ignored").
    log.write_text('["+", "bkt/old%o')

    # The next pass copies the small objects (journaled after the torn line) and is killed during the big one.
    tmp_dir = share / ".gateway" / "tmp"
    migrate = popen("migrate", "-q", "--data-dir", source.data_dir, "--to", share)
    try:
        wait_for(lambda: temp_file_over(tmp_dir, 8 * MiB), "the big copy", migrate)
    finally:
        migrate.kill()
        migrate.wait(timeout=DEADLINE)
    assert (share / "bkt" / "a1%obj").exists()

    s3.delete_object(Bucket="bkt", Key="a1")  # deleted here after it was copied
    result = gateway_cmd("migrate", "-q", "--data-dir", source.data_dir, "--to", share)
    assert result.returncode == 0, result.stdout + result.stderr
    # Docs: a later pass removes from the share what was deleted here since an earlier pass copied it;
    # "a pass killed at any moment leaves a journal that knows every copy it may have made".
    assert not (share / "bkt" / "a1%obj").exists(), "the deleted object stays on the share"


def test_a_key_of_a_thousand_slashes_lists_backs_up_restores_and_migrates(tmp_path):
    """Each empty segment of a key is one directory: "/" * 1024 (a valid S3 key) is 1,024 nested
    directories. The walks recursed once per level: every listing of the bucket was a 500, DeleteBucket
    a 500, and a restore stopped there with a RecursionError, losing every bucket after it."""
    try:
        data = tmp_path / "cv-storage"
        deep = "/" * 1024
        with GatewayProcess(data) as gw:
            s3 = gw.client()
            for bucket in ("aaa", "zzz"):
                s3.create_bucket(Bucket=bucket)
            s3.put_object(Bucket="aaa", Key="photo.jpg", Body=b"1")
            s3.put_object(Bucket="aaa", Key=deep, Body=b"deep")
            s3.put_object(Bucket="aaa", Key="x/" * 511 + "y", Body=b"deep too")
            s3.put_object(Bucket="zzz", Key="important.jpg", Body=b"3")
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket="aaa")["Contents"]]
            assert keys == [deep, "photo.jpg", "x/" * 511 + "y"]
            page = s3.list_objects_v2(Bucket="aaa", Delimiter="/")
            assert [p["Prefix"] for p in page["CommonPrefixes"]] == ["/", "x/"]
            assert [o["Key"] for o in s3.list_objects(Bucket="aaa", Prefix="//", MaxKeys=1)["Contents"]] == [deep]
            with pytest.raises(Exception) as info:
                s3.delete_bucket(Bucket="aaa")
            assert "BucketNotEmpty" in str(info.value)
        archive = tmp_path / "full.tar"
        result = gateway_cmd("backup", "-q", "--data-dir", data, archive)
        assert result.returncode == 0, result.stderr
        restored = tmp_path / "restored"
        result = gateway_cmd("restore", "--data-dir", restored, archive)
        assert result.returncode == 0, result.stdout + result.stderr
        share = tmp_path / "share"
        share.mkdir()
        result = gateway_cmd("migrate", "--quiet", "--to", share, "--data-dir", data)
        assert result.returncode == 0, result.stdout + result.stderr
        for tree in (restored, share):
            with GatewayProcess(tree) as gw:
                s3 = gw.client()
                assert s3.get_object(Bucket="aaa", Key=deep)["Body"].read() == b"deep"
                assert s3.get_object(Bucket="zzz", Key="important.jpg")["Body"].read() == b"3"
                assert len(s3.list_objects_v2(Bucket="aaa")["Contents"]) == 3
                s3.delete_object(Bucket="aaa", Key=deep)
                assert [o["Key"] for o in s3.list_objects_v2(Bucket="aaa")["Contents"]] == ["photo.jpg", "x/" * 511 + "y"]
    finally:  # shutil.rmtree (pytest's clean-up of old temp dirs) recurses once per level too
        subprocess.run(["rm", "-rf", str(tmp_path)], check=False, timeout=60)


def test_a_damaged_header_in_the_middle_is_not_called_cut_short(tmp_path):
    """tarfile takes an unreadable header after the first member for the end of the archive: the
    restore said "cut short (the backup did not finish, or the copy is incomplete)" of a whole-length
    archive with one flipped byte, sending the operator after the wrong cause."""
    data = tmp_path / "cv-storage"
    with GatewayProcess(data) as gw:
        s3 = gw.client()
        s3.create_bucket(Bucket="faces")
        for i in range(10):
            s3.put_object(Bucket="faces", Key=f"cam/{i}.jpg", Body=os.urandom(3000))
    archive = tmp_path / "full.tar"
    assert gateway_cmd("backup", "-q", "--data-dir", data, archive).returncode == 0
    with tarfile.open(archive) as tar:
        middle = [m for m in tar.getmembers() if m.name.endswith("5.jpg%obj")][0]
    raw = bytearray(archive.read_bytes())
    raw[middle.offset] ^= 0x55  # one byte of its header block: the header's checksum fails
    archive.write_bytes(bytes(raw))
    result = gateway_cmd("restore", "--check", archive)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "is damaged" in result.stderr and "cut short" not in result.stderr, result.stderr
    # An archive really cut short is still called so.
    archive.write_bytes(bytes(raw[:middle.offset]))
    result = gateway_cmd("restore", "--check", archive)
    assert result.returncode == 2 and "cut short" in result.stderr, result.stderr


def test_node_files_go_where_the_settings_say_never_where_the_archive_says(tmp_path):
    """A TLS file went back to the path the archive named when the config named none: an archive made
    or changed by someone else, restored as root, wrote what it liked where it liked (cron.d, ssh)."""
    target = tmp_path / "restored"
    config = tmp_path / "etc" / "gateway.toml"
    outside = tmp_path / "outside" / "cron-evil"
    outside.parent.mkdir()
    config_text = f'data_dir = "{target}"\n'.encode()
    archive = craft(tmp_path / "evil.tar", [
        ("cv-backup/files/config/gateway.toml", config_text, {"pax": {PATH: str(config)}}),
        ("cv-backup/files/tls_cert/evil", b"* * * * * root touch /tmp/owned\n", {"pax": {PATH: str(outside)}}),
    ], man=manifest(stores=[{"name": "local", "type": "local", "root": str(target), "shared": False}]))
    result = gateway_cmd("restore", "--config", config, archive)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert not outside.exists(), result.stderr
    assert config.read_bytes() == config_text  # the config itself goes to --config, as asked
    assert f"not restored: the tls cert file {outside}" in result.stderr, result.stderr
    assert "since this node's settings name no tls_cert file" in result.stderr, result.stderr
