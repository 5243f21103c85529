"""Edge cases found by probing a real mount: names no object can have, metadata other S3 clients
wrote, renameat2 flags, a file and a prefix with one name. Each once lost data, answered EIO, or
left a traceback in the mount's log."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import stat
import threading

import pytest

RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4
_libc = ctypes.CDLL(None, use_errno=True)


def _renameat2(old, new, flags: int) -> None:
    AT_FDCWD = -100
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _errno_of(call) -> int:
    with pytest.raises(OSError) as info:
        call()
    return info.value.errno


def test_renameat2_flags_are_not_ignored(mnt, bucket):
    root = mnt.path / bucket
    (root / "a").write_bytes(b"A")
    (root / "b").write_bytes(b"B")
    for flags in (RENAME_EXCHANGE, RENAME_WHITEOUT):
        assert _errno_of(lambda f=flags: _renameat2(root / "a", root / "b", f)) == errno.EINVAL
        assert (root / "a").read_bytes() == b"A" and (root / "b").read_bytes() == b"B", "a rename lost data"
    if json.loads((mnt.path / ".cv-gateway-stats").read_text())["libfuse"].startswith("2."):
        # libfuse 2 speaks a FUSE protocol without RENAME2: the kernel refuses every flag itself.
        assert _errno_of(lambda: _renameat2(root / "a", root / "c", RENAME_NOREPLACE)) == errno.EINVAL
        assert (root / "a").read_bytes() == b"A" and not (root / "c").exists()
    else:
        assert _errno_of(lambda: _renameat2(root / "a", root / "b", RENAME_NOREPLACE)) == errno.EEXIST
        _renameat2(root / "a", root / "c", RENAME_NOREPLACE)
        assert (root / "c").read_bytes() == b"A" and not (root / "a").exists()
    assert "Traceback" not in mnt.log()


@pytest.mark.parametrize("name, value", [("mtime", "nan"), ("mtime", "inf"), ("mtime", "-inf"), ("mtime", "1e30"),
                                         ("mode", "77777777777"), ("mode", "-1"), ("uid", "99999999999"),
                                         ("gid", "-5")])
def test_metadata_other_clients_wrote_cannot_break_stat_or_listing(mnt, bucket, fuse_gw, name, value):
    s3 = fuse_gw.client()
    s3.put_object(Bucket=bucket, Key="dir/odd", Body=b"odd", Metadata={name: value})
    s3.put_object(Bucket=bucket, Key="dir/plain", Body=b"plain")
    odd = mnt.path / bucket / "dir" / "odd"
    st = os.stat(odd)  # looked up first: its attributes are cached when the listing comes
    assert st.st_size == 3 and 0 < st.st_mtime < 2 ** 33 and st.st_uid < 2 ** 32 - 1
    assert sorted(os.listdir(mnt.path / bucket / "dir")) == ["odd", "plain"]
    assert odd.read_bytes() == b"odd"
    assert "Traceback" not in mnt.log()


def test_names_that_are_not_utf8_are_refused_before_anything_is_written(mnt, bucket):
    root = os.fsencode(mnt.path / bucket)
    bad = root + b"/bad\xff-name"
    os.listdir(root)  # a cached listing once let the create through to a failing upload at close
    assert _errno_of(lambda: os.open(bad, os.O_CREAT | os.O_WRONLY, 0o644)) == errno.EILSEQ
    assert _errno_of(lambda: os.mkdir(bad)) == errno.EILSEQ
    assert _errno_of(lambda: os.stat(bad)) == errno.ENOENT
    (mnt.path / bucket / "good").write_bytes(b"g")
    assert _errno_of(lambda: os.rename(root + b"/good", bad)) == errno.EILSEQ
    assert sorted(os.listdir(root)) == [b"good"]
    assert "Traceback" not in mnt.log()


def test_keys_longer_than_1024_bytes_are_refused_before_anything_is_written(mnt, bucket, fuse_gw):
    root = mnt.path / bucket
    deep = root / "deep"
    deep.mkdir()
    long_name = "q" * 250
    path = deep
    while len(str(path.relative_to(root)).encode()) + 251 <= 1024:
        path = path / long_name
    path.mkdir(parents=True)
    too_long = path / ("z" * (1025 - len(str(path.relative_to(root)).encode()) - 1))
    assert len(str(too_long.relative_to(root)).encode()) == 1025
    assert _errno_of(lambda: os.open(too_long, os.O_CREAT | os.O_WRONLY, 0o644)) == errno.ENAMETOOLONG
    assert _errno_of(lambda: os.mkdir(too_long)) == errno.ENAMETOOLONG
    (path / "f").write_bytes(b"deepest")  # a key of under 1,024 bytes
    # Moving "deep" to a longer name would push the deepest key past the limit: nothing moves.
    longer = root / ("deep" + "x" * 20)
    assert _errno_of(lambda: os.rename(deep, longer)) == errno.ENAMETOOLONG
    keys = [o["Key"] for o in fuse_gw.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys and all(k.startswith("deep/") for k in keys), keys
    assert (path / "f").read_bytes() == b"deepest"


def test_names_at_the_root_that_cannot_be_buckets_are_missing(mnt):
    for name in (".git", ".Trash-0", "ab", "Foo", "under_score"):
        assert not (mnt.path / name).exists(), name
        assert _errno_of(lambda n=name: os.stat(mnt.path / n)) == errno.ENOENT, name
    assert _errno_of(lambda: os.mkdir(mnt.path / "Foo")) == errno.EINVAL


def test_a_file_and_a_prefix_with_one_name_show_as_the_file(mnt, bucket, fuse_gw):
    s3 = fuse_gw.client()
    s3.put_object(Bucket=bucket, Key="a", Body=b"file a")
    s3.put_object(Bucket=bucket, Key="a/b", Body=b"under a")
    s3.put_object(Bucket=bucket, Key="z", Body=b"z")
    root = mnt.path / bucket
    assert os.path.isfile(root / "a")
    assert sorted(os.listdir(root)) == ["a", "z"]
    assert os.path.isfile(root / "a") and (root / "a").read_bytes() == b"file a"
    assert sorted(os.listdir(root)) == ["a", "z"]
    assert "Traceback" not in mnt.log()


def test_shrinking_a_file_fetches_only_what_stays(fuse_gw, bucket, mount_factory):
    """truncate(2) to a smaller size used to download the whole object into the spool first: with a
    1 MiB spool a 3 MiB object could not be cut to 10 bytes at all (ENOSPC)."""
    body = os.urandom(3 * 1024 * 1024)
    fuse_gw.client().put_object(Bucket=bucket, Key="big", Body=body)
    mount = mount_factory(["--spool-size", "1M"])
    os.truncate(mount.path / bucket / "big", 10)
    assert fuse_gw.client().get_object(Bucket=bucket, Key="big")["Body"].read() == body[:10]
    with open(mount.path / bucket / "big", "r+b") as f:  # through an open handle too
        f.truncate(4)
    assert fuse_gw.client().get_object(Bucket=bucket, Key="big")["Body"].read() == body[:4]


@pytest.mark.parametrize("new_size", [40 * 1024 * 1024, 1000])
def test_an_object_replaced_while_open_fails_the_read_instead_of_mixing_versions(fuse_gw, bucket, mount_factory,
                                                                                 new_size):
    """Reads of an open file ask for the version that was opened (If-Match): after another client
    replaced the object, a read is EIO, never bytes of the new version after the old ones, and never a
    silent early end of file when the new version is shorter."""
    s3 = fuse_gw.client()
    s3.put_object(Bucket=bucket, Key="video", Body=b"A" * (40 * 1024 * 1024))
    mount = mount_factory(["--attr-ttl", "60"])
    with open(mount.path / bucket / "video", "rb", buffering=0) as f:
        assert f.read(4096) == b"A" * 4096
        s3.put_object(Bucket=bucket, Key="video", Body=b"C" * new_size)
        got = []
        with pytest.raises(OSError) as info:
            for offset in (5 * 1024 * 1024, 30 * 1024 * 1024):
                f.seek(offset)
                got.append(f.read(65536))
        assert info.value.errno == errno.EIO
        assert all(set(chunk) <= {ord("A")} for chunk in got), "bytes of the new version after the old ones"
    log = mount.log()
    assert "Traceback" not in log and f"{bucket}/video" in log, log[-2000:]  # the EIO is logged with its reason


def test_after_a_read_found_the_object_replaced_the_next_open_reads_the_new_version(fuse_gw, bucket, mount_factory):
    """The read that finds the object replaced by another client fails (EIO, as above), and the
    mount then forgets what it had cached of the file: the next open reads the new version whole.
    Before, every open failed with EIO until the attribute TTL ran out (a minute here), because the
    mount went on asking for the version it had cached."""
    s3 = fuse_gw.client()
    s3.put_object(Bucket=bucket, Key="report", Body=b"A" * 300_000)
    mount = mount_factory(["--attr-ttl", "60", "--dir-ttl", "60"])
    path = mount.path / bucket / "report"
    assert os.listdir(path.parent) == ["report"] and os.stat(path).st_size == 300_000
    s3.put_object(Bucket=bucket, Key="report", Body=b"B" * 400_000)
    with open(path, "rb", buffering=0) as f:
        assert _errno_of(lambda: f.read(65536)) == errno.EIO
    assert path.read_bytes() == b"B" * 400_000
    assert os.stat(path).st_size == 400_000 and os.listdir(path.parent) == ["report"]


@pytest.mark.parametrize("size", [20, 300_000])
def test_a_file_held_open_does_not_keep_new_opens_from_another_clients_version(fuse_gw, bucket, mount_factory,
                                                                               size):
    """One long-lived reader (tail -f, less, a service) holding a file open: once the TTL let the
    mount see that another client replaced the object, every new open reads the new version. Before,
    they joined the old open file and asked for the old version: EIO for as long as it stayed open."""
    s3 = fuse_gw.client()
    s3.put_object(Bucket=bucket, Key="held.txt", Body=b"old-version")
    mount = mount_factory(["--attr-ttl", "0", "--dir-ttl", "0"])
    path = mount.path / bucket / "held.txt"
    new = b"N" * size
    with open(path, "rb", buffering=0) as held:
        assert held.read() == b"old-version"
        s3.put_object(Bucket=bucket, Key="held.txt", Body=new)
        assert os.stat(path).st_size == size
        for _ in range(3):
            assert path.read_bytes() == new
        with open(path, "ab") as f:  # an append goes on from the new version too
            f.write(b"+")
    assert s3.get_object(Bucket=bucket, Key="held.txt")["Body"].read() == new + b"+"
    assert "Traceback" not in mount.log()


@pytest.mark.parametrize("how", ["append", "overwrite in place"])
def test_writing_into_an_object_another_client_replaced_never_mixes_the_versions(fuse_gw, bucket, mount_factory,
                                                                                 how):
    """Opening an existing file for writing without O_TRUNC fetches its bytes to write into. When
    another client had replaced the object since the mount looked it up, that fetch took the first
    (old size) bytes of the new version, and the close stored them with the program's bytes: neither
    version, silently ("anot" + the appended line). Now the write fails (EIO, the other client's
    version stays) and the next attempt writes into the new version."""
    s3 = fuse_gw.client()
    s3.put_object(Bucket=bucket, Key="log", Body=b"old\n")
    mount = mount_factory(["--attr-ttl", "60", "--dir-ttl", "60"])
    path = mount.path / bucket / "log"
    assert path.read_bytes() == b"old\n"
    theirs = b"another client's version\n"
    s3.put_object(Bucket=bucket, Key="log", Body=theirs)

    def write() -> None:
        fd = os.open(path, os.O_WRONLY | (os.O_APPEND if how == "append" else 0))
        try:
            if how == "append":
                os.write(fd, b"mine\n")
            else:
                os.pwrite(fd, b"MINE", 8)  # dd conv=notrunc seek=8
        finally:
            os.close(fd)

    assert _errno_of(write) == errno.EIO
    assert s3.get_object(Bucket=bucket, Key="log")["Body"].read() == theirs
    write()
    expected = theirs + b"mine\n" if how == "append" else theirs[:8] + b"MINE" + theirs[12:]
    assert s3.get_object(Bucket=bucket, Key="log")["Body"].read() == expected
    assert path.read_bytes() == expected
    assert "Traceback" not in mount.log()


def test_an_exclusive_create_asks_the_gateway_not_the_cache(fuse_gw, bucket, mount_factory):
    """O_CREAT|O_EXCL (lock files, mkstemp) must not replace an object another client stored after
    the mount last looked: the cache may still say "missing" for up to its TTL."""
    mount = mount_factory(["--attr-ttl", "60", "--dir-ttl", "60"])
    root = mount.path / bucket
    assert os.listdir(root) == []  # the mount now believes the directory is empty
    with pytest.raises(FileNotFoundError):
        os.stat(root / "lock")  # and that "lock" is missing
    fuse_gw.client().put_object(Bucket=bucket, Key="lock", Body=b"held by another host")
    assert _errno_of(lambda: os.open(root / "lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)) == errno.EEXIST
    assert fuse_gw.client().get_object(Bucket=bucket, Key="lock")["Body"].read() == b"held by another host"
    fd = os.open(root / "fresh", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)  # a name nobody has: works
    os.write(fd, b"mine")
    os.close(fd)
    assert fuse_gw.client().get_object(Bucket=bucket, Key="fresh")["Body"].read() == b"mine"


def test_of_two_mounts_racing_exclusive_creates_exactly_one_wins(fuse_gw, bucket, mount_factory):
    """Two hosts take the same lock file (O_CREAT|O_EXCL) at the same moment: one gets it, the other
    EEXIST, and the object is the winner's. The create stores the empty file at once, conditionally."""
    mounts = {b"A": mount_factory(), b"B": mount_factory()}
    for round_ in range(8):
        name = f"lock-{round_}"
        barrier = threading.Barrier(2, timeout=30)
        outcome = {}

        def take(tag, mount, name=name, barrier=barrier, outcome=outcome):
            barrier.wait()
            try:
                fd = os.open(mount.path / bucket / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except OSError as exc:
                outcome[tag] = exc.errno
                return
            os.write(fd, tag)
            os.close(fd)
            outcome[tag] = "won"

        threads = [threading.Thread(target=take, args=item) for item in mounts.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(map(str, outcome.values())) == sorted([str(errno.EEXIST), "won"]), (round_, outcome)
        winner = next(tag for tag, result in outcome.items() if result == "won")
        assert fuse_gw.client().get_object(Bucket=bucket, Key=name)["Body"].read() == winner
    # The empty file exists from the create on, for every client; closing it unwritten keeps it.
    fd = os.open(mounts[b"A"].path / bucket / "held", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        head = fuse_gw.client().head_object(Bucket=bucket, Key="held")
        assert head["ContentLength"] == 0
    finally:
        os.close(fd)
    assert fuse_gw.client().get_object(Bucket=bucket, Key="held")["Body"].read() == b""
    assert stat.S_IMODE(os.stat(mounts[b"B"].path / bucket / "held").st_mode) == 0o600


def test_an_object_too_big_to_be_a_symlink_shows_as_a_file(mnt, bucket, fuse_gw):
    """Symlink mode bits in the metadata of a 1 MiB object (another client wrote them): no link
    target is that long, so it is shown and read as the file it is (readlink gave EIO)."""
    body = os.urandom(1024 * 1024)
    fuse_gw.client().put_object(Bucket=bucket, Key="not-a-link", Body=body, Metadata={"mode": "120777"})
    path = mnt.path / bucket / "not-a-link"
    assert os.path.isfile(path) and not os.path.islink(path)
    assert path.read_bytes() == body
    assert "Traceback" not in mnt.log()


def test_rmdir_keeps_a_directory_marker_that_holds_data(mnt, bucket, fuse_gw):
    """Some S3 clients store bytes under a name ending in "/": the mount shows it as a directory and
    cannot show those bytes, so removing the directory must not delete them unseen."""
    s3 = fuse_gw.client()
    s3.put_object(Bucket=bucket, Key="trail/", Body=b"fourteen bytes")
    s3.put_object(Bucket=bucket, Key="empty/", Body=b"")
    root = mnt.path / bucket
    assert os.path.isdir(root / "trail")
    assert _errno_of(lambda: os.rmdir(root / "trail")) == errno.ENOTEMPTY
    assert s3.get_object(Bucket=bucket, Key="trail/")["Body"].read() == b"fourteen bytes"
    os.rmdir(root / "empty")  # a plain marker goes
    assert "empty/" not in [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]


@pytest.mark.parametrize("size", [5, 33 * 1024 * 1024])  # a PUT, and a multipart upload (32 MiB and up)
def test_a_written_file_keeps_its_mtime_when_the_cached_attributes_expire(mnt, bucket, fuse_gw, mount_factory, size):
    """stat showed the mount's own clock (with nanoseconds) after a write, and the gateway's
    Last-Modified (whole seconds) once the attribute cache expired: the mtime changed by itself a few
    seconds after the write, and git and rsync took the file for modified again."""
    path = mnt.path / bucket / "written.bin"
    with open(path, "wb") as f:
        f.write(b"x" * size)
    written = os.stat(path).st_mtime  # from the attributes the mount cached at the upload
    uncached = mount_factory(["--attr-ttl", "0", "--dir-ttl", "0"])
    assert os.stat(uncached.path / bucket / "written.bin").st_mtime == written
    stored = fuse_gw.client().head_object(Bucket=bucket, Key="written.bin")["LastModified"].timestamp()
    assert written == stored


def test_a_replaced_object_of_the_same_size_is_not_read_from_old_pages(fuse_gw, bucket, mount_factory):
    """The kernel keeps a file's cached pages across opens only for the same version (ETag): with
    libfuse's auto_cache (size and mtime, and the mtime in whole seconds) an object replaced by
    another client within the same second with the same size was read from the old pages."""
    s3 = fuse_gw.client()
    mount = mount_factory(["--attr-ttl", "0", "--dir-ttl", "0"])
    path = mount.path / bucket / "same-size.bin"
    for round_ in range(3):  # each replacement well within one second of the last
        body = os.urandom(256 * 1024)
        s3.put_object(Bucket=bucket, Key="same-size.bin", Body=body)
        assert path.read_bytes() == body, f"round {round_}: old bytes after a replacement"
        assert path.read_bytes() == body


def test_an_unchanged_file_is_read_from_the_page_cache_at_the_next_open(fuse_gw, bucket, mount_factory):
    body = os.urandom(3 * 1024 * 1024)
    fuse_gw.client().put_object(Bucket=bucket, Key="kept.bin", Body=body)
    mount = mount_factory()
    path = mount.path / bucket / "kept.bin"
    assert path.read_bytes() == body

    def reads() -> int:
        return json.loads((mount.path / ".cv-gateway-stats").read_text())["requests"].get("fuse_reads", 0)

    first = reads()
    before = reads()  # reading the stats file costs reads too: as many as this
    assert path.read_bytes() == body
    assert reads() - before == before - first  # every byte from the pages of the first open
