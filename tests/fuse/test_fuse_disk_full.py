"""The gateway's disk fills up under a mount (a prober's findings): a large file's upload in parts
left parts nobody could list or abort on the full disk, and rm in a directory without a marker
object needed a PUT first, so nothing could be deleted to make room. Real gateway on a real tmpfs."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from botocore.exceptions import ClientError

from gateway.fuse.testing import MountProcess
from gateway.testing.disks import tmpfs
from gateway.testing.server import GatewayProcess

MiB = 1024 * 1024


@pytest.fixture
def small_disk_gw(tmp_path):
    """A gateway whose whole data directory is a 40 MiB tmpfs."""
    disk = tmp_path / "disk"
    disk.mkdir()
    with tmpfs(disk, "40m"):
        data_dir = disk / "cv-storage"
        config = f'[backends.local]\ntype = "local"\nroot = "{data_dir}"\nfsync = false\n'
        with GatewayProcess(data_dir, config=config) as gw:
            gw.client().create_bucket(Bucket="full")
            yield gw


def _used(path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _upload_files(gw) -> list:
    """The files of multipart uploads on the gateway's disk (records and parts)."""
    uploads = gw.data_dir / ".multipart"
    return [p for p in uploads.rglob("*%obj")] if uploads.exists() else []


def test_a_large_file_that_does_not_fit_leaves_no_parts_behind(small_disk_gw, tmp_path):
    gw = small_disk_gw
    before = _used(gw.data_dir)
    with MountProcess(gw, tmp_path / "m") as mount:
        target = mount.path / "full" / "big.bin"
        for attempt in (1, 2):  # a second try of the same finds the space it needs the same as the first
            result = subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=1M", "count=64"],
                                    capture_output=True, text=True, timeout=120, check=False)
            assert result.returncode != 0, result.stderr
            assert "No space left on device" in result.stderr, result.stderr  # ENOSPC, not EIO
            # dd has its answer at close(); the release that follows tries once more, in the background.
            released = "could not upload /full/big.bin when it was closed"
            deadline = time.monotonic() + 60
            while mount.log().count(released) < attempt and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _upload_files(gw) == [], mount.log()[-3000:]
            assert _used(gw.data_dir) - before < 2 * MiB, (_used(gw.data_dir) - before, mount.log()[-2000:])
        # The disk has its room back: a file that fits is stored whole.
        (mount.path / "full" / "fits.bin").write_bytes(b"f" * (10 * MiB))
    assert gw.client().head_object(Bucket="full", Key="fits.bin")["ContentLength"] == 10 * MiB


def test_rm_on_a_full_disk_frees_space(small_disk_gw, tmp_path):
    gw = small_disk_gw
    s3 = gw.client()
    for name in ("a", "b", "c"):  # written through S3: no directory marker for cam1/
        s3.put_object(Bucket="full", Key=f"cam1/{name}.jpg", Body=os.urandom(4 * MiB))
    s3.put_object(Bucket="full", Key="solo/only.jpg", Body=os.urandom(4 * MiB))
    filler = 0
    for size in (MiB, 64 * 1024, 4096, 1):  # fill the disk up to its last page
        for _ in range(300):
            try:
                s3.put_object(Bucket="full", Key=f"filler/{filler}", Body=b"\0" * size)
            except ClientError as exc:
                assert exc.response["Error"]["Code"] == "InsufficientStorage", exc.response
                break
            filler += 1
    with pytest.raises(ClientError):  # not even an empty object fits now
        s3.put_object(Bucket="full", Key="cam1/", Body=b"")
    with MountProcess(gw, tmp_path / "m") as mount:
        root = mount.path / "full"
        os.unlink(root / "cam1" / "a.jpg")  # needed a marker PUT first: EIO on the full disk
        os.unlink(root / "cam1" / "b.jpg")
        assert sorted(os.listdir(root / "cam1")) == ["c.jpg"]
        subprocess.run(["rm", "-rf", str(root / "solo")], check=True, timeout=60)
        assert not (root / "solo").exists()
        os.unlink(root / "cam1" / "c.jpg")  # the last file: the directory stays, as an empty one does
        assert "Traceback" not in mount.log()
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="full", Prefix="cam1/").get("Contents", [])}
    assert keys <= {"cam1/"}, keys

