"""`gateway backup` and `gateway restore`, run as an operator runs them, against real gateways.

Objects go in and come back out through boto3; the tools run as subprocesses.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import threading
import time

import pytest

from gateway.testing.server import GatewayProcess

CLUSTER_ENV = {"GATEWAY_CLUSTER_SECRET": "0123456789abcdef0123", "GATEWAY_INSECURE_PEERS": "1"}
LONG_KEY = "s" * 230 + "/tail.bin"


def gateway_cmd(*args, env=None, check=None, timeout=120):
    """Run `gateway ARGS` from / as an operator would (not from the checkout, whose top-level
    folders would be importable then)."""
    result = subprocess.run([sys.executable, "-m", "gateway", *map(str, args)], capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, timeout=timeout, cwd="/")
    if check is not None:
        assert result.returncode == check, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def fill(s3) -> dict[tuple[str, str], bytes]:
    """Several buckets, nested keys, metadata, a long segment, an empty bucket."""
    objects = {}
    s3.create_bucket(Bucket="faces")
    s3.create_bucket(Bucket="events")
    s3.create_bucket(Bucket="empty")
    for i in range(30):
        body = hashlib.sha256(str(i).encode()).digest() * (600 + i)
        key = f"cam{i % 3}/2024-11-{i:02d}/{i}.jpg"
        s3.put_object(Bucket="faces", Key=key, Body=body, ContentType="image/jpeg", Metadata={"camera": str(i % 3)})
        objects["faces", key] = body
    for key, body in [("meta.json", b'{"a": 1}'), (LONG_KEY, os.urandom(5000)), ("blob", os.urandom(3 << 20))]:
        s3.put_object(Bucket="events", Key=key, Body=body)
        objects["events", key] = body
    return objects


def assert_has(s3, objects) -> None:
    for (bucket, key), body in objects.items():
        got = s3.get_object(Bucket=bucket, Key=key)
        assert got["Body"].read() == body, (bucket, key)
        if bucket == "faces":
            assert got["ContentType"] == "image/jpeg"
            assert got["Metadata"] == {"camera": key[3]}


def tree_snapshot(root) -> dict[str, bytes]:
    """Every file under a store's root except temp files."""
    files = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".gateway"]
        for name in filenames:
            path = os.path.join(dirpath, name)
            files[os.path.relpath(path, root)] = open(path, "rb").read()
    return files


@pytest.fixture
def source(tmp_path):
    with GatewayProcess(tmp_path / "src") as gw:
        yield gw


def test_full_backup_restores_into_a_new_store_with_every_object(source, tmp_path):
    s3 = source.client()
    objects = fill(s3)
    upload = s3.create_multipart_upload(Bucket="events", Key="in-progress")["UploadId"]
    part = s3.upload_part(Bucket="events", Key="in-progress", UploadId=upload, PartNumber=1, Body=b"p" * (5 << 20))
    archive = tmp_path / "full.tar"

    result = gateway_cmd("backup", "--data-dir", source.data_dir, archive, check=0)
    assert "objects" in result.stderr and archive.exists() and not (tmp_path / "full.tar.partial").exists()
    assert oct(archive.stat().st_mode & 0o777) == "0o600"  # it may hold secrets

    result = gateway_cmd("restore", "--data-dir", tmp_path / "restored", archive, check=0)
    assert "archive OK" in result.stderr
    with GatewayProcess(tmp_path / "restored") as restored:
        r3 = restored.client()
        assert_has(r3, objects)
        assert {b["Name"] for b in r3.list_buckets()["Buckets"]} == {"faces", "events", "empty"}
        assert r3.list_objects_v2(Bucket="empty")["KeyCount"] == 0
        listed = [o["Key"] for o in r3.list_objects_v2(Bucket="faces")["Contents"]]
        assert listed == sorted(k for b, k in objects if b == "faces")
        # The upload in progress survives and can be completed.
        r3.complete_multipart_upload(Bucket="events", Key="in-progress", UploadId=upload, MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
        assert r3.get_object(Bucket="events", Key="in-progress")["Body"].read() == b"p" * (5 << 20)


def test_archive_unpacks_with_plain_tar_into_a_working_store(source, tmp_path):
    objects = fill(source.client())
    archive = tmp_path / "full.tar"
    gateway_cmd("backup", "-q", "--data-dir", source.data_dir, archive, check=0)
    out = subprocess.run(["tar", "xf", archive, "-C", tmp_path], capture_output=True, text=True)
    assert out.returncode == 0 and out.stderr == "", out.stderr  # no warnings about our headers
    with GatewayProcess(tmp_path / "cv-backup" / "storage" / "local") as unpacked:
        assert_has(unpacked.client(), objects)


def test_restore_into_a_running_gateway_brings_back_deleted_objects_and_keeps_newer_ones(source, tmp_path):
    s3 = source.client()
    objects = fill(s3)
    archive = tmp_path / "full.tar"
    gateway_cmd("backup", "--data-dir", source.data_dir, archive, check=0)
    deleted = [k for b, k in objects if b == "faces"][:5]
    for key in deleted:
        s3.delete_object(Bucket="faces", Key=key)
    newer_key = [k for b, k in objects if b == "faces"][7]
    s3.put_object(Bucket="faces", Key=newer_key, Body=b"written after the backup")
    s3.put_object(Bucket="faces", Key="after-backup", Body=b"not in the backup")

    result = gateway_cmd("restore", "--data-dir", source.data_dir, archive, check=0)
    assert "5 files restored" in result.stderr
    assert f"kept: faces/{newer_key}" in result.stderr and "--overwrite" in result.stderr
    for key in deleted:  # served at once by the running gateway
        assert s3.get_object(Bucket="faces", Key=key)["Body"].read() == objects["faces", key]
    assert s3.get_object(Bucket="faces", Key=newer_key)["Body"].read() == b"written after the backup"
    assert s3.get_object(Bucket="faces", Key="after-backup")["Body"].read() == b"not in the backup"

    again = gateway_cmd("restore", "--data-dir", source.data_dir, archive, check=0)
    assert "0 files restored" in again.stderr  # running it twice changes nothing

    gateway_cmd("restore", "--overwrite", "--data-dir", source.data_dir, archive, check=0)
    assert s3.get_object(Bucket="faces", Key=newer_key)["Body"].read() == objects["faces", newer_key]
    assert s3.get_object(Bucket="faces", Key="after-backup")["Body"].read() == b"not in the backup"  # never deleted


def test_backup_while_objects_are_overwritten_holds_whole_versions(source, tmp_path):
    s3 = source.client()
    s3.create_bucket(Bucket="busy")
    versions = [bytes([v]) * 200_000 for v in range(40)]
    for i in range(20):
        s3.put_object(Bucket="busy", Key=f"k{i}", Body=versions[0])
    stop = threading.Event()
    writer_client = source.client()

    def overwrite():
        n = 0
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            n += 1
            writer_client.put_object(Bucket="busy", Key=f"k{n % 20}", Body=versions[n % 40])

    thread = threading.Thread(target=overwrite)
    thread.start()
    try:
        gateway_cmd("backup", "-q", "--data-dir", source.data_dir, tmp_path / "busy.tar", check=0)
    finally:
        stop.set()
        thread.join()
    gateway_cmd("restore", "-q", "--data-dir", tmp_path / "restored", tmp_path / "busy.tar", check=0)
    with GatewayProcess(tmp_path / "restored") as restored:
        r3 = restored.client()
        for i in range(20):
            got = r3.get_object(Bucket="busy", Key=f"k{i}")
            body = got["Body"].read()
            assert body in versions and got["ETag"].strip('"') == hashlib.md5(body).hexdigest()


@pytest.fixture
def archive(source, tmp_path):
    fill(source.client())
    path = tmp_path / "full.tar"
    gateway_cmd("backup", "-q", "--data-dir", source.data_dir, path, check=0)
    return path


def damaged_copies(archive, tmp_path):
    raw = archive.read_bytes()
    with tarfile.open(archive) as tar:
        member = next(m for m in tar if m.name.endswith("%obj") and m.size > 10_000)
    flipped = bytearray(raw)
    flipped[member.offset_data + 5000] ^= 0xFF
    copies = {
        "cut short": raw[: len(raw) // 2],
        "cut before the summary": raw[:member.offset_data + member.size + 512 * 3],
        "one flipped byte": bytes(flipped),
        "not a tar": b"hello, this is not an archive\n" * 100,
    }
    for name, data in copies.items():
        path = tmp_path / (name.replace(" ", "-") + ".tar")
        path.write_bytes(data)
        yield name, path


def test_a_damaged_archive_restores_nothing_and_says_why(archive, tmp_path):
    target = tmp_path / "target"
    expected = {
        "cut short": "cut short",
        "cut before the summary": "cut short",
        "one flipped byte": "do not match their checksum",
        "not a tar": "not a backup archive",
    }
    for name, path in damaged_copies(archive, tmp_path):
        for args in (["--check"], []):
            result = gateway_cmd("restore", *args, "--data-dir", target, path, check=2)
            assert expected[name] in result.stderr, (name, result.stderr)
            assert "Traceback" not in result.stderr
        assert tree_snapshot(target) == {} if target.exists() else True, name
    missing = gateway_cmd("restore", "--data-dir", target, tmp_path / "nope.tar", check=2)
    assert "does not exist" in missing.stderr


def test_check_verifies_without_writing(archive, tmp_path):
    result = gateway_cmd("restore", "--check", "--data-dir", tmp_path / "untouched", archive, check=0)
    assert "archive OK" in result.stderr and "full backup of node" in result.stderr
    assert not (tmp_path / "untouched").exists()


def test_backup_refuses_an_existing_file_and_names_one_in_a_directory(source, tmp_path):
    fill(source.client())
    existing = tmp_path / "taken.tar"
    existing.write_bytes(b"an older backup")
    result = gateway_cmd("backup", "--data-dir", source.data_dir, existing, check=2)
    assert "already exists" in result.stderr and existing.read_bytes() == b"an older backup"
    inside = gateway_cmd("backup", "--data-dir", source.data_dir, source.data_dir / "faces" / "b.tar", check=2)
    assert "inside the store" in inside.stderr and not (source.data_dir / "faces" / "b.tar.partial").exists()
    folder = tmp_path / "backups"
    folder.mkdir()
    gateway_cmd("backup", "-q", "--data-dir", source.data_dir, folder, check=0)
    (made,) = folder.iterdir()
    assert made.name.startswith("cv-backup-full-") and made.name.endswith(".tar")
    gateway_cmd("restore", "--check", "--data-dir", tmp_path / "x", made, check=0)


def test_backup_to_stdout_piped_through_gzip_restores(source, tmp_path):
    objects = fill(source.client())
    piped = tmp_path / "piped.tar.gz"
    command = f"{sys.executable} -m gateway backup -q --data-dir {source.data_dir} - | gzip -1 > {piped}"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], stderr=subprocess.PIPE, timeout=120, cwd="/")
    assert done.returncode == 0, done.stderr
    gateway_cmd("restore", "-q", "--data-dir", tmp_path / "restored", piped, check=0)
    with GatewayProcess(tmp_path / "restored") as restored:
        assert_has(restored.client(), objects)


def test_a_killed_backup_leaves_no_archive_that_looks_finished(source, tmp_path):
    s3 = source.client()
    s3.create_bucket(Bucket="big")
    for i in range(6):
        s3.put_object(Bucket="big", Key=f"b{i}", Body=os.urandom(32 << 20))
    output = tmp_path / "killed.tar"
    process = subprocess.Popen([sys.executable, "-m", "gateway", "backup", "--data-dir", source.data_dir, output],
                               stderr=subprocess.PIPE)
    partial = tmp_path / "killed.tar.partial"
    deadline = time.monotonic() + 30
    while (not partial.exists() or partial.stat().st_size < (8 << 20)) and time.monotonic() < deadline:
        assert process.poll() is None, "the backup finished before it could be killed: make the objects bigger"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    assert not output.exists()
    result = gateway_cmd("restore", "--data-dir", tmp_path / "t", partial, check=2)
    assert "cut short" in result.stderr


def test_a_backup_into_a_directory_names_unfinished_archives_left_there(source, tmp_path):
    """A killed backup's .partial stays in the directory (the next one takes a new time-stamped name):
    the next backup there names it, so the disk space it takes is not forgotten."""
    fill(source.client())
    out = tmp_path / "backups"
    out.mkdir()
    (out / "cv-backup-full-host-20261127-010203.tar.partial").write_bytes(b"cut short")
    result = gateway_cmd("backup", "-q", "--data-dir", source.data_dir, out, check=0)
    assert "holds 1 unfinished archive(s)" in result.stderr
    assert "cv-backup-full-host-20261127-010203.tar.partial" in result.stderr


def test_a_killed_restore_leaves_no_half_object_and_can_be_run_again(source, tmp_path):
    s3 = source.client()
    s3.create_bucket(Bucket="big")
    bodies = {f"b{i}": os.urandom(24 << 20) for i in range(6)}
    for key, body in bodies.items():
        s3.put_object(Bucket="big", Key=key, Body=body)
    archive = tmp_path / "big.tar"
    gateway_cmd("backup", "-q", "--data-dir", source.data_dir, archive, check=0)
    target = tmp_path / "target"
    process = subprocess.Popen([sys.executable, "-m", "gateway", "restore", "--data-dir", target, archive],
                               stderr=subprocess.PIPE)
    tmp_dir = target / ".gateway" / "tmp"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, "the restore finished before it could be killed: make the objects bigger"
        if tmp_dir.exists() and any(f.stat().st_size for d in tmp_dir.iterdir() for f in d.iterdir()):
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    with GatewayProcess(target) as half:
        h3 = half.client()
        for key, body in bodies.items():  # each object is whole or absent, never a part
            try:
                assert h3.get_object(Bucket="big", Key=key)["Body"].read() == body
            except h3.exceptions.NoSuchKey:
                pass
        gateway_cmd("restore", "-q", "--data-dir", target, archive, check=0)
        for key, body in bodies.items():
            assert h3.get_object(Bucket="big", Key=key)["Body"].read() == body


# Roles: where each kind of backup is taken and restored ------------------------------------------


def node_args(tmp_path, role, node_id):
    return (["--role", role, "--registry", f"sqlite:///{tmp_path}/registry.db", "--advertise",
             "http://127.0.0.1:9"], {**CLUSTER_ENV, "GATEWAY_NODE_ID": node_id})


def test_full_backups_belong_to_the_primary_and_objects_only_to_each_redundant_server(source, tmp_path):
    fill(source.client())
    data = ["--data-dir", source.data_dir]
    args, env = node_args(tmp_path, "redundant", "redundant-1")
    refused = gateway_cmd("backup", *data, *args, tmp_path / "r.tar", env=env, check=2)
    assert "full backups are taken on the primary" in refused.stderr and "backup -o" in refused.stderr
    gateway_cmd("backup", "-o", "-q", *data, *args, tmp_path / "r.tar", env=env, check=0)

    proxy_args, proxy_env = node_args(tmp_path, "proxy", "proxy-1")
    refused = gateway_cmd("backup", *proxy_args, tmp_path / "p.tar", env=proxy_env, check=2)
    assert "proxy" in refused.stderr and "stores no objects" in refused.stderr

    primary_args, primary_env = node_args(tmp_path, "primary", "primary-1")
    result = gateway_cmd("backup", *data, *primary_args, tmp_path / "p.tar", env=primary_env, check=0)
    assert "backup -o` on each redundant server" in result.stderr

    # The objects-only backup goes back to the server it came from, and nowhere else unless forced.
    other_args, other_env = node_args(tmp_path, "redundant", "redundant-2")
    target = ["--data-dir", tmp_path / "elsewhere"]
    refused = gateway_cmd("restore", *target, *other_args, tmp_path / "r.tar", env=other_env, check=2)
    assert "came from node redundant-1" in refused.stderr and "--force" in refused.stderr
    assert not (tmp_path / "elsewhere").exists()
    gateway_cmd("restore", "-q", *target, *args, tmp_path / "r.tar", env=env, check=0)
    forced = gateway_cmd("restore", "-q", "--force", "--data-dir", tmp_path / "forced", *other_args,
                         tmp_path / "r.tar", env=other_env, check=0)
    assert "anyway (--force)" in forced.stderr

    # A full backup is restored on the primary.
    refused = gateway_cmd("restore", *target, *args, tmp_path / "p.tar", env=env, check=2)
    assert "restored on the primary" in refused.stderr


def test_objects_only_backup_refused_on_shared_storage(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(f'default_backend = "shared"\n[backends.shared]\ntype = "sharedfs"\nroot = "{tmp_path}/share"\n')
    (tmp_path / "share").mkdir()
    result = gateway_cmd("backup", "-o", "--config", config, tmp_path / "o.tar", check=2)
    assert "shared" in result.stderr and "full backup on the primary" in result.stderr


def test_full_backup_carries_config_tls_files_and_registry(source, tmp_path):
    objects = fill(source.client())
    etc = tmp_path / "etc"
    etc.mkdir()
    registry = tmp_path / "var" / "registry.db"
    registry.parent.mkdir()
    import sqlite3

    with sqlite3.connect(registry) as db:
        db.execute("create table nodes (id text)")
        db.execute("insert into nodes values ('primary-1')")
    gateway_cmd("cluster", "tls", "init", "--dir", etc, "--node", "node=127.0.0.1", check=0)
    key_text = (etc / "node-key.pem").read_text()
    config = etc / "gateway.toml"
    config.write_text(
        f'data_dir = "{source.data_dir}"\nrole = "primary"\nregistry = "sqlite:///{registry}"\n'
        f'advertise = "http://127.0.0.1:9"\ncluster_secret = "0123456789abcdef0123"\ninsecure_peers = true\n'
        f'tls_cert = "{etc}/node.pem"\ntls_key = "{etc}/node-key.pem"\ntls_ca = "{etc}/ca.pem"\n')
    archive = tmp_path / "full.tar"
    gateway_cmd("backup", "-q", "--config", config, archive, check=0)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        modes = {member.name: member.mode for member in tar.getmembers()}
    assert "cv-backup/files/config/gateway.toml" in names and "cv-backup/files/registry/registry.db" in names
    assert "cv-backup/files/tls_key/node-key.pem" in names
    # The secret key (config) and the node's private key: `tar -xf` gave them 0644.
    assert {name: modes[name] for name in names if name.startswith("cv-backup/files/") and name.count("/") > 2} == {
        name: 0o600 for name in names if name.startswith("cv-backup/files/") and name.count("/") > 2}

    # The server is lost: config, keys, registry and objects are all gone.
    import shutil

    source.stop()
    shutil.rmtree(etc)
    shutil.rmtree(source.data_dir)
    registry.unlink()
    without = gateway_cmd("restore", archive, check=2)
    assert "--config" in without.stderr  # says where the config goes instead of guessing
    result = gateway_cmd("restore", "--config", config, archive, check=0)
    assert "restored the config file" in result.stderr and "restored the tls key file" in result.stderr
    assert config.exists() and (etc / "node-key.pem").read_text() == key_text
    assert oct((etc / "node-key.pem").stat().st_mode & 0o777) == "0o600"
    with sqlite3.connect(registry) as db:
        assert db.execute("select id from nodes").fetchall() == [("primary-1",)]
    with GatewayProcess(source.data_dir) as back:
        assert_has(back.client(), objects)


def test_the_archive_is_its_owners_alone_whatever_was_at_its_name(source, tmp_path):
    """A .partial left world-readable (by an earlier run, or someone else) kept its mode: the archive,
    which holds the keys, came out 644; a .partial that was a symbolic link sent it elsewhere."""
    source.client().create_bucket(Bucket="keys")
    left = tmp_path / "n2.tar.partial"
    left.write_bytes(b"\0" * 4096)
    left.chmod(0o644)
    gateway_cmd("backup", "-q", "--data-dir", source.data_dir, tmp_path / "n2.tar", check=0)
    assert oct((tmp_path / "n2.tar").stat().st_mode & 0o777) == "0o600"
    elsewhere = tmp_path / "elsewhere"
    (tmp_path / "n3.tar.partial").symlink_to(elsewhere)
    result = gateway_cmd("backup", "-q", "--data-dir", source.data_dir, tmp_path / "n3.tar", check=2)
    assert "symbolic link" in result.stderr, result.stderr
    assert not elsewhere.exists() and not (tmp_path / "n3.tar").exists()


def test_restore_into_a_store_the_node_does_not_have_is_refused(archive, tmp_path):
    config = tmp_path / "two.toml"
    config.write_text(f'default_backend = "a"\n[backends.a]\ntype = "local"\nroot = "{tmp_path}/a"\n'
                      f'[backends.b]\ntype = "local"\nroot = "{tmp_path}/b"\n')
    result = gateway_cmd("restore", "--config", config, archive, check=2)
    assert "'local'" in result.stderr and "[backends.NAME]" in result.stderr
    assert not (tmp_path / "a").exists() or tree_snapshot(tmp_path / "a") == {}


def test_a_restored_registry_names_its_nodes_and_how_to_remove_one_that_left(source, tmp_path):
    """The registry in a full backup is the node list of the backup's time: a node that left the
    cluster since is listed again, and while it is, misses answer 503. The restore says so."""
    import asyncio

    from gateway.cluster.registry import open_registry

    fill(source.client())
    registry = tmp_path / "registry.db"

    async def register():
        reg = open_registry(f"sqlite:///{registry}")
        try:
            await reg.register("p1", "primary", "http://127.0.0.1:9001")
            await reg.register("r-gone", "redundant", "http://127.0.0.1:9002")
        finally:
            await reg.close()

    asyncio.run(register())
    config = tmp_path / "gateway.toml"
    config.write_text(f'data_dir = "{source.data_dir}"\nrole = "primary"\nregistry = "sqlite:///{registry}"\n'
                      'advertise = "http://127.0.0.1:9001"\nnode_id = "p1"\n'
                      'cluster_secret = "0123456789abcdef0123"\ninsecure_peers = true\n')
    archive = tmp_path / "full.tar"
    gateway_cmd("backup", "-q", "--config", config, archive, check=0)
    registry.unlink()
    result = gateway_cmd("restore", "--config", config, archive, check=0)
    assert f"restored registry to {registry}" in result.stderr
    assert "lists the nodes of the backup's time: p1 (primary, http://127.0.0.1:9001), r-gone (redundant, " \
        "http://127.0.0.1:9002)" in result.stderr, result.stderr
    assert f"gateway cluster leave --registry sqlite://{registry} --node-id NODE" in result.stderr
    # The printed command works as printed (it lacked --node-id once).
    printed = re.search(r"`(gateway cluster leave [^`]*)`", result.stderr).group(1)
    left = gateway_cmd(*shlex.split(printed.replace("NODE", "r-gone"))[1:])
    assert left.returncode == 0, left.stderr
    status = gateway_cmd("cluster", "status", "--registry", f"sqlite://{registry}")
    assert "p1" in status.stdout and "r-gone" not in status.stdout, status.stdout
