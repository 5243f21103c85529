"""File and directory semantics on a real mount, checked against a local directory and against S3."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import stat

import pytest


def test_random_offset_writes_and_reads_match_a_local_directory(mnt, bucket, tmp_path):
    """The same seeded program of writes, reads, truncates and reopenings on the mount and on local disk."""
    local_dir, mount_dir = tmp_path / "local", mnt.path / bucket
    local_dir.mkdir()

    def program(root) -> list:
        rng = random.Random(1234)
        observed = []
        names = [f"f{i}" for i in range(3)]
        for name in names:
            with open(root / name, "wb") as f:
                f.write(rng.randbytes(rng.randrange(0, 200_000)))
        for step in range(60):
            name = rng.choice(names)
            action = rng.random()
            with open(root / name, "r+b") as f:
                size = os.fstat(f.fileno()).st_size
                if action < 0.4:
                    f.seek(rng.randrange(0, size + 50_000))
                    f.write(rng.randbytes(rng.randrange(1, 70_000)))
                elif action < 0.7:
                    f.seek(rng.randrange(0, size + 10))
                    observed.append((step, f.read(rng.randrange(1, 100_000))))
                elif action < 0.85:
                    f.truncate(rng.randrange(0, size * 2 + 1))
                else:
                    f.write(b"x")
                    f.flush()
                    os.fsync(f.fileno())
                    observed.append((step, os.fstat(f.fileno()).st_size))
            observed.append((step, os.stat(root / name).st_size))
        for name in names:
            observed.append((name, hashlib.sha256((root / name).read_bytes()).hexdigest()))
        return observed

    assert program(mount_dir) == program(local_dir)


def test_append_truncate_and_reopen(mnt, bucket, fuse_gw):
    path = mnt.path / bucket / "log.txt"
    path.write_bytes(b"one\n")
    with open(path, "ab") as f:
        f.write(b"two\n")
    assert path.read_bytes() == b"one\ntwo\n"
    os.truncate(path, 3)
    assert path.read_bytes() == b"one"
    os.truncate(path, 10)  # grows with zeros
    assert path.read_bytes() == b"one" + b"\0" * 7
    stored = fuse_gw.client().get_object(Bucket=bucket, Key="log.txt")["Body"].read()
    assert stored == b"one" + b"\0" * 7


def test_data_is_uploaded_on_close_and_on_fsync(mnt, bucket, fuse_gw):
    s3 = fuse_gw.client()
    path = mnt.path / bucket / "f.bin"
    with open(path, "wb") as f:
        f.write(b"a" * 1000)
        f.flush()
        os.fsync(f.fileno())
        assert s3.get_object(Bucket=bucket, Key="f.bin")["Body"].read() == b"a" * 1000
        f.write(b"b")
    assert s3.get_object(Bucket=bucket, Key="f.bin")["Body"].read() == b"a" * 1000 + b"b"


def test_large_file_is_uploaded_in_parts(mnt, bucket, fuse_gw):
    data = random.Random(7).randbytes(40 * 1024 * 1024)  # above the 32 MiB multipart threshold
    path = mnt.path / bucket / "big.bin"
    with open(path, "wb") as f:
        for i in range(0, len(data), 1024 * 1024):
            f.write(data[i: i + 1024 * 1024])
    head = fuse_gw.client().head_object(Bucket=bucket, Key="big.bin")
    assert head["ContentLength"] == len(data)
    assert "-" in head["ETag"]  # a multipart ETag
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_errors_map_to_errno(mnt, bucket):
    root = mnt.path / bucket
    with pytest.raises(FileNotFoundError):
        open(root / "missing")
    with pytest.raises(FileNotFoundError):
        os.stat(root / "no" / "such" / "dir")
    (root / "d").mkdir()
    (root / "d" / "f").write_text("x")
    with pytest.raises(OSError) as info:
        os.rmdir(root / "d")
    assert info.value.errno == errno.ENOTEMPTY
    with pytest.raises(IsADirectoryError):
        open(root / "d", "rb")
    with pytest.raises(FileExistsError):
        os.mkdir(root / "d")
    with pytest.raises(OSError) as info:
        os.rmdir(mnt.path / bucket)  # a bucket with objects
    assert info.value.errno == errno.ENOTEMPTY


def test_directories_markers_and_prefixes(mnt, bucket, fuse_gw):
    s3 = fuse_gw.client()
    s3.put_object(Bucket=bucket, Key="implicit/deep/file.txt", Body=b"hello")  # no marker objects
    root = mnt.path / bucket
    assert sorted(os.listdir(root)) == ["implicit"]
    assert os.listdir(root / "implicit") == ["deep"]
    assert (root / "implicit" / "deep" / "file.txt").read_bytes() == b"hello"
    # Removing the last file keeps its directory, as on a local filesystem.
    os.unlink(root / "implicit" / "deep" / "file.txt")
    assert os.listdir(root / "implicit" / "deep") == []
    os.rmdir(root / "implicit" / "deep")
    os.rmdir(root / "implicit")
    assert os.listdir(root) == []
    os.makedirs(root / "x" / "y")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {"x/", "x/y/"}
    # mkdir at the top level makes a bucket; rmdir removes an empty one.
    os.mkdir(mnt.path / f"{bucket}-new")
    s3.head_bucket(Bucket=f"{bucket}-new")
    os.rmdir(mnt.path / f"{bucket}-new")


def test_rename_files(mnt, bucket, fuse_gw):
    root = mnt.path / bucket
    (root / "a").write_bytes(b"A")
    (root / "b").write_bytes(b"B")
    os.rename(root / "a", root / "b")  # over an existing file
    assert (root / "b").read_bytes() == b"A"
    assert not (root / "a").exists()
    (root / "sub").mkdir()
    os.rename(root / "b", root / "sub" / "c")
    assert sorted(os.listdir(root)) == ["sub"]
    assert fuse_gw.client().get_object(Bucket=bucket, Key="sub/c")["Body"].read() == b"A"
    with pytest.raises(IsADirectoryError):
        (root / "f").write_bytes(b"f")
        os.rename(root / "f", root / "sub")


def test_rename_of_an_open_file_being_written(mnt, bucket, fuse_gw):
    root = mnt.path / bucket
    with open(root / "tmp", "wb") as f:
        f.write(b"first")
        os.rename(root / "tmp", root / "final")
        f.write(b" second")
    assert (root / "final").read_bytes() == b"first second"
    assert fuse_gw.client().get_object(Bucket=bucket, Key="final")["Body"].read() == b"first second"
    assert not (root / "tmp").exists()


def test_unlinked_open_file_stays_readable_and_is_not_uploaded(mnt, bucket, fuse_gw):
    root = mnt.path / bucket
    with open(root / "gone", "w+b") as f:
        f.write(b"data")
        os.unlink(root / "gone")
        f.seek(0)
        assert f.read() == b"data"
    assert "Contents" not in fuse_gw.client().list_objects_v2(Bucket=bucket)


def test_symlinks(mnt, bucket, fuse_gw):
    root = mnt.path / bucket
    (root / "target.txt").write_text("pointed at")
    os.symlink("target.txt", root / "link")
    assert os.readlink(root / "link") == "target.txt"
    assert stat.S_ISLNK(os.lstat(root / "link").st_mode)
    assert (root / "link").read_text() == "pointed at"
    head = fuse_gw.client().head_object(Bucket=bucket, Key="link")
    assert stat.S_ISLNK(int(head["Metadata"]["mode"], 8))


def test_chmod_chown_utime_are_stored_and_shown(mnt, bucket, fuse_gw, mount_factory):
    root = mnt.path / bucket
    path = root / "f"
    path.write_bytes(b"x" * 10)
    os.chmod(path, 0o751)
    os.chown(path, 1234, 4321)
    os.utime(path, ns=(1_500_000_000_123_456_789, 1_500_000_000_123_456_789))
    st = os.stat(path)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o751, 1234, 4321)
    assert st.st_mtime_ns // 1000 == 1_500_000_000_123_456
    meta = fuse_gw.client().head_object(Bucket=bucket, Key="f")["Metadata"]
    assert meta["mode"] == "100751" and meta["uid"] == "1234" and meta["gid"] == "4321"
    # A second, fresh mount reads the same from the object's metadata.
    other = mount_factory(["--attr-ttl", "0"])
    st = os.stat(other.path / bucket / "f")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size) == (0o751, 1234, 4321, 10)
    assert int(st.st_mtime) == 1_500_000_000
    (root / "d").mkdir(mode=0o700)
    os.chmod(root / "d", 0o710)
    assert stat.S_IMODE(os.stat(other.path / bucket / "d").st_mode) == 0o710


def test_uid_gid_umask_and_read_only_options(fuse_gw, bucket, mount_factory):
    fuse_gw.client().put_object(Bucket=bucket, Key="plain", Body=b"p")
    mount = mount_factory(["--uid", "4242", "--gid", "4343", "--umask", "027", "--read-only"])
    st = os.stat(mount.path / bucket / "plain")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (4242, 4343, 0o640)
    assert stat.S_IMODE(os.stat(mount.path / bucket).st_mode) == 0o750
    assert (mount.path / bucket / "plain").read_bytes() == b"p"
    for attempt in (lambda: (mount.path / bucket / "new").write_bytes(b"n"),
                    lambda: os.unlink(mount.path / bucket / "plain"),
                    lambda: os.mkdir(mount.path / bucket / "dir")):
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EROFS


def test_direct_io_min_option_reads_large_objects_without_the_page_cache(fuse_gw, bucket, mount_factory):
    import mmap

    big, small = os.urandom(3 * 1024 * 1024), b"small object"
    fuse_gw.client().put_object(Bucket=bucket, Key="big", Body=big)
    fuse_gw.client().put_object(Bucket=bucket, Key="small", Body=small)
    mount = mount_factory(["--direct-io-min", "1M"])
    assert (mount.path / bucket / "big").read_bytes() == big
    assert (mount.path / bucket / "small").read_bytes() == small
    # direct_io files cannot be mapped shared (the documented cost); small ones still can.
    with open(mount.path / bucket / "big", "rb") as f, pytest.raises(OSError):
        mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    with open(mount.path / bucket / "small", "rb") as f:
        with mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) as mapped:
            assert mapped[:] == small
