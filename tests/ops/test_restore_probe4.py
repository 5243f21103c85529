"""`gateway restore` after the ops probe: damaged object files are not "written after the backup",
--overwrite leaves node files alone, the printed `cluster leave` command works, the destination is
checked before the whole archive is read, no silent ./cv-storage, and a zstd archive is named.

Real gateways (GatewayProcess), the real CLI as a subprocess, no mocks.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from gateway.testing.disks import tmpfs
from gateway.testing.server import GatewayProcess

CLUSTER_ENV = {"GATEWAY_CLUSTER_SECRET": "0123456789abcdef0123", "GATEWAY_INSECURE_PEERS": "1"}


def gateway_cmd(*args, env=None, cwd="/", timeout=180) -> subprocess.CompletedProcess:
    """`gateway ARGS` as an operator runs it: from ``cwd``, with none of the test runner's GATEWAY_*
    settings unless given."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    result = subprocess.run([sys.executable, "-m", "gateway", *map(str, args)], capture_output=True, text=True,
                            env={**clean, **(env or {})}, timeout=timeout, cwd=cwd)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def objects_of(s3, bucket="photos", count=10) -> dict[str, bytes]:
    s3.create_bucket(Bucket=bucket)
    objects = {}
    for i in range(count):
        key = f"obj{i}.bin"
        objects[key] = os.urandom(30000 + i)
        s3.put_object(Bucket=bucket, Key=key, Body=objects[key], Metadata={"n": str(i)})
    return objects


@pytest.fixture
def source(tmp_path):
    with GatewayProcess(tmp_path / "src") as gw:
        yield gw


@pytest.fixture
def filled(source, tmp_path):
    """A gateway with ten objects, and a full backup of it."""
    objects = objects_of(source.client())
    archive = tmp_path / "full.tar"
    result = gateway_cmd("backup", "-q", "--data-dir", source.data_dir, archive)
    assert result.returncode == 0, result.stderr
    return source, objects, archive


def object_file(gw, key: str, bucket="photos") -> Path:
    return Path(gw.data_dir) / bucket / f"{key}%obj"


def overwrite_at(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


# Bug 1: damaged object files -----------------------------------------------------------------------


def test_damaged_object_files_are_replaced_from_the_backup_and_a_newer_version_is_kept(filled):
    gw, objects, archive = filled
    s3 = gw.client()
    os.truncate(object_file(gw, "obj3.bin"), 100)  # cut short
    overwrite_at(object_file(gw, "obj5.bin"), 0, b"JUNKJUNK")  # the header hit
    overwrite_at(object_file(gw, "obj7.bin"), 20000, b"JUNKJUNK")  # the data hit, the header as the backup's
    with open(object_file(gw, "obj9.bin"), "ab") as f:
        f.write(b"trailing bytes")  # longer than its header says
    s3.put_object(Bucket="photos", Key="obj8.bin", Body=b"written after the backup")  # a real newer version

    result = gateway_cmd("restore", "--data-dir", gw.data_dir, archive)
    assert result.returncode == 0, result.stderr
    err = result.stderr
    assert "4 files restored" in err and "4 damaged, replaced from the backup" in err, err
    assert "1 kept at their current version" in err and "kept: photos/obj8.bin" in err, err
    damaged = {line.split(": ", 1)[1] for line in err.splitlines() if line.startswith("damaged, replaced")}
    assert any(d.startswith("photos/obj3.bin (") and "cut short" in d for d in damaged), err
    assert any(d.startswith("photos/obj5.bin (") and "header does not parse" in d for d in damaged), err
    assert any(d.startswith("photos/obj7.bin (") and "does not match its ETag" in d for d in damaged), err
    assert any(d.startswith("photos/obj9.bin (") and "longer than its header says" in d for d in damaged), err
    for line in err.splitlines():  # none of the damaged ones passes for a newer version
        assert not re.match(r"kept: .*obj[3579]\.bin", line), err

    for key in ("obj3.bin", "obj5.bin", "obj7.bin", "obj9.bin"):  # served at once by the running gateway
        got = s3.get_object(Bucket="photos", Key=key)
        assert got["Body"].read() == objects[key] and got["Metadata"] == {"n": key[3]}, key
    assert s3.get_object(Bucket="photos", Key="obj8.bin")["Body"].read() == b"written after the backup"
    assert not [p for p in (Path(gw.data_dir) / ".gateway" / "tmp").rglob("*") if p.is_file()]

    again = gateway_cmd("restore", "-q", "--data-dir", gw.data_dir, archive)
    assert again.returncode == 0 and "0 files restored" in again.stderr and "damaged, replaced" not in again.stderr


def test_a_whole_file_is_kept_when_the_backups_copy_is_the_damaged_one(source, tmp_path):
    """A backup copies what it finds, damage included: restoring it over a healthy copy of the same
    version (another node's disk, a copy made before the damage) must keep the healthy one."""
    s3 = source.client()
    objects = objects_of(s3, count=4)
    s3.put_object(Bucket="photos", Key="multi.bin", Body=b"")  # replaced below by a multipart object
    upload = s3.create_multipart_upload(Bucket="photos", Key="multi.bin")["UploadId"]
    parts = [s3.upload_part(Bucket="photos", Key="multi.bin", UploadId=upload, PartNumber=n,
                            Body=bytes([n]) * (5 * 1024 * 1024))["ETag"] for n in (1, 2)]
    s3.complete_multipart_upload(Bucket="photos", Key="multi.bin", UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": n, "ETag": etag} for n, etag in zip((1, 2), parts)]})
    healthy = tmp_path / "healthy"
    shutil.copytree(source.data_dir, healthy)
    os.truncate(object_file(source, "obj1.bin"), object_file(source, "obj1.bin").stat().st_size - 3)  # cut short
    overwrite_at(object_file(source, "obj2.bin"), 20000, b"ROT")  # rotten data, header whole
    overwrite_at(object_file(source, "multi.bin"), 20000, b"ROT")  # the same under a multipart ETag
    archive = tmp_path / "damaged.tar"
    result = gateway_cmd("backup", "--data-dir", source.data_dir, archive)
    assert result.returncode == 1 and "obj1.bin" in result.stderr, result.stderr  # it saw the cut-short one

    before = {key: (healthy / "photos" / f"{key}%obj").read_bytes() for key in ("obj1.bin", "obj2.bin", "multi.bin")}
    result = gateway_cmd("restore", "--data-dir", healthy, archive)
    assert result.returncode == 0, result.stderr
    err = result.stderr
    assert "3 kept as they are (the backup's copy is damaged)" in err and "damaged, replaced" not in err, err
    kept = {line.split(": ", 1)[1] for line in err.splitlines() if line.startswith("kept, the backup's copy")}
    assert any(k.startswith("photos/obj1.bin (") and "not the length its header gives" in k for k in kept), err
    assert any(k.startswith("photos/obj2.bin (") and "whose data matches its ETag" in k for k in kept), err
    assert any(k.startswith("photos/multi.bin (") and "cannot tell" in k for k in kept), err
    for key, data in before.items():
        assert (healthy / "photos" / f"{key}%obj").read_bytes() == data, key
    with GatewayProcess(healthy) as gw:
        for key in ("obj1.bin", "obj2.bin"):
            assert gw.client().get_object(Bucket="photos", Key=key)["Body"].read() == objects[key]

    # --overwrite asks for the backup's copies: still not a cut-short or rotten one over a whole one,
    # but where nothing tells which copy is whole, the backup's.
    result = gateway_cmd("restore", "--overwrite", "--data-dir", healthy, archive)
    assert result.returncode == 0, result.stderr
    assert "2 kept as they are (the backup's copy is damaged)" in result.stderr, result.stderr
    for key in ("obj1.bin", "obj2.bin"):
        assert (healthy / "photos" / f"{key}%obj").read_bytes() == before[key], key
    assert (healthy / "photos" / "multi.bin%obj").read_bytes() != before["multi.bin"]


def test_both_copies_damaged_keeps_the_file_here(filled, tmp_path):
    gw, objects, archive = filled
    rotten = tmp_path / "rotten.tar"
    overwrite_at(object_file(gw, "obj6.bin"), 20000, b"ROT1")
    assert gateway_cmd("backup", "-q", "--data-dir", gw.data_dir, rotten).returncode == 0  # rot is not seen
    overwrite_at(object_file(gw, "obj6.bin"), 20000, b"ROT2")
    here = object_file(gw, "obj6.bin").read_bytes()
    result = gateway_cmd("restore", "--data-dir", gw.data_dir, rotten)
    assert result.returncode == 0, result.stderr
    assert "both are damaged" in result.stderr and "photos/obj6.bin" in result.stderr, result.stderr
    assert object_file(gw, "obj6.bin").read_bytes() == here
    assert not [p for p in (Path(gw.data_dir) / ".gateway" / "tmp").rglob("*") if p.is_file()]


def test_overwrite_counts_a_damaged_file_as_damaged_and_still_replaces_newer_ones(filled):
    gw, objects, archive = filled
    s3 = gw.client()
    os.truncate(object_file(gw, "obj2.bin"), 50)
    s3.put_object(Bucket="photos", Key="obj4.bin", Body=b"newer")
    result = gateway_cmd("restore", "--overwrite", "--data-dir", gw.data_dir, archive)
    assert result.returncode == 0, result.stderr
    assert "1 replaced by the backup's copy (--overwrite), 1 damaged, replaced from the backup" in result.stderr
    for key in ("obj2.bin", "obj4.bin"):
        assert s3.get_object(Bucket="photos", Key=key)["Body"].read() == objects[key]


# Bug 3: --overwrite concerns objects only ---------------------------------------------------------------


def test_overwrite_keeps_an_edited_config_and_a_rotated_tls_key_and_names_them(source, tmp_path):
    objects = objects_of(source.client(), count=3)
    etc = tmp_path / "etc"
    etc.mkdir()
    assert gateway_cmd("cluster", "tls", "init", "--dir", etc, "--node", "node=127.0.0.1").returncode == 0
    config = etc / "gateway.toml"
    config.write_text(f'data_dir = "{source.data_dir}"\ntls_cert = "{etc}/node.pem"\ntls_key = "{etc}/node-key.pem"\n')
    archive = tmp_path / "full.tar"
    assert gateway_cmd("backup", "-q", "--config", config, archive).returncode == 0
    with open(config, "a") as f:
        f.write("# edited after the backup\n")
    key = etc / "node-key.pem"
    with open(key, "a") as f:
        f.write("# rotated\n")
    edited, rotated = config.read_bytes(), key.read_bytes()
    source.client().put_object(Bucket="photos", Key="obj1.bin", Body=b"newer")

    result = gateway_cmd("restore", "--overwrite", "--config", config, archive)
    assert result.returncode == 0, result.stderr
    assert config.read_bytes() == edited and key.read_bytes() == rotated
    assert f"kept {config} (config)" in result.stderr and f"kept {key} (tls_key)" in result.stderr, result.stderr
    assert "not even with --overwrite" in result.stderr and "restored tls_key" not in result.stderr
    # Objects are what --overwrite is for.
    assert source.client().get_object(Bucket="photos", Key="obj1.bin")["Body"].read() == objects["obj1.bin"]
    # The way to take the backup's copy by hand works as printed.
    command = re.search(r"kept \S+ \(tls_key\).*?`(tar -xf [^`]+)`", result.stderr).group(1)
    out = tmp_path / "out"
    out.mkdir()
    assert subprocess.run(shlex.split(command), cwd=out, capture_output=True).returncode == 0
    assert not (out / "cv-backup" / "files" / "tls_key" / "node-key.pem").read_bytes().endswith(b"# rotated\n")

    help_text = gateway_cmd("restore", "--help").stdout
    assert "Node files (config, TLS) that exist are kept" in " ".join(help_text.split())


# Bug 8: the printed `cluster leave` command ------------------------------------------------------------


# Bug 10: the destination is checked before the whole archive is read ----------------------------------


@pytest.fixture
def damaged_archive(filled, tmp_path):
    """The backup with one object's bytes changed: its manifest is whole, its check fails."""
    _, _, archive = filled
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("obj6.bin%obj"))
    damaged = tmp_path / "damaged.tar"
    data = bytearray(archive.read_bytes())
    data[member.offset_data + 1000] ^= 0xFF
    damaged.write_bytes(bytes(data))
    assert "damaged" in gateway_cmd("restore", "--check", damaged).stderr
    return damaged


def test_a_data_dir_that_is_a_file_is_refused_before_the_archive_is_read(damaged_archive, tmp_path):
    a_file = tmp_path / "s3lib.py"
    a_file.write_text("print('not a store')\n")
    result = gateway_cmd("restore", "--data-dir", a_file, damaged_archive)
    assert result.returncode == 2, result.stderr
    assert "is a file, not a directory" in result.stderr and "nothing was restored" in result.stderr, result.stderr
    assert "checking the archive" not in result.stderr  # refused before the check, not after it
    assert "restored so far is whole" not in result.stderr and "Errno" not in result.stderr
    assert a_file.read_text() == "print('not a store')\n"


def test_a_full_backup_on_a_redundant_node_is_refused_before_the_archive_is_read(damaged_archive, tmp_path):
    target = tmp_path / "elsewhere"
    result = gateway_cmd("restore", "--data-dir", target, "--role", "redundant", "--registry",
                         f"sqlite:///{tmp_path}/registry.db", "--advertise", "http://127.0.0.1:9", damaged_archive,
                         env={**CLUSTER_ENV, "GATEWAY_NODE_ID": "r1"})
    assert result.returncode == 2, result.stderr
    assert "restored on the primary" in result.stderr and "checking the archive" not in result.stderr, result.stderr
    assert not target.exists()


def test_an_unmounted_share_is_refused_before_the_archive_is_read(damaged_archive, tmp_path):
    mount_point = tmp_path / "mnt" / "cv-share"
    mount_point.mkdir(parents=True)
    config = tmp_path / "shared.toml"
    config.write_text(f'default_backend = "local"\n[backends.local]\ntype = "sharedfs"\nroot = "{mount_point}"\n'
                      "require_mount = true\n")
    result = gateway_cmd("restore", "--config", config, damaged_archive)
    assert result.returncode == 2, result.stderr
    assert "Mount the share there" in result.stderr and "checking the archive" not in result.stderr, result.stderr
    assert list(mount_point.iterdir()) == []


def test_a_read_only_store_is_refused_before_the_archive_is_read_with_advice(damaged_archive, tmp_path):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as mount_point:
        result = gateway_cmd("restore", "--data-dir", mount_point / "cv-storage", damaged_archive)
    assert result.returncode == 2, result.stderr
    assert "read-only" in result.stderr and "checking the archive" not in result.stderr, result.stderr
    assert "Errno" not in result.stderr


def test_a_good_destination_still_gets_the_full_check_first(damaged_archive, tmp_path):
    target = tmp_path / "restored"
    result = gateway_cmd("restore", "--data-dir", target, damaged_archive)
    assert result.returncode == 2 and "is damaged, nothing was restored" in result.stderr, result.stderr
    assert not target.exists()


# Item 11: no silent ./cv-storage; a zstd archive is named --------------------------------------------


def test_restore_with_neither_config_nor_data_dir_does_not_create_cv_storage(filled, tmp_path):
    _, objects, archive = filled
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = gateway_cmd("restore", archive, cwd=cwd)
    assert result.returncode == 2, result.stderr
    assert "cv-storage does not exist" in result.stderr and "--config" in result.stderr, result.stderr
    assert "checking the archive" not in result.stderr
    assert not (cwd / "cv-storage").exists()
    # As backup and migrate: an existing ./cv-storage is the store.
    assert gateway_cmd("backup", "-q", tmp_path / "b.tar", cwd=cwd).returncode == 2
    (cwd / "cv-storage").mkdir()
    result = gateway_cmd("restore", "-q", archive, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert (cwd / "cv-storage" / "photos" / "obj0.bin%obj").exists()
    # A data dir named through the environment is named.
    named = tmp_path / "named"
    result = gateway_cmd("restore", "-q", archive, cwd=cwd, env={"GATEWAY_DATA_DIR": str(named)})
    assert result.returncode == 0 and (named / "photos" / "obj0.bin%obj").exists(), result.stderr


def test_a_zstd_archive_is_named_with_how_to_decompress_it(filled, tmp_path):
    _, _, archive = filled
    compressed = tmp_path / "full.tar.zst"
    if shutil.which("zstd"):
        subprocess.run(["zstd", "-q", str(archive), "-o", str(compressed)], check=True)
    else:
        compressed.write_bytes(b"\x28\xb5\x2f\xfd" + os.urandom(4000))  # zstd's magic bytes
    for args in (["--check"], ["--data-dir", tmp_path / "restored"]):
        result = gateway_cmd("restore", *args, compressed)
        assert result.returncode == 2, result.stderr
        assert "zstd-compressed" in result.stderr and "zstd -d" in result.stderr and "unzstd" in result.stderr
    assert not (tmp_path / "restored").exists()
    (tmp_path / "not.tar").write_bytes(os.urandom(4000))
    plain = gateway_cmd("restore", "--check", tmp_path / "not.tar")
    assert plain.returncode == 2 and "not a tar file" in plain.stderr and "zstd-compressed" not in plain.stderr
