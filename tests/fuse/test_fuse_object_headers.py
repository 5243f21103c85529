"""What an object keeps through the mount's metadata copies: chmod, chown and touch, renames, and
files written again keep the Content-Type and stored headers other clients gave (S3's REPLACE copy
drops them unless they are sent again), and a file's mtime does not move to the time of a chmod or
a rename. A file saved through a temporary name (rsync, `sed -i`, editors) gets the type of its
final name. Real mounts of a real gateway; the objects are checked with boto3."""

from __future__ import annotations

import os
import subprocess
import time

import pytest


def _head(s3, bucket, key) -> dict:
    return s3.head_object(Bucket=bucket, Key=key)


@pytest.fixture
def quick(mount_factory):
    """A mount whose cached attributes expire at once: what stat shows is what the gateway has."""
    return mount_factory(["--attr-ttl", "0", "--dir-ttl", "0"])


def test_chmod_chown_and_touch_keep_content_type_stored_headers_and_mtime(fuse_gw, bucket, quick):
    s3 = fuse_gw.client()
    s3.put_object(Bucket=bucket, Key="cam1/0001", Body=b"jpeg bytes", ContentType="image/jpeg",
                  CacheControl="max-age=60", ContentDisposition='inline; filename="0001.jpg"',
                  Metadata={"camera": "gate 7"})
    path = quick.path / bucket / "cam1" / "0001"
    before = os.stat(path).st_mtime
    time.sleep(1.1)  # a copy now would have a Last-Modified a second later
    os.chmod(path, 0o600)
    os.chown(path, 1234, 1235)
    head = _head(s3, bucket, "cam1/0001")
    assert head["ContentType"] == "image/jpeg"
    assert head["CacheControl"] == "max-age=60" and head["ContentDisposition"] == 'inline; filename="0001.jpg"'
    assert head["Metadata"]["camera"] == "gate 7"
    st = os.stat(path)
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o600, 1234, 1235)
    assert st.st_mtime == before, "chmod/chown changed the mtime"
    os.utime(path, (1_600_000_000, 1_600_000_000))
    head = _head(s3, bucket, "cam1/0001")
    assert head["ContentType"] == "image/jpeg" and head["CacheControl"] == "max-age=60"
    assert os.stat(path).st_mtime == 1_600_000_000
    assert path.read_bytes() == b"jpeg bytes"


def test_a_file_written_again_keeps_its_content_type_and_stored_headers(fuse_gw, bucket, quick):
    s3 = fuse_gw.client()
    s3.put_object(Bucket=bucket, Key="notes.txt", Body=b'{"a": 1}', ContentType="application/json",
                  CacheControl="no-cache")
    path = quick.path / bucket / "notes.txt"
    with open(path, "ab") as f:
        f.write(b"\n")
    head = _head(s3, bucket, "notes.txt")
    assert (head["ContentType"], head.get("CacheControl")) == ("application/json", "no-cache")
    assert s3.get_object(Bucket=bucket, Key="notes.txt")["Body"].read() == b'{"a": 1}\n'
    (quick.path / bucket / "new.json").write_bytes(b"{}")  # a new file: the type its name suggests
    assert _head(s3, bucket, "new.json")["ContentType"] == "application/json"


def test_renames_keep_the_mtime_and_a_temporary_name_gets_the_final_names_type(fuse_gw, bucket, quick, tmp_path):
    s3 = fuse_gw.client()
    root = quick.path / bucket
    s3.put_object(Bucket=bucket, Key="a.bin", Body=b"a", ContentType="application/x-custom",
                  CacheControl="max-age=5")
    (root / "plain").write_bytes(b"written by the mount")
    (root / "dir").mkdir()
    (root / "dir" / "inside.txt").write_bytes(b"inside")
    s3.put_object(Bucket=bucket, Key="dir/from-s3.jpg", Body=b"x", ContentType="image/jpeg")
    mtimes = {name: os.stat(root / name).st_mtime for name in ("a.bin", "plain", "dir/inside.txt", "dir/from-s3.jpg")}
    time.sleep(1.1)
    os.rename(root / "a.bin", root / "b.bin")
    os.rename(root / "plain", root / "plain2")
    os.rename(root / "dir", root / "moved")
    assert os.stat(root / "b.bin").st_mtime == mtimes["a.bin"]
    assert os.stat(root / "plain2").st_mtime == mtimes["plain"]
    assert os.stat(root / "moved" / "inside.txt").st_mtime == mtimes["dir/inside.txt"]
    assert os.stat(root / "moved" / "from-s3.jpg").st_mtime == mtimes["dir/from-s3.jpg"]
    head = _head(s3, bucket, "b.bin")
    assert (head["ContentType"], head.get("CacheControl")) == ("application/x-custom", "max-age=5")
    assert _head(s3, bucket, "moved/from-s3.jpg")["ContentType"] == "image/jpeg"

    # rsync writes ".0001.jpg.XXXXXX" and renames it into place; sed -i and editors do the same.
    image = tmp_path / "0001.jpg"
    image.write_bytes(os.urandom(5000))
    (root / "ingest").mkdir()
    subprocess.run(["rsync", "-a", str(image), str(root / "ingest") + "/"], check=True, timeout=60)
    assert _head(s3, bucket, "ingest/0001.jpg")["ContentType"] == "image/jpeg"
    assert s3.get_object(Bucket=bucket, Key="ingest/0001.jpg")["Body"].read() == image.read_bytes()
    (root / "page.txt").write_bytes(b"hello\n")
    subprocess.run(["sed", "-i", "s/hello/bye/", str(root / "page.txt")], check=True, timeout=60)
    assert _head(s3, bucket, "page.txt")["ContentType"] == "text/plain"
    assert (root / "page.txt").read_bytes() == b"bye\n"
