"""Listings with metadata (ListObjectsV2 metadata=true): entries listed by ls -l get their full
attributes from the listing, so no per-entry HEAD or GET follows and sync tools see stored mtimes."""

from __future__ import annotations

import os
import re
import stat

from fuse_helpers import log_lines, requests_in_log, sh

from gateway.testing.server import GatewayProcess

MTIME = "1500000000.123456789"
MTIME_NS = 1_500_000_000_123_456_789


def per_object(requests, under: str) -> list[tuple[str, str]]:
    """HEADs and GETs of objects whose path starts with ``under`` (``/bucket/dir/``), not listings."""
    return [(m, t) for m, t in requests if m in ("GET", "HEAD") and t.startswith(under)]


def test_ls_l_shows_stored_attributes_without_head_or_get(fuse_gw, bucket, mount_factory):
    s3 = fuse_gw.client()
    s3.put_object(Bucket=bucket, Key="d/big.bin", Body=b"b" * 10_000,
                  Metadata={"mtime": MTIME, "mode": "100640", "uid": "1234", "gid": "4321"})
    for n in range(20):
        s3.put_object(Bucket=bucket, Key=f"d/small-{n:02d}", Body=b"s" * 100)
    mount = mount_factory()
    start = log_lines(fuse_gw)
    lines = sh("ls -l --time-style=+%s d", cwd=mount.path / bucket).splitlines()[1:]
    assert len(lines) == 21
    big = next(line for line in lines if line.endswith(" big.bin"))
    assert re.match(r"-rw-r----- 1 1234 4321 10000 1500000000 big\.bin", big), big
    st = os.stat(mount.path / bucket / "d" / "big.bin")
    assert (st.st_mtime_ns, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (MTIME_NS, 0o640, 1234, 4321)
    for n in range(20):  # small entries: no GET to tell them from symlinks
        assert stat.S_ISREG(os.lstat(mount.path / bucket / "d" / f"small-{n:02d}").st_mode)
    requests = requests_in_log(fuse_gw, start)
    assert per_object(requests, f"/{bucket}/d/") == []  # (the lookup of d itself tried a file "d": a GET)
    assert any("metadata=true" in t for m, t in requests if "list-type=2" in t)


def test_touch_d_through_the_mount_shows_after_a_fresh_mounts_ls(fuse_gw, bucket, mnt, mount_factory):
    root = mnt.path / bucket
    (root / "f.bin").write_bytes(b"x" * 8192)
    sh("touch -d '2020-01-02 03:04:05.123456789 UTC' f.bin", cwd=root)
    other = mount_factory()
    start = log_lines(fuse_gw)
    sh("ls -l", cwd=other.path / bucket)
    st = os.stat(other.path / bucket / "f.bin")
    assert st.st_mtime_ns == 1_577_934_245_123_456_789 and st.st_size == 8192
    assert per_object(requests_in_log(fuse_gw, start), f"/{bucket}/") == []


def test_a_symlink_shows_as_a_symlink_after_a_fresh_mounts_listing(fuse_gw, bucket, mnt, mount_factory):
    root = mnt.path / bucket
    (root / "target.txt").write_text("pointed at")
    os.symlink("target.txt", root / "link")
    other = mount_factory()
    start = log_lines(fuse_gw)
    lines = sh("ls -l", cwd=other.path / bucket).splitlines()
    assert any(line.startswith("l") and line.endswith(" link -> target.txt") for line in lines), lines
    # The listing told the kind; readlink fetched the target (the object's bytes): one ranged GET.
    assert per_object(requests_in_log(fuse_gw, start), f"/{bucket}/") == [("GET", f"/{bucket}/link")]
    assert stat.S_ISLNK(os.lstat(other.path / bucket / "link").st_mode)
    assert (other.path / bucket / "link").read_text() == "pointed at"


def test_directory_marker_metadata_comes_with_its_lookup(fuse_gw, bucket, mnt, mount_factory):
    (mnt.path / bucket / "private").mkdir(mode=0o700)
    other = mount_factory()
    start = log_lines(fuse_gw)
    assert stat.S_IMODE(os.stat(other.path / bucket / "private").st_mode) == 0o700
    # The lookup tried a file "private" (a GET, 404), then listed "private/" with max-keys=1: the
    # marker came with its metadata, so no HEAD of it followed.
    requests = requests_in_log(fuse_gw, start)
    assert per_object(requests, f"/{bucket}/private") == [("GET", f"/{bucket}/private")]
    assert len([t for m, t in requests if "list-type=2" in t and "prefix=private%2F" in t]) == 1


def test_rsync_a_again_after_ls_l_transfers_nothing(fuse_gw, bucket, mnt, tmp_path, mount_factory):
    """The second rsync runs on a fresh mount (as after a remount, or once the attribute TTL ran
    out), whose ls -l knew the files from the listing alone: their stored mtimes, no re-send."""
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    for n in range(6):
        (source / f"file-{n}.bin").write_bytes(os.urandom(3000 + n * 2000))  # both sides of 4 KiB
    (source / "sub" / "inner.txt").write_text("inner")
    os.symlink("file-0.bin", source / "link")
    os.utime(source / "file-5.bin", ns=(1_400_000_000_987_654_321,) * 2)
    (mnt.path / bucket / "dir").mkdir()
    sh(f"rsync -a {source}/ {mnt.path / bucket}/dir/", cwd=tmp_path)
    other = mount_factory()
    dest = other.path / bucket / "dir"
    sh("ls -l dir dir/sub", cwd=other.path / bucket)
    start = log_lines(fuse_gw)
    out = sh(f"rsync -a --stats {source}/ {dest}/", cwd=tmp_path)
    assert re.search(r"Number of regular files transferred: 0\b", out), out
    assert [m for m, t in requests_in_log(fuse_gw, start) if m in ("PUT", "POST", "DELETE")] == []
    assert os.stat(dest / "file-5.bin").st_mtime_ns == 1_400_000_000_987_654_321
    assert os.readlink(dest / "link") == "file-0.bin"


def test_a_gateway_without_listing_metadata_costs_lookups_as_before(tmp_path, mount_factory):
    """A bucket on the s3 backend (its listings carry no metadata): small entries are looked up once
    (a GET each) after a listing, and a stored mtime shows only after that lookup."""
    with GatewayProcess(tmp_path / "remote") as remote:
        config = (f'default_backend = "remote"\n\n[backends.remote]\ntype = "s3"\nendpoint_url = "{remote.endpoint}"\n'
                  f'region = "us-east-1"\naccess_key_id = "{remote.access_key}"\n'
                  f'secret_access_key = "{remote.secret_key}"\n')
        with GatewayProcess(tmp_path / "unused", args=["--access-log"], config=config) as front:
            s3 = front.client()
            s3.create_bucket(Bucket="plain")
            s3.put_object(Bucket="plain", Key="big", Body=b"b" * 10_000, Metadata={"mtime": MTIME})
            for n in range(3):
                s3.put_object(Bucket="plain", Key=f"small-{n}", Body=b"s")
            mount = mount_factory(gateway=front)
            start = log_lines(front)
            lines = sh("ls -l --time-style=+%s", cwd=mount.path / "plain").splitlines()
            big = next(line for line in lines if line.endswith(" big"))
            assert " 1500000000 " not in big  # Last-Modified until a lookup
            requests = per_object(requests_in_log(front, start), "/plain/")
            assert sorted(requests) == [("GET", f"/plain/small-{n}") for n in range(3)]
