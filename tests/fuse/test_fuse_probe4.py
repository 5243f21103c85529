"""Bugs found by a fourth round of probing a real mount (an open file unlinked, renamed over or whose
directory is renamed; O_RDONLY|O_TRUNC; keys the mount cannot show; nanosecond mtimes; libfuse's
max_threads warning). Each test failed before its fix."""

from __future__ import annotations

import errno
import os
import subprocess
import time

import pytest

from fuse_helpers import sh
from gateway.fuse.mount import MountConfig, fuse_options


def _keys(s3, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


@pytest.mark.parametrize("size", [1000, 300_000])
def test_writes_to_an_open_file_go_on_after_unlink_and_rename_over(mnt, bucket, fuse_gw, size):
    # The first write of a handle that had not written before downloaded the object into the spool:
    # after an unlink that GET found nothing (ENOENT), after a rename over the file it asked for the
    # new object's key with the old version's ETag (412, EIO). docs/fuse.md promised that such writes
    # go on (and are never uploaded).
    s3 = fuse_gw.client()
    root = mnt.path / bucket
    old = os.urandom(size)
    (root / "ux").write_bytes(old)
    fd = os.open(root / "ux", os.O_RDWR)
    try:
        os.unlink(root / "ux")
        assert os.pread(fd, size + 10, 0) == old
        assert os.pwrite(fd, b"more", 10) == 4
        assert os.pread(fd, size + 10, 0) == old[:10] + b"more" + old[14:]
        assert os.fstat(fd).st_size == size
    finally:
        os.close(fd)
    (root / "uy").write_bytes(old)
    fd = os.open(root / "uy", os.O_WRONLY | os.O_APPEND)
    try:
        (root / "uz").write_bytes(b"new")
        os.rename(root / "uz", root / "uy")
        assert os.write(fd, b"appended") == 8
        assert os.fstat(fd).st_size == size + 8
    finally:
        os.close(fd)
    assert _keys(s3, bucket) == ["uy"]
    assert s3.get_object(Bucket=bucket, Key="uy")["Body"].read() == b"new"
    assert (root / "uy").read_bytes() == b"new"
    assert "Traceback" not in mnt.log()


def test_a_write_whose_old_content_is_gone_fails_with_a_clear_log_line(fuse_gw, bucket, mount_factory):
    # A file over the 128 KiB kept whole that could not be kept for its writes either (here: the spool
    # is too small for it): its writes fail with EIO, and the log says why, not a bare ENOENT.
    s3 = fuse_gw.client()
    s3.put_object(Bucket=bucket, Key="big", Body=b"b" * 3_000_000)
    mount = mount_factory(["--spool-size", "1M"])
    root = mount.path / bucket
    fd = os.open(root / "big", os.O_RDWR)
    try:
        os.unlink(root / "big")
        with pytest.raises(OSError) as info:
            os.pwrite(fd, b"more", 10)
        assert info.value.errno == errno.EIO
    finally:
        os.close(fd)
    assert "could not be kept for its writes" in mount.log()
    assert "its previous content (3000000 bytes) can no longer be fetched" in mount.log()
    assert _keys(s3, bucket) == []
    assert "Traceback" not in mount.log()


def test_reads_go_on_after_the_directory_of_an_open_file_is_renamed(fuse_gw, bucket, mount_factory):
    # A rename updated the open file's key, but its handles' readers kept asking for the old key,
    # which the rename had deleted: ENOENT for every read the page cache did not hold.
    s3 = fuse_gw.client()
    data = os.urandom(20_000_000)
    s3.put_object(Bucket=bucket, Key="rdA/f", Body=data)
    s3.put_object(Bucket=bucket, Key="g", Body=data)
    mount = mount_factory()  # no --local-socket: reads through HTTP
    root = mount.path / bucket
    fd = os.open(root / "rdA" / "f", os.O_RDONLY)
    single = os.open(root / "g", os.O_RDONLY)
    try:
        assert os.pread(fd, 10, 0) == data[:10]
        assert os.pread(single, 10, 0) == data[:10]
        os.rename(root / "rdA", root / "rdB")
        os.rename(root / "g", root / "g2")
        for offset in (15_000_000, 5_000_000, 19_999_990):
            assert os.pread(fd, 10, offset) == data[offset: offset + 10], offset
            assert os.pread(single, 10, offset) == data[offset: offset + 10], offset
        assert _keys(s3, bucket) == ["g2", "rdB/", "rdB/f"]
    finally:
        os.close(fd)
        os.close(single)
    assert "Traceback" not in mount.log()


def test_open_read_only_with_o_trunc_truncates(mnt, bucket, fuse_gw):
    # Linux truncates on O_RDONLY|O_TRUNC when the caller may write; the mount truncated only
    # handles opened for writing, so the program saw the old size and the object kept its bytes.
    s3 = fuse_gw.client()
    path = mnt.path / bucket / "rot"
    path.write_bytes(b"hello\n")
    fd = os.open(path, os.O_RDONLY | os.O_TRUNC)
    try:
        assert os.fstat(fd).st_size == 0
        assert os.read(fd, 10) == b""
    finally:
        os.close(fd)
    assert s3.get_object(Bucket=bucket, Key="rot")["Body"].read() == b""
    assert path.stat().st_size == 0


def test_no_libfuse_warning_about_max_threads(mnt, bucket):
    # libfuse 3.14's fuse_main path logged "Ignoring invalid max threads value 4294967295 > max
    # (100000)." at every mount: mfusepy passes no max_threads.
    (mnt.path / bucket / "f").write_bytes(b"x")
    assert "max threads" not in mnt.log()
    config = MountConfig("http://127.0.0.1:1", "/mnt", "k", "s")
    assert fuse_options(config, 3)["max_threads"] == fuse_options(config, 3)["max_idle_threads"] == 10
    assert "max_threads" not in fuse_options(config, 2)  # unknown to libfuse 2


def test_keys_the_mount_cannot_show_are_named_in_the_log(mnt, bucket, fuse_gw):
    # Keys with a ".", ".." or empty path segment cannot be shown: the directory looked empty but
    # rmdir said ENOTEMPTY, and nothing said why.
    s3 = fuse_gw.client()
    for key in ("odd/./x", "odd/../y", "odd//z"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"data")
    root = mnt.path / bucket
    assert os.listdir(root / "odd") == []
    with pytest.raises(OSError) as info:
        os.rmdir(root / "odd")
    assert info.value.errno == errno.ENOTEMPTY
    result = subprocess.run(["rm", "-rf", "odd"], cwd=root, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode != 0
    deadline = time.monotonic() + 5
    while "cannot show" not in mnt.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [line for line in mnt.log().splitlines() if "cannot show" in line]
    assert len(lines) == 1, lines  # once, not for every readdir and rmdir
    assert "odd/./" in lines[0] and "odd/../" in lines[0] and "odd//" in lines[0], lines[0]
    assert "Traceback" not in mnt.log()


def test_explicit_mtimes_keep_their_nanoseconds(mnt, bucket, fuse_gw, mount_factory, tmp_path):
    # utimensat's nanoseconds went through a double twice (stored .123456717, shown .123456768), so
    # after cp -p the local source was "newer" than its copy on the mount.
    s3 = fuse_gw.client()
    root = mnt.path / bucket
    local = tmp_path / "local_ns"
    sh(f"touch -d '2020-01-01 00:00:00.123456789' ns {local}", cwd=root)
    assert os.stat(root / "ns").st_mtime_ns == os.stat(local).st_mtime_ns
    meta = s3.head_object(Bucket=bucket, Key="ns")["Metadata"]
    assert meta["mtime"].endswith(".123456789"), meta
    sh(f"cp -p {local} ns2 && mkdir d && touch -d '1960-05-06 07:08:09.000000001' d", cwd=root)
    sh(f"[ ! {local} -nt ns2 ] && [ ! ns2 -nt {local} ]", cwd=root)
    fresh = mount_factory(["--attr-ttl", "0", "--dir-ttl", "0"])
    for name in ("ns", "ns2"):
        assert os.stat(fresh.path / bucket / name).st_mtime_ns == os.stat(local).st_mtime_ns, name
    expected = int(time.mktime(time.strptime("1960-05-06 07:08:09", "%Y-%m-%d %H:%M:%S"))) * 10 ** 9 + 1
    assert os.stat(fresh.path / bucket / "d").st_mtime_ns == expected
