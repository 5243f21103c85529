"""Bugs found by a second round of probing a real mount with everyday tools (touch, dd, editors,
sqlite3, ...). Each test failed before its fix."""

from __future__ import annotations

import errno
import os
import subprocess
import tempfile
import time

import pytest

from fuse_helpers import sh


def _stored_mtime(fuse_gw, bucket: str, key: str) -> float:
    return float(fuse_gw.client().head_object(Bucket=bucket, Key=key)["Metadata"]["mtime"])


def test_touch_of_an_existing_file_sets_now_and_touch_a_keeps_the_mtime(mnt, bucket, fuse_gw, mount_factory):
    # touch without a date sends UTIME_NOW, touch -a sends UTIME_OMIT for the mtime: mfusepy turned
    # both markers into times about 1.07 s after 1970, which every tool comparing times (make, rsync,
    # find -newer) then saw.
    root = mnt.path / bucket
    sh("touch -d '2001-02-03 04:05:06' f && mkdir d && touch -d '2001-02-03 04:05:06' d", cwd=root)
    old = time.mktime(time.strptime("2001-02-03 04:05:06", "%Y-%m-%d %H:%M:%S"))
    sh("touch -a -d '1999-01-01' f d", cwd=root)
    assert os.stat(root / "f").st_mtime == pytest.approx(old) and os.stat(root / "d").st_mtime == pytest.approx(old)
    before = time.time()
    sh("touch f d", cwd=root)
    after = time.time()
    for name in ("f", "d"):
        assert before - 2 <= os.stat(root / name).st_mtime <= after + 2, name
    assert before - 2 <= _stored_mtime(fuse_gw, bucket, "f") <= after + 2
    assert before - 2 <= _stored_mtime(fuse_gw, bucket, "d/") <= after + 2
    fresh = mount_factory(["--attr-ttl", "0", "--dir-ttl", "0"])
    sh("touch -d '2005-01-01' ref && touch -d '2001-01-01' old", cwd=root)
    found = sh("find . -mindepth 1 -newer ref | sort", cwd=fresh.path / bucket).split()
    assert found == ["./d", "./f"], found
    assert "Traceback" not in mnt.log()


def test_a_full_spool_fails_the_write_and_the_close_and_uploads_nothing(fuse_gw, bucket, mount_factory):
    # The write past --spool-size failed with ENOSPC, but close() then uploaded what had fit: a
    # truncated object replaced the complete one (or appeared under a new name), and close said 0.
    s3 = fuse_gw.client()
    s3.put_object(Bucket=bucket, Key="kept", Body=b"the complete old version")
    mount = mount_factory(["--spool-size", "2M"])
    root = mount.path / bucket
    chunk = b"x" * (512 * 1024)
    for name, flags in (("new", os.O_CREAT | os.O_EXCL), ("kept", os.O_TRUNC)):
        fd = os.open(root / name, os.O_WRONLY | flags, 0o644)
        try:
            with pytest.raises(OSError) as info:
                for _ in range(8):
                    os.write(fd, chunk)
            assert info.value.errno == errno.ENOSPC
            with pytest.raises(OSError) as info:
                os.fsync(fd)
            assert info.value.errno == errno.ENOSPC
        finally:
            with pytest.raises(OSError) as info:
                os.close(fd)
        assert info.value.errno == errno.ENOSPC, f"close of {name} did not report the lost data"
    # dd stops at the first failed write; what it wrote before must not show up either. (dd moves
    # its new file to fd 1 at once: that close stores it empty, as a create with O_EXCL does.)
    result = subprocess.run(["dd", "if=/dev/urandom", f"of={root / 'dd'}", "bs=1M", "count=8"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode != 0 and "No space left on device" in result.stderr, result.stderr
    assert s3.get_object(Bucket=bucket, Key="kept")["Body"].read() == b"the complete old version"
    sizes = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert sizes == {"kept": 24, "new": 0, "dd": 0}, sizes
    assert sorted(os.listdir(root)) == ["dd", "kept", "new"]
    assert (root / "kept").read_bytes() == b"the complete old version"
    # The spool is free again: the next file is written and stored whole.
    (root / "after").write_bytes(chunk)
    assert s3.get_object(Bucket=bucket, Key="after")["Body"].read() == chunk
    assert "Traceback" not in mount.log()


def test_ftruncate_of_an_open_file_waits_for_its_close(mnt, bucket, fuse_gw):
    # mfusepy's libfuse 3 truncate dropped the file handle, so ftruncate() looked like truncate(2) by
    # name and stored the cut file at once: another client saw it empty while the program was still
    # writing the new content (and each ftruncate uploaded the whole file: sqlite, dd, editors).
    s3 = fuse_gw.client()
    s3.put_object(Bucket=bucket, Key="f", Body=b"the old content")
    path = mnt.path / bucket / "f"
    fd = os.open(path, os.O_RDWR)
    try:
        os.ftruncate(fd, 0)
        assert os.fstat(fd).st_size == 0
        os.write(fd, b"new")
        os.ftruncate(fd, 5)
        assert os.pread(fd, 10, 0) == b"new\0\0"
        assert s3.get_object(Bucket=bucket, Key="f")["Body"].read() == b"the old content"
    finally:
        os.close(fd)
    assert s3.get_object(Bucket=bucket, Key="f")["Body"].read() == b"new\0\0"
    # truncate(2) by name still stores the new size at once.
    os.truncate(path, 2)
    assert s3.get_object(Bucket=bucket, Key="f")["Body"].read() == b"ne"
    assert path.read_bytes() == b"ne"


def test_mv_of_a_directory_to_the_same_name_in_another_bucket(mnt, bucket, fuse_gw):
    # The "into itself" check compared keys without their buckets: bkt/d -> other/d was refused
    # with EINVAL ("cannot move to a subdirectory of itself").
    other = bucket[:50] + "-other"
    fuse_gw.client().create_bucket(Bucket=other)
    sh("mkdir -p d/sub && echo one > d/sub/f && echo two > d/g", cwd=mnt.path / bucket)
    sh(f"mv {bucket}/d {other}/", cwd=mnt.path)
    assert sh("cat d/sub/f d/g", cwd=mnt.path / other) == "one\ntwo\n"
    assert os.listdir(mnt.path / bucket) == []
    keys = sorted(o["Key"] for o in fuse_gw.client().list_objects_v2(Bucket=other).get("Contents", []))
    assert keys == ["d/", "d/g", "d/sub/", "d/sub/f"], keys
    # Still refused within one bucket.
    sh("mkdir -p d2/in", cwd=mnt.path / other)
    result = subprocess.run(["mv", "d2", "d2/in/"], cwd=mnt.path / other, capture_output=True, text=True, timeout=30,
                            check=False)
    assert result.returncode != 0 and (mnt.path / other / "d2" / "in").is_dir()


def test_removing_or_replacing_an_open_file_leaves_no_hidden_objects(mnt, bucket, fuse_gw):
    # libfuse's high-level API renamed an open file that was unlinked (or renamed over) to
    # .fuse_hiddenNNN instead, until its last close: a copy of the object in the bucket, seen by every
    # client, left behind if the mount died, and `rm -rf` of a directory holding an open file
    # failed with ENOTEMPTY (the hidden name was still inside).
    s3 = fuse_gw.client()
    root = mnt.path / bucket
    sh("mkdir -p dir/sub && echo inside > dir/sub/f && echo original > target && echo replacement > new", cwd=root)
    inside = os.open(root / "dir" / "sub" / "f", os.O_RDONLY)
    target = os.open(root / "target", os.O_RDONLY)
    try:
        sh("rm -rf dir && mv new target", cwd=root)
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))
        assert keys == ["target"], keys
        assert sorted(os.listdir(root)) == ["target"]
        assert (root / "target").read_bytes() == b"replacement\n"
        # Small files stay readable through their open handles, and fstat works (not for "inside":
        # libfuse has no path for a file whose directory was removed, ESTALE).
        assert os.pread(inside, 100, 0) == b"inside\n"
        assert os.pread(target, 100, 0) == b"original\n" and os.fstat(target).st_size == 9
        writer = os.open(root / "w", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.write(writer, b"written")
            os.unlink(root / "w")
            os.fchmod(writer, 0o600)
            os.utime(writer)
            os.write(writer, b" more")
            assert os.fstat(writer).st_size == 12 and os.pread(writer, 100, 0) == b"written more"
        finally:
            os.close(writer)
    finally:
        os.close(inside)
        os.close(target)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))
    assert keys == ["target"], keys
    assert "Traceback" not in mnt.log()


def test_an_anonymous_temp_file_leaves_nothing_behind(mnt, bucket, fuse_gw):
    # tempfile.TemporaryFile falls back to mkstemp + unlink here (no O_TMPFILE through FUSE): the
    # exclusive create stores the empty file at once, and the unlink of the still open file did not
    # delete it (the mount took it for a file never stored).
    root = mnt.path / bucket
    with tempfile.TemporaryFile(dir=root) as f:
        f.write(b"abc" * 100_000)
        f.seek(0)
        assert f.read() == b"abc" * 100_000
        assert os.fstat(f.fileno()).st_size == 300_000
        assert os.listdir(root) == []
    assert "Contents" not in fuse_gw.client().list_objects_v2(Bucket=bucket)
    assert os.listdir(root) == []
