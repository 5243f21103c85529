"""`gateway migrate` as an operator runs it: real gateways write through boto3, the command runs as
a subprocess, and a gateway with the sharedfs backend on the target reads everything back."""

from __future__ import annotations

import glob
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.testing.disks import tmpfs
from gateway.testing.server import GatewayProcess

MiB = 1024 * 1024
DEADLINE = 60.0  # seconds a wait may take before the test fails
LONG_SEGMENT = "long-" + "x" * 240  # a path segment over 200 bytes: hashed on disk, full name in %name


def run_migrate(*args: str, data_dir: Path | None = None, config: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "gateway", "migrate", "--quiet", *args]
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    if config is not None:
        cmd += ["--config", str(config)]
    # From /, as an operator would: in the checkout its top-level folders would be importable too.
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=DEADLINE * 5, cwd="/")


def migrate_ok(data_dir: Path, share: Path, *args: str) -> str:
    result = run_migrate("--to", str(share), *args, data_dir=data_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def count(output: str, label: str) -> int:
    """The number on a summary line, e.g. count(out, "copied") for "  copied:   12 (3 MiB)"."""
    for line in output.splitlines():
        if line.strip().startswith(label + ":"):
            return int(line.split(":", 1)[1].split()[0].replace(",", ""))
    raise AssertionError(f"no line {label!r} in:\n{output}")


def copied_replaced_removed(output: str) -> tuple[int, int, int]:
    return count(output, "copied"), count(output, "replaced (newer here)"), count(output, "removed as deleted")


def shared_gateway(share: Path, tmp_path: Path) -> GatewayProcess:
    config = f'default_backend = "shared"\n[backends.shared]\ntype = "sharedfs"\nroot = "{share}"\n'
    return GatewayProcess(tmp_path / "unused", config=config)


def contents(s3) -> dict:
    """Every bucket, key, body hash, content type, user metadata and ETag, as a client sees them."""
    seen = {}
    for bucket in sorted(b["Name"] for b in s3.list_buckets()["Buckets"]):
        seen[bucket] = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                got = s3.get_object(Bucket=bucket, Key=obj["Key"])
                digest = hashlib.sha256()
                for chunk in got["Body"].iter_chunks(MiB):
                    digest.update(chunk)
                seen[bucket][obj["Key"]] = (digest.hexdigest(), got["ContentType"], got["Metadata"], got["ETag"],
                                            obj["Size"])
    return seen


def listing(s3, bucket: str, prefix: str = "", delimiter: str = "/") -> tuple[list, list]:
    page = s3.list_objects_v2(Bucket=bucket, Prefix=prefix, Delimiter=delimiter)
    return [o["Key"] for o in page.get("Contents", [])], [p["Prefix"] for p in page.get("CommonPrefixes", [])]


def tree_state(root: Path) -> list:
    """Every path under root with its size and modification time: what "changed nothing" compares."""
    state = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            st = os.lstat(os.path.join(dirpath, name))
            state.append((os.path.relpath(os.path.join(dirpath, name), root), st.st_size, st.st_mtime_ns))
    return sorted(state)


def object_file(store: Path, bucket: str, key: str) -> Path:
    from gateway_plugins import fslayout

    return store / bucket / fslayout.key_to_relpath(key)


@pytest.fixture
def share(tmp_path) -> Path:
    path = tmp_path / "share"
    path.mkdir()
    return path


def fill_source(s3) -> str:
    """Buckets with nested keys, a long segment, an empty bucket and an upload in progress; returns
    the upload id (one 5 MiB part uploaded, the last part to come after the migration)."""
    s3.create_bucket(Bucket="faces")
    s3.create_bucket(Bucket="events")
    s3.create_bucket(Bucket="empty-bucket")
    s3.put_object(Bucket="faces", Key="cam1", Body=b"the key cam1 beside the directory cam1/")
    for n in range(5):
        s3.put_object(Bucket="faces", Key=f"cam1/2024/{n:04d}.jpg", Body=b"\xff\xd8 face %d" % n * 50,
                      ContentType="image/jpeg", Metadata={"camera": "cam1", "n": str(n)})
    s3.put_object(Bucket="faces", Key="cam2/deep/er/still/x.jpg", Body=b"deep", ContentType="image/jpeg")
    s3.put_object(Bucket="events", Key=f"{LONG_SEGMENT}/event.json", Body=b'{"event": 1}',
                  ContentType="application/json", Metadata={"source": "long"})
    s3.put_object(Bucket="events", Key="plain.bin", Body=os.urandom(200 * 1024),
                  CacheControl="max-age=60", ContentDisposition="attachment")
    upload = s3.create_multipart_upload(Bucket="events", Key="assembled.bin", ContentType="video/mp4",
                                        Metadata={"parts": "2"})["UploadId"]
    s3.upload_part(Bucket="events", Key="assembled.bin", UploadId=upload, PartNumber=1, Body=b"1" * (5 * MiB))
    return upload


def test_full_migration_then_an_upload_completes_on_the_share(tmp_path, share):
    with GatewayProcess(tmp_path / "server1") as source:  # online: the gateway keeps serving
        s3 = source.client()
        upload = fill_source(s3)
        (source.data_dir / "handmade").mkdir()  # a bucket directory made by hand, without any file
        before = contents(s3)
        out = migrate_ok(source.data_dir, share)
        src_listings = [listing(s3, "faces"), listing(s3, "faces", "cam1/"), listing(s3, "events")]
    assert count(out, "copied") == 11  # 9 objects, the upload's record and its part
    assert count(out, "errors") == 0 and "verified: all" in out and "Next steps" in out

    with shared_gateway(share, tmp_path) as target:
        t3 = target.client()
        assert contents(t3) == before
        assert before["empty-bucket"] == before["handmade"] == {}
        assert [listing(t3, "faces"), listing(t3, "faces", "cam1/"), listing(t3, "events")] == src_listings
        assert listing(t3, "events")[1] == [f"{LONG_SEGMENT}/"]
        got = t3.head_object(Bucket="faces", Key="cam1/2024/0003.jpg")
        assert got["Metadata"] == {"camera": "cam1", "n": "3"} and got["ContentType"] == "image/jpeg"
        plain = t3.head_object(Bucket="events", Key="plain.bin")
        assert plain["CacheControl"] == "max-age=60" and plain["ContentDisposition"] == "attachment"

        uploads = t3.list_multipart_uploads(Bucket="events").get("Uploads", [])
        assert [(u["Key"], u["UploadId"]) for u in uploads] == [("assembled.bin", upload)]
        part1 = t3.list_parts(Bucket="events", Key="assembled.bin", UploadId=upload)["Parts"]
        part2 = t3.upload_part(Bucket="events", Key="assembled.bin", UploadId=upload, PartNumber=2, Body=b"2" * 100)
        t3.complete_multipart_upload(Bucket="events", Key="assembled.bin", UploadId=upload, MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": part1[0]["ETag"]}, {"PartNumber": 2, "ETag": part2["ETag"]}]})
        done = t3.get_object(Bucket="events", Key="assembled.bin")
        assert done["Body"].read() == b"1" * (5 * MiB) + b"2" * 100
        assert done["ContentType"] == "video/mp4" and done["Metadata"] == {"parts": "2"}


def test_later_passes_copy_changes_and_remove_deletions(tmp_path, share):
    with GatewayProcess(tmp_path / "server1") as source, shared_gateway(share, tmp_path) as target:
        s3, t3 = source.client(), target.client()
        fill_source(s3)
        s3.create_bucket(Bucket="doomed")
        s3.put_object(Bucket="doomed", Key="a/b/c", Body=b"soon gone")
        migrate_ok(source.data_dir, share)

        # While the source keeps serving: new keys, overwrites, deletes, a deleted bucket.
        s3.put_object(Bucket="faces", Key="cam3/new.jpg", Body=b"new face", ContentType="image/jpeg")
        s3.put_object(Bucket="faces", Key="cam1/2024/0001.jpg", Body=b"overwritten", ContentType="image/png",
                      Metadata={"version": "2"})
        s3.copy_object(Bucket="faces", Key="cam1", CopySource={"Bucket": "faces", "Key": "cam1"},
                       MetadataDirective="REPLACE", ContentType="text/plain", Metadata={"only": "metadata"})
        s3.delete_object(Bucket="faces", Key="cam1/2024/0002.jpg")
        s3.delete_object(Bucket="faces", Key="cam2/deep/er/still/x.jpg")
        s3.delete_object(Bucket="events", Key=f"{LONG_SEGMENT}/event.json")
        s3.delete_object(Bucket="doomed", Key="a/b/c")
        s3.delete_bucket(Bucket="doomed")
        out = migrate_ok(source.data_dir, share)
        # 4 objects, and the long directory's %name and doomed's %bucket.json with their last file
        assert copied_replaced_removed(out) == (1, 2, 6)
        expected = contents(s3)
        assert contents(t3) == expected
        assert "doomed" not in expected
        assert t3.get_object(Bucket="faces", Key="cam1")["Metadata"] == {"only": "metadata"}
        assert not (share / "faces" / "cam2").exists() and not (share / "doomed").exists()
        assert listing(t3, "events")[1] == []

    # The final pass, the gateway stopped: nothing left to do, and it says so.
    out = migrate_ok(source.data_dir, share)
    assert copied_replaced_removed(out) == (0, 0, 0)
    assert count(out, "already there") == 9 and "changed here during the pass:" not in out


def test_two_servers_merge_and_the_newer_version_wins(tmp_path, share):
    with GatewayProcess(tmp_path / "server1") as one, GatewayProcess(tmp_path / "server2") as two:
        s1, s2 = one.client(), two.client()
        for s3, name in ((s1, "one"), (s2, "two")):
            s3.create_bucket(Bucket="faces")
            s3.put_object(Bucket="faces", Key=f"{name}/only-here.jpg", Body=name.encode(), Metadata={"from": name})
        s1.put_object(Bucket="faces", Key="both/same.jpg", Body=b"older, from one")
        s2.put_object(Bucket="faces", Key="both/same.jpg", Body=b"newer, from two", Metadata={"from": "two"})
        s1.create_bucket(Bucket="only-on-one")
        s1.put_object(Bucket="only-on-one", Key="k", Body=b"k")
        one_sees, two_sees = contents(s1), contents(s2)

    # The newer server first: the older one's pass keeps the share's copy and says so.
    migrate_ok(two.data_dir, share)
    out = migrate_ok(one.data_dir, share)
    assert count(out, "kept newer copy on target") == 1 and "faces/both/same.jpg (target" in out
    assert count(out, "layout files") == 1  # only-on-one's %bucket.json; faces' is the share's already
    # The other order on a second share: the newer server's pass replaces the older copy.
    other = tmp_path / "share2"
    other.mkdir()
    migrate_ok(one.data_dir, other)
    out = migrate_ok(two.data_dir, other)
    assert count(out, "replaced (newer here)") == 1 and count(out, "kept newer copy on target") == 0

    merged = {"faces": {**one_sees["faces"], **two_sees["faces"]}, "only-on-one": one_sees["only-on-one"]}
    assert merged["faces"]["both/same.jpg"] == two_sees["faces"]["both/same.jpg"]
    for root in (share, other):
        with shared_gateway(root, tmp_path) as target:
            assert contents(target.client()) == merged


def test_a_newer_copy_on_the_target_is_kept_and_never_deleted(tmp_path, share):
    with GatewayProcess(tmp_path / "server1") as source, shared_gateway(share, tmp_path) as target:
        s3, t3 = source.client(), target.client()
        s3.create_bucket(Bucket="faces")
        for key in ("kept.jpg", "deleted-here.jpg", "other.jpg"):
            s3.put_object(Bucket="faces", Key=key, Body=b"from this server")
        migrate_ok(source.data_dir, share)
        # Another server, already on the share, writes two of the keys later ...
        for key in ("kept.jpg", "deleted-here.jpg"):
            t3.put_object(Bucket="faces", Key=key, Body=b"written on the share later", Metadata={"by": "share"})
        # ... and this server deletes one of them, and one it alone has.
        s3.delete_object(Bucket="faces", Key="deleted-here.jpg")
        s3.delete_object(Bucket="faces", Key="other.jpg")
        out = migrate_ok(source.data_dir, share)
        assert count(out, "kept newer copy on target") == 1 and "faces/kept.jpg (target" in out
        assert count(out, "removed as deleted") == 1 and "(1 left: another server's copy now)" in out
        assert listing(t3, "faces", delimiter="")[0] == ["deleted-here.jpg", "kept.jpg"]
        for key in ("kept.jpg", "deleted-here.jpg"):
            got = t3.get_object(Bucket="faces", Key=key)
            assert (got["Body"].read(), got["Metadata"]) == (b"written on the share later", {"by": "share"})


def test_damaged_source_objects_are_reported_and_the_rest_copied(tmp_path, share):
    with GatewayProcess(tmp_path / "server1") as source:
        s3 = source.client()
        s3.create_bucket(Bucket="faces")
        for n in range(6):
            s3.put_object(Bucket="faces", Key=f"img/{n}.jpg", Body=b"face %d " % n * 1000)
        healthy = contents(s3)
    store = source.data_dir
    object_file(store, "faces", "img/1.jpg").write_bytes(b"not an object at all")
    with open(object_file(store, "faces", "img/2.jpg"), "r+b") as f:  # cut short
        f.truncate(os.path.getsize(f.name) - 10)
    with open(object_file(store, "faces", "img/3.jpg"), "r+b") as f:  # one data byte flipped
        f.seek(-5, os.SEEK_END)
        byte = f.read(1)
        f.seek(-5, os.SEEK_END)
        f.write(bytes([byte[0] ^ 1]))

    result = run_migrate("--to", str(share), data_dir=store)
    assert result.returncode == 1, result.stdout + result.stderr
    assert count(result.stdout, "errors") == 3 and count(result.stdout, "copied") == 3
    for n, why in ((1, "not a valid object file"), (2, "the header says"), (3, "does not match its ETag")):
        assert f"faces/img/{n}.jpg%obj" in result.stderr and why in result.stderr
        assert f"faces/img/{n}.jpg%obj" in result.stdout
        assert not object_file(share, "faces", f"img/{n}.jpg").exists()
    assert "Next steps" not in result.stdout
    with shared_gateway(share, tmp_path) as target:
        copied = contents(target.client())
    intact = ("img/0.jpg", "img/4.jpg", "img/5.jpg")
    assert copied == {"faces": {k: v for k, v in healthy["faces"].items() if k in intact}}


def test_dry_run_changes_nothing(tmp_path, share):
    with GatewayProcess(tmp_path / "server1") as source:
        s3 = source.client()
        s3.create_bucket(Bucket="faces")
        s3.put_object(Bucket="faces", Key="a.jpg", Body=b"a")
        s3.put_object(Bucket="faces", Key="b.jpg", Body=b"b")
    before_source, before_share = tree_state(source.data_dir), tree_state(share)
    result = run_migrate("--to", str(share), "--dry-run", data_dir=source.data_dir)
    assert result.returncode == 0, result.stderr
    assert "dry run, nothing was changed" in result.stdout and count(result.stdout, "copied") == 2
    assert (tree_state(source.data_dir), tree_state(share)) == (before_source, before_share) == (before_source, [])

    migrate_ok(source.data_dir, share)
    with GatewayProcess(source.data_dir) as source:
        source.client().delete_object(Bucket="faces", Key="a.jpg")
        source.client().put_object(Bucket="faces", Key="c.jpg", Body=b"c")
    before_source, before_share = tree_state(source.data_dir), tree_state(share)
    result = run_migrate("--to", str(share), "--dry-run", data_dir=source.data_dir)
    assert result.returncode == 0, result.stderr
    assert (count(result.stdout, "copied"), count(result.stdout, "removed as deleted")) == (1, 1)
    assert (tree_state(source.data_dir), tree_state(share)) == (before_source, before_share)


def _sharedfs_config(tmp_path: Path) -> Path:
    (tmp_path / "on-share").mkdir()
    config = tmp_path / "shared.toml"
    config.write_text(f'default_backend = "s"\n[backends.s]\ntype = "sharedfs"\nroot = "{tmp_path / "on-share"}"\n')
    return config


def _two_locals_config(tmp_path: Path) -> Path:
    config = tmp_path / "two.toml"
    config.write_text(f'default_backend = "a"\n[backends.a]\ntype = "local"\nroot = "{tmp_path / "a"}"\n'
                      f'[backends.b]\ntype = "local"\nroot = "{tmp_path / "b"}"\n')
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    return config


@pytest.mark.parametrize("case, message", [
    ("missing target", "does not exist: mount the shared storage"),
    ("target is a file", "is not a directory"),
    ("target is the source", "is this store's own directory"),
    ("target inside the source", "is inside the store"),
    ("source inside the target", "is inside the target"),
    ("sharedfs source", "is already on shared storage"),
    ("unknown backend", "no backend named 'nope'"),
    ("two local stores", "choose one with --backend"),
    ("missing source", "has no directory at"),
])
def test_bad_input_is_refused_with_exit_code_2(tmp_path, share, case, message):
    store = tmp_path / "cv-storage"
    store.mkdir()
    (tmp_path / "a-file").write_text("x")
    targets = {"missing target": tmp_path / "nowhere", "target is a file": tmp_path / "a-file",
               "target is the source": store, "target inside the source": store / "sub",
               "source inside the target": tmp_path}
    (store / "sub").mkdir()
    args, data_dir, config = ["--to", str(targets.get(case, share))], store, None
    if case == "sharedfs source":
        data_dir, config = None, _sharedfs_config(tmp_path)
    elif case == "unknown backend":
        args += ["--backend", "nope"]
    elif case == "two local stores":
        data_dir, config = None, _two_locals_config(tmp_path)
    elif case == "missing source":
        data_dir = tmp_path / "no-store"
    before = tree_state(share)
    result = run_migrate(*args, data_dir=data_dir, config=config)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert result.stdout == "" and tree_state(share) == before


def test_a_sharedfs_backend_chosen_by_name_is_refused(tmp_path, share):
    result = run_migrate("--to", str(share), "--backend", "s", config=_sharedfs_config(tmp_path))
    assert result.returncode == 2 and "already on shared storage" in result.stderr


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def _temps(share: Path) -> list[str]:
    return glob.glob(str(share / ".gateway" / "tmp" / socket.gethostname() / "*-migrate-*"))


def put_big_object(s3, bucket: str, key: str, tmp_path: Path) -> None:
    """200 MiB, mostly holes: quick to make, slow enough to copy that a pass can be stopped in it."""
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as f:
        f.truncate(200 * MiB)
        for offset in range(0, 200 * MiB, 16 * MiB):
            f.seek(offset)
            f.write(os.urandom(64))
    with open(sparse, "rb") as f:
        s3.put_object(Bucket=bucket, Key=key, Body=f, ContentType="video/mp4")


def start_and_stop_mid_copy(data_dir: Path, share: Path) -> subprocess.Popen:
    """A pass, stopped (SIGSTOP) while a temp file of at least 1 MiB is on the share: a large object
    is half copied and not yet renamed."""
    cmd = [sys.executable, "-m", "gateway", "migrate", "--quiet", "--to", str(share), "--data-dir", str(data_dir)]
    migration = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
    deadline = time.monotonic() + DEADLINE
    try:
        while True:
            assert migration.poll() is None, "the migration ended before it could be stopped"
            assert time.monotonic() < deadline, "no temp file of the migration appeared"
            if any(_size(t) >= MiB for t in _temps(share)):
                migration.send_signal(signal.SIGSTOP)
                if _temps(share):  # still there while it is stopped: it was not renamed yet
                    return migration
                migration.send_signal(signal.SIGCONT)
            time.sleep(0.001)
    except BaseException:
        migration.kill()
        migration.wait()
        raise


def test_kill_9_in_the_middle_leaves_no_partial_object_and_the_next_pass_completes(tmp_path, share):
    with GatewayProcess(tmp_path / "server1") as source:
        s3 = source.client()
        s3.create_bucket(Bucket="a-big")  # walked first
        s3.create_bucket(Bucket="small")
        put_big_object(s3, "a-big", "video.bin", tmp_path)
        for n in range(20):
            s3.put_object(Bucket="small", Key=f"k{n}", Body=b"small %d" % n)
        expected = contents(s3)

    migration = start_and_stop_mid_copy(source.data_dir, share)
    try:
        second = run_migrate("--to", str(share), data_dir=source.data_dir)  # while the first holds the journal
        assert second.returncode == 2 and "another `gateway migrate`" in second.stderr, second.stderr
    finally:
        migration.kill()
        migration.wait(timeout=DEADLINE)
    assert not object_file(share, "a-big", "video.bin").exists()
    assert _temps(share), "the killed pass left its temp file"
    with shared_gateway(share, tmp_path) as target:
        seen = contents(target.client())
        assert "video.bin" not in seen.get("a-big", {})
        for bucket, objects in seen.items():  # whatever is visible is whole
            assert all(expected[bucket][key] == value for key, value in objects.items())

    out = migrate_ok(source.data_dir, share)
    assert "verified: all" in out and _temps(share) == []
    with shared_gateway(share, tmp_path) as target:
        assert contents(target.client()) == expected


def test_writes_during_an_online_pass_are_counted_and_the_next_pass_copies_them(tmp_path, share):
    with GatewayProcess(tmp_path / "server1") as source:
        s3 = source.client()
        s3.create_bucket(Bucket="0early")  # walked before the big object
        s3.create_bucket(Bucket="a-big")
        s3.put_object(Bucket="0early", Key="overwritten", Body=b"first version")
        put_big_object(s3, "a-big", "video.bin", tmp_path)
        migration = start_and_stop_mid_copy(source.data_dir, share)
        try:  # the gateway serves on while the pass is behind these keys
            s3.put_object(Bucket="0early", Key="new", Body=b"written during the pass")
            s3.put_object(Bucket="0early", Key="overwritten", Body=b"second version")
        finally:
            migration.send_signal(signal.SIGCONT)
        out, err = migration.communicate(timeout=DEADLINE * 5)
        assert migration.returncode == 0, out + err
        assert count(out, "copied") == 2 and "changed here during the pass: 2 (the next pass copies them)" in out
        out = migrate_ok(source.data_dir, share)
        assert (count(out, "copied"), count(out, "replaced (newer here)")) == (1, 1)
        assert "changed here during the pass:" not in out
        expected = contents(s3)
    with shared_gateway(share, tmp_path) as target:
        assert contents(target.client()) == expected


def test_a_target_on_the_stores_own_filesystem_is_warned_about(tmp_path, share):
    """An unmounted share is an empty directory on this server's disk: migrating into it "succeeds"
    and fills the disk. A target on the store's filesystem is warned about; a mounted one is not."""
    data_dir = tmp_path / "cv-storage"
    with GatewayProcess(data_dir) as gw:
        gw.client().create_bucket(Bucket="faces")
        gw.client().put_object(Bucket="faces", Key="a.jpg", Body=b"face")
    result = run_migrate("--to", str(share), data_dir=data_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    warned = result.stdout + result.stderr
    assert "is on the same filesystem as the store" in warned and f"findmnt {share}" in warned, warned
    with tmpfs(tmp_path / "mounted-share", "64m") as mounted:
        result = run_migrate("--to", str(mounted), data_dir=data_dir)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "same filesystem" not in result.stdout + result.stderr
        assert (mounted / "faces").is_dir()
