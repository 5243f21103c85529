"""Bugs found by a fifth round of probing a real mount (metadata changes of a directory known only from
its parent's listing; a rename over a directory whose marker holds data; mtimes no stat can show;
special files; setgid directories). Each test failed before its fix."""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess

import pytest
from fuse_helpers import sh

from gateway.fuse.client import ObjectClient
from gateway.fuse.fs import GatewayFS


def _errno_of(action) -> int:
    with pytest.raises(OSError) as info:
        action()
    return info.value.errno


def _head(s3, bucket: str, key: str) -> dict:
    return s3.head_object(Bucket=bucket, Key=key)


def test_chmod_chown_touch_of_a_listed_directory_keep_its_marker(fuse_gw, bucket, mnt, mount_factory):
    # A directory known from its parent's listing (a common prefix: nothing said of its marker) was
    # taken for one without a marker: chmod, chown and touch PUT a new empty marker, so its stored mode
    # went back to the default, its owner and mtime were dropped, and a marker another client had
    # written with bytes and metadata lost them.
    s3 = fuse_gw.client()
    root = mnt.path / bucket
    (root / "priv" / "secret").mkdir(parents=True)
    os.chmod(root / "priv" / "secret", 0o700)
    os.utime(root / "priv" / "secret", (978_307_200, 978_307_200))  # 2001-01-01
    s3.put_object(Bucket=bucket, Key="bd/withbytes/", Body=b"marker bytes", ContentType="text/plain",
                  CacheControl="max-age=60", Metadata={"camera": "gate 7", "mode": "40750"})
    other = mount_factory()  # a fresh mount: what it knows of the directories comes from listings
    sh("ls -l priv bd", cwd=other.path / bucket)
    os.chown(other.path / bucket / "priv" / "secret", 1000, -1)
    meta = _head(s3, bucket, "priv/secret/")["Metadata"]
    assert (meta["mode"], meta["uid"]) == ("40700", "1000"), meta
    assert float(meta["mtime"]) == 978_307_200, meta
    st = os.stat(other.path / bucket / "priv" / "secret")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_mtime) == (0o700, 1000, 978_307_200)

    os.chmod(other.path / bucket / "bd" / "withbytes", 0o711)
    head = _head(s3, bucket, "bd/withbytes/")
    assert head["Metadata"]["mode"] == "40711" and head["Metadata"]["camera"] == "gate 7", head["Metadata"]
    assert (head["ContentType"], head.get("CacheControl")) == ("text/plain", "max-age=60")
    assert s3.get_object(Bucket=bucket, Key="bd/withbytes/")["Body"].read() == b"marker bytes"
    sh("ls -l bd", cwd=other.path / bucket)  # listed again, then touched
    os.utime(other.path / bucket / "bd" / "withbytes", (1_600_000_000, 1_600_000_000))
    head = _head(s3, bucket, "bd/withbytes/")
    assert head["Metadata"]["mode"] == "40711" and head["Metadata"]["camera"] == "gate 7", head["Metadata"]
    assert float(head["Metadata"]["mtime"]) == 1_600_000_000
    assert s3.get_object(Bucket=bucket, Key="bd/withbytes/")["Body"].read() == b"marker bytes"

    # An implicit directory (no marker) still gets one, with the mode asked.
    s3.put_object(Bucket=bucket, Key="implicit/file", Body=b"f")
    sh("ls -l", cwd=other.path / bucket)
    os.chmod(other.path / bucket / "implicit", 0o750)
    assert _head(s3, bucket, "implicit/")["Metadata"]["mode"] == "40750"
    assert "Traceback" not in other.log()


def test_a_directory_renamed_over_one_whose_marker_holds_data_is_refused(fuse_gw, bucket, mnt):
    # rmdir of such a directory says ENOTEMPTY ("holds data"), but a rename over it replaced the
    # marker: the bytes another S3 client stored under "target/" were gone unseen.
    s3 = fuse_gw.client()
    s3.put_object(Bucket=bucket, Key="target/", Body=b"fourteen bytes", Metadata={"camera": "gate 7"})
    s3.put_object(Bucket=bucket, Key="plain/", Body=b"")
    root = mnt.path / bucket
    (root / "src").mkdir()
    (root / "src" / "inside").write_bytes(b"inside")
    assert os.path.isdir(root / "target")
    assert _errno_of(lambda: os.rename(root / "src", root / "target")) == errno.ENOTEMPTY
    result = subprocess.run(["mv", "-T", "src", "target"], cwd=root, capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "Directory not empty" in result.stderr, result.stderr
    got = s3.get_object(Bucket=bucket, Key="target/")
    assert got["Body"].read() == b"fourteen bytes" and got["Metadata"] == {"camera": "gate 7"}
    assert (root / "src" / "inside").read_bytes() == b"inside"
    os.rename(root / "src", root / "plain")  # over an empty marker: moved, as before
    assert (root / "plain" / "inside").read_bytes() == b"inside"
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]) == [
        "plain/", "plain/inside", "target/"]


def test_touch_beyond_the_mtimes_stat_can_show_is_refused(fuse_gw, bucket, mnt):
    # touch -d 2300-01-01 was stored (mtime 10413792000) but never shown (beyond MTIME_LIMIT, ignored
    # when read): stat kept the old time, so rsync sent the file again at every run.
    s3 = fuse_gw.client()
    root = mnt.path / bucket
    (root / "f").write_bytes(b"f")
    (root / "d").mkdir()
    for name in ("f", "d"):
        os.utime(root / name, (1_500_000_000, 1_500_000_000))
        for when in ("2300-01-01", "1600-01-01"):
            result = subprocess.run(["touch", "-d", when, name], cwd=root, capture_output=True, text=True,
                                    check=False)
            assert result.returncode != 0 and "Value too large" in result.stderr, (name, when, result.stderr)
        assert _errno_of(lambda: os.utime(root / name, ns=(0, 9_200_000_000 * 10 ** 9))) == errno.EOVERFLOW
        key = name + ("/" if name == "d" else "")
        assert float(s3.head_object(Bucket=bucket, Key=key)["Metadata"]["mtime"]) == 1_500_000_000
        assert os.stat(root / name).st_mtime == 1_500_000_000
        sh(f"touch -d 2200-01-01 {name}", cwd=root)  # within the range: stored and shown
        assert os.stat(root / name).st_mtime == 7_258_118_400


def test_special_files_are_refused_with_eperm_and_regular_mknod_works(fuse_gw, bucket, mnt):
    # mkfifo, mknod of devices and binding a Unix socket failed with ENOSYS ("Function not
    # implemented"), which reads as a broken mount; objects cannot be special files: EPERM, as for
    # hard links.
    s3 = fuse_gw.client()
    root = mnt.path / bucket
    assert _errno_of(lambda: os.mkfifo(root / "fifo")) == errno.EPERM
    assert _errno_of(lambda: os.mknod(root / "chr", stat.S_IFCHR | 0o600, os.makedev(1, 3))) == errno.EPERM
    assert _errno_of(lambda: os.mknod(root / "blk", stat.S_IFBLK | 0o600, os.makedev(7, 0))) == errno.EPERM
    with socket.socket(socket.AF_UNIX) as sock:
        assert _errno_of(lambda: sock.bind(str(root / "sock"))) == errno.EPERM
    result = subprocess.run(["mkfifo", "fifo2"], cwd=root, capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "Operation not permitted" in result.stderr, result.stderr
    os.mknod(root / "regular", stat.S_IFREG | 0o640)
    assert stat.S_IMODE(os.stat(root / "regular").st_mode) == 0o640
    assert s3.head_object(Bucket=bucket, Key="regular")["Metadata"]["mode"] == "100640"
    assert _errno_of(lambda: os.link(root / "regular", root / "hard")) == errno.EPERM  # the same answer
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["regular"]
    assert sorted(os.listdir(root)) == ["regular"]
    # The kernel sends a create for a regular mknod; libfuse calls mknod only without one: it works too.
    fs = GatewayFS(ObjectClient(fuse_gw.endpoint, fuse_gw.access_key, fuse_gw.secret_key))
    try:
        fs.mknod(f"/{bucket}/direct", stat.S_IFREG | 0o600)
        assert _errno_of(lambda: fs.mknod(f"/{bucket}/fifo", stat.S_IFIFO | 0o600)) == errno.EPERM
    finally:
        fs.close()
    assert s3.head_object(Bucket=bucket, Key="direct")["Metadata"]["mode"] == "100600"


def test_a_setgid_directory_passes_its_group_on(fuse_gw, bucket, mnt, mount_factory):
    # As on a local filesystem: in a directory with the setgid bit, new files, symlinks and
    # subdirectories get the directory's group (not the creator's), and subdirectories the bit too.
    # The mount gave them the creator's group, and subdirectories no setgid bit.
    s3 = fuse_gw.client()
    root = mnt.path / bucket
    (root / "shared").mkdir()
    os.chown(root / "shared", -1, 1234)
    os.chmod(root / "shared", 0o2775)
    (root / "shared" / "f").write_bytes(b"f")
    (root / "shared" / "sub").mkdir(mode=0o755)
    os.symlink("f", root / "shared" / "link")
    (root / "plain").mkdir()
    (root / "plain" / "f").write_bytes(b"f")
    assert os.stat(root / "shared" / "f").st_gid == 1234
    assert os.lstat(root / "shared" / "link").st_gid == 1234
    sub = os.stat(root / "shared" / "sub")
    assert (sub.st_gid, stat.S_IMODE(sub.st_mode)) == (1234, 0o2755)
    assert os.stat(root / "plain" / "f").st_gid == os.getgid()
    assert s3.head_object(Bucket=bucket, Key="shared/f")["Metadata"]["gid"] == "1234"
    assert s3.head_object(Bucket=bucket, Key="shared/sub/")["Metadata"]["mode"] == "42755"
    # On through the levels, and in a directory a fresh mount knows only from its parent's listing.
    other = mount_factory()
    sh("ls -l", cwd=other.path / bucket / "shared")
    (other.path / bucket / "shared" / "sub" / "deeper").write_bytes(b"d")
    assert os.stat(other.path / bucket / "shared" / "sub" / "deeper").st_gid == 1234
    assert s3.head_object(Bucket=bucket, Key="shared/sub/deeper")["Metadata"]["gid"] == "1234"
