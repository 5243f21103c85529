"""The aws cli (pip package awscli) against a real gateway: s3 cp/sync/ls/rm and s3api calls."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

# Fixtures imported from s3_helpers: bucket (unique per test).
from s3_helpers import run_aws, unique_bucket  # noqa: F401

MiB = 1024 * 1024


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "tree"
    files = {
        "cam1/0001.jpg": os.urandom(30_000), "cam1/0002.jpg": os.urandom(45_000), "cam2/meta.json": b'{"a": 1}',
        "with space/ünï.txt": b"unicode name", "top.bin": b"",
    }
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root, files


def test_cp_ls_rm(gateway, s3, bucket, tmp_path):
    source = tmp_path / "face.jpg"
    source.write_bytes(os.urandom(123_456))
    run_aws(gateway, "s3", "cp", str(source), f"s3://{bucket}/faces/face.jpg", "--content-type", "image/jpeg",
            "--metadata", "camera=7")
    head = s3.head_object(Bucket=bucket, Key="faces/face.jpg")
    assert head["ContentType"] == "image/jpeg"
    assert head["Metadata"] == {"camera": "7"}
    listing = run_aws(gateway, "s3", "ls", f"s3://{bucket}/faces/").stdout
    assert "123456 face.jpg" in listing
    assert "PRE faces/" in run_aws(gateway, "s3", "ls", f"s3://{bucket}/").stdout
    assert bucket in run_aws(gateway, "s3", "ls").stdout
    back = tmp_path / "back.jpg"
    run_aws(gateway, "s3", "cp", f"s3://{bucket}/faces/face.jpg", str(back))
    assert back.read_bytes() == source.read_bytes()
    run_aws(gateway, "s3", "rm", f"s3://{bucket}/faces/face.jpg")
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_sync_both_ways_and_delete(gateway, s3, bucket, tree, tmp_path):
    root, files = tree
    run_aws(gateway, "s3", "sync", str(root), f"s3://{bucket}/backup")
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == sorted(f"backup/{name}" for name in files)
    for name, data in files.items():
        assert s3.get_object(Bucket=bucket, Key=f"backup/{name}")["Body"].read() == data
    # A second sync has nothing to do.
    assert run_aws(gateway, "s3", "sync", str(root), f"s3://{bucket}/backup").stdout.strip() == ""
    # --delete removes what is gone locally.
    (root / "cam1/0002.jpg").unlink()
    run_aws(gateway, "s3", "sync", str(root), f"s3://{bucket}/backup", "--delete")
    assert "backup/cam1/0002.jpg" not in [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    # And back down.
    restored = tmp_path / "restored"
    run_aws(gateway, "s3", "sync", f"s3://{bucket}/backup", str(restored))
    for name, data in files.items():
        if name != "cam1/0002.jpg":
            assert (restored / name).read_bytes() == data
    run_aws(gateway, "s3", "rm", f"s3://{bucket}/backup", "--recursive")
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_multipart_cp(gateway, s3, bucket, tmp_path):
    """With a 5 MiB threshold the cli uploads 12 MiB in three parts and downloads with ranged GETs."""
    config_dir = tmp_path / "aws"
    config_dir.mkdir()
    (config_dir / "config").write_text("[default]\ns3 =\n  multipart_threshold = 5MB\n  multipart_chunksize = 5MB\n")
    (config_dir / "credentials").write_text("")
    data = os.urandom(12 * MiB)
    source = tmp_path / "clip.mp4"
    source.write_bytes(data)
    run_aws(gateway, "s3", "cp", str(source), f"s3://{bucket}/clip.mp4", config_dir=config_dir)
    head = s3.head_object(Bucket=bucket, Key="clip.mp4")
    assert head["ETag"].endswith('-3"'), head["ETag"]
    back = tmp_path / "back.mp4"
    run_aws(gateway, "s3", "cp", f"s3://{bucket}/clip.mp4", str(back), config_dir=config_dir)
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(data).digest()
    # Server-side copy of a multipart object (the cli uses UploadPartCopy above its threshold).
    run_aws(gateway, "s3", "cp", f"s3://{bucket}/clip.mp4", f"s3://{bucket}/copy.mp4", config_dir=config_dir)
    copied = s3.get_object(Bucket=bucket, Key="copy.mp4")["Body"].read()
    assert hashlib.sha256(copied).digest() == hashlib.sha256(data).digest()


def test_s3api_calls(gateway, s3, bucket, tmp_path):
    body = tmp_path / "body.txt"
    body.write_bytes(b"s3api body")
    put = json.loads(run_aws(gateway, "s3api", "put-object", "--bucket", bucket, "--key", "dir/k.txt",
                             "--body", str(body), "--content-type", "text/plain").stdout)
    assert put["ETag"] == f'"{hashlib.md5(b"s3api body").hexdigest()}"'
    head = json.loads(run_aws(gateway, "s3api", "head-object", "--bucket", bucket, "--key", "dir/k.txt").stdout)
    assert head["ContentLength"] == 10 and head["ContentType"] == "text/plain"
    listed = json.loads(run_aws(gateway, "s3api", "list-objects-v2", "--bucket", bucket,
                                "--delimiter", "/").stdout)
    assert [p["Prefix"] for p in listed["CommonPrefixes"]] == ["dir/"]
    out = tmp_path / "range.txt"
    run_aws(gateway, "s3api", "get-object", "--bucket", bucket, "--key", "dir/k.txt", "--range", "bytes=0-4",
            str(out))
    assert out.read_bytes() == b"s3api"
    run_aws(gateway, "s3api", "copy-object", "--bucket", bucket, "--key", "copy.txt",
            "--copy-source", f"{bucket}/dir/k.txt")
    deleted = json.loads(run_aws(gateway, "s3api", "delete-objects", "--bucket", bucket, "--delete",
                                 json.dumps({"Objects": [{"Key": "dir/k.txt"}, {"Key": "copy.txt"}]})).stdout)
    assert sorted(d["Key"] for d in deleted["Deleted"]) == ["copy.txt", "dir/k.txt"]


def test_bucket_commands_and_errors(gateway):
    run_aws(gateway, "s3", "mb", "s3://cli-made-bucket")
    assert "cli-made-bucket" in run_aws(gateway, "s3", "ls").stdout
    failed = run_aws(gateway, "s3api", "head-object", "--bucket", "cli-made-bucket", "--key", "nope", check=False)
    assert failed.returncode != 0
    assert "404" in failed.stderr
    failed = run_aws(gateway, "s3", "ls", "s3://no-such-bucket-cli", check=False)
    assert failed.returncode != 0
    assert "NoSuchBucket" in failed.stderr
    run_aws(gateway, "s3", "rb", "s3://cli-made-bucket")
    assert "cli-made-bucket" not in run_aws(gateway, "s3", "ls").stdout


def test_presign(gateway, s3, bucket):
    import urllib.request

    s3.put_object(Bucket=bucket, Key="shared.txt", Body=b"shared by url")
    url = run_aws(gateway, "s3", "presign", f"s3://{bucket}/shared.txt", "--expires-in", "60").stdout.strip()
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"shared by url"
