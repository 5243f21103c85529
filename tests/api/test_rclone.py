"""rclone (Debian package) against a real gateway, configured only through RCLONE_CONFIG_GW_* variables."""

from __future__ import annotations

import hashlib
import os

# Fixtures imported from s3_helpers: bucket (unique per test).
from s3_helpers import REMOTE, run_rclone, unique_bucket  # noqa: F401

MiB = 1024 * 1024


def _make_tree(root):
    files = {
        "a.jpg": os.urandom(40_000), "dir/b.json": b'{"b": 2}', "dir/sub/c.bin": os.urandom(1000),
        "space name/ünï.txt": b"unicode", "empty": b"",
    }
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def test_copy_ls_check_sync_delete(gateway, s3, bucket, tmp_path):
    source = tmp_path / "src"
    files = _make_tree(source)
    remote = f"{REMOTE}:{bucket}/data"
    run_rclone(gateway, "copy", str(source), remote)
    for name, data in files.items():
        assert s3.get_object(Bucket=bucket, Key=f"data/{name}")["Body"].read() == data
    listing = run_rclone(gateway, "ls", remote).stdout
    assert sorted(line.split(None, 1)[1] for line in listing.splitlines()) == sorted(files)
    assert "40000 a.jpg" in listing
    run_rclone(gateway, "check", str(source), remote)  # sizes and MD5 (ETag) of every file agree
    assert run_rclone(gateway, "lsjson", "--hash", remote + "/a.jpg").stdout.count(
        hashlib.md5(files["a.jpg"]).hexdigest()) == 1

    # sync deletes on the remote what is gone locally
    (source / "dir/b.json").unlink()
    run_rclone(gateway, "sync", str(source), remote)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    assert "data/dir/b.json" not in keys and "data/dir/sub/c.bin" in keys

    # and back down
    back = tmp_path / "back"
    run_rclone(gateway, "copy", remote, str(back))
    run_rclone(gateway, "check", str(source), str(back))

    run_rclone(gateway, "delete", remote)
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_check_detects_a_difference(gateway, s3, bucket, tmp_path):
    source = tmp_path / "src"
    _make_tree(source)
    remote = f"{REMOTE}:{bucket}"
    run_rclone(gateway, "copy", str(source), remote)
    s3.put_object(Bucket=bucket, Key="a.jpg", Body=b"changed behind rclone's back")
    result = run_rclone(gateway, "check", str(source), remote, check=False)
    assert result.returncode != 0
    assert "a.jpg" in result.stderr


def test_multipart_upload_over_cutoff(gateway, s3, bucket, tmp_path):
    """Above upload_cutoff rclone uploads in chunk_size parts (5 MiB is rclone's smallest chunk)."""
    data = os.urandom(11 * MiB + 123)
    source = tmp_path / "big"
    source.mkdir()
    (source / "clip.mp4").write_bytes(data)
    options = {"UPLOAD_CUTOFF": "1M", "CHUNK_SIZE": "5M"}
    run_rclone(gateway, "copy", str(source), f"{REMOTE}:{bucket}", options=options)
    head = s3.head_object(Bucket=bucket, Key="clip.mp4")
    assert head["ETag"].endswith('-3"'), head["ETag"]
    assert head["ContentLength"] == len(data)
    # rclone keeps the MD5 of multipart uploads in metadata, so check compares real hashes.
    run_rclone(gateway, "check", str(source), f"{REMOTE}:{bucket}", options=options)
    back = tmp_path / "back"
    run_rclone(gateway, "copy", f"{REMOTE}:{bucket}/clip.mp4", str(back), options=options)
    assert hashlib.sha256((back / "clip.mp4").read_bytes()).digest() == hashlib.sha256(data).digest()
    assert "Uploads" not in s3.list_multipart_uploads(Bucket=bucket)


def test_bucket_create_and_purge(gateway, s3, tmp_path):
    run_rclone(gateway, "mkdir", f"{REMOTE}:rclone-made-bucket")
    s3.head_bucket(Bucket="rclone-made-bucket")
    source = tmp_path / "src"
    _make_tree(source)
    run_rclone(gateway, "copy", str(source), f"{REMOTE}:rclone-made-bucket")
    run_rclone(gateway, "purge", f"{REMOTE}:rclone-made-bucket")
    assert "rclone-made-bucket" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
