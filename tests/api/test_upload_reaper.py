"""Unfinished multipart uploads are aborted after multipart_expiry (gateway/services/upload_reaper.py):
against a real local backend with an injected clock, and a real gateway killed mid-upload."""

from __future__ import annotations

import time
import urllib.request

import pytest
from botocore.exceptions import ClientError
from gateway_plugins.local import LocalBackend

from gateway import errors
from gateway.backend import ObjectMeta, Payload
from gateway.services.upload_reaper import UploadReaper
from gateway.testing.clock import ManualClock
from gateway.testing.server import GatewayProcess

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def test_a_sweep_aborts_only_uploads_older_than_the_expiry(tmp_path):
    backend = LocalBackend(root=str(tmp_path / "cv-storage"))
    await backend.start()
    await backend.create_bucket("faces")
    old = await backend.create_multipart("faces", "old.jpg", ObjectMeta())
    await backend.upload_part("faces", "old.jpg", old.upload_id, 1, Payload.from_bytes(b"x" * 1000))
    done = await backend.create_multipart("faces", "done.jpg", ObjectMeta())
    part = await backend.upload_part("faces", "done.jpg", done.upload_id, 1, Payload.from_bytes(b"d" * 10))
    await backend.complete_multipart("faces", "done.jpg", done.upload_id, [(1, part.etag)])
    clock = ManualClock(time.time())
    reaper = UploadReaper({"local": backend}, expiry=1800, clock=clock)
    clock.now = old.initiated + 1799
    assert await reaper.sweep() == 0
    assert [u.key for u in await backend.list_uploads("faces")] == ["old.jpg"]
    clock.now = old.initiated + 1801
    assert await reaper.sweep() == 1
    assert reaper.aborted == 1
    assert await backend.list_uploads("faces") == []
    left = [p for p in (tmp_path / "cv-storage").rglob("*") if old.upload_id in str(p) and p.is_file()]
    assert left == []  # the parts are gone, not only the record
    reader = await backend.get("faces", "done.jpg")  # a completed upload is an object, untouched
    async with reader:
        assert await reader.read_all() == b"d" * 10
    assert await reaper.sweep() == 0
    await backend.close()


def _client(gw):
    return gw.client()


def test_a_gateway_killed_mid_upload_aborts_it_after_the_expiry(tmp_path):
    """A client (or a FUSE mount) whose gateway died mid-upload never aborts: the restarted gateway
    does, once the upload is older than multipart_expiry, and leaves newer uploads alone."""
    data = tmp_path / "cv-storage"
    config = f'[backends.local]\ntype = "local"\nroot = "{data}"\n'
    with GatewayProcess(data, config=config) as gw:
        s3 = _client(gw)
        s3.create_bucket(Bucket="blobs")
        upload = s3.create_multipart_upload(Bucket="blobs", Key="big.bin")["UploadId"]
        s3.upload_part(Bucket="blobs", Key="big.bin", UploadId=upload, PartNumber=1, Body=b"p" * (5 << 20))
        gw.kill()
    time.sleep(2.2)
    with GatewayProcess(data, config="multipart_expiry = 2\n" + config) as gw:
        s3 = _client(gw)
        fresh = s3.create_multipart_upload(Bucket="blobs", Key="fresh.bin")["UploadId"]
        deadline = time.monotonic() + 10
        while any(u["UploadId"] == upload for u in s3.list_multipart_uploads(Bucket="blobs").get("Uploads", [])):
            assert time.monotonic() < deadline, "the stale upload was not aborted"
            time.sleep(0.1)
        with pytest.raises(ClientError) as gone:
            s3.upload_part(Bucket="blobs", Key="big.bin", UploadId=upload, PartNumber=2, Body=b"p")
        assert gone.value.response["Error"]["Code"] == "NoSuchUpload"
        assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket="blobs")["Uploads"]] == [fresh]
        assert "aborted the multipart upload" in gw.log() and "big.bin" in gw.log()
        metrics = urllib.request.urlopen(f"{gw.endpoint}/_admin/metrics", timeout=10).read().decode()
        assert "\ngateway_multipart_uploads_aborted_total 1\n" in metrics, metrics
        assert not list((data / ".multipart" / "blobs").glob(f"{upload}*/**/*"))


def test_multipart_expiry_0_keeps_unfinished_uploads(tmp_path):
    data = tmp_path / "cv-storage"
    with GatewayProcess(data, config=f'multipart_expiry = 0\n[backends.local]\ntype = "local"\nroot = "{data}"\n') as gw:
        s3 = _client(gw)
        s3.create_bucket(Bucket="blobs")
        upload = s3.create_multipart_upload(Bucket="blobs", Key="k")["UploadId"]
        time.sleep(1)
        assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket="blobs")["Uploads"]] == [upload]


async def test_a_sweep_removes_the_temp_files_of_dead_writers_and_keeps_the_live_ones(tmp_path):
    """A gateway killed mid-PUT leaves its temp file; the backends remove such files at start only."""
    import os
    import subprocess

    from gateway_plugins import fsutil

    backend = LocalBackend(root=str(tmp_path / "cv-storage"))
    await backend.start()
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid is free again (if reused meanwhile, the start time "1" does not match)
    dead_file = os.path.join(backend.tmp_dir, f"{dead.pid}.1-0-deadbeef")
    live_file = os.path.join(backend.tmp_dir, f"{os.getpid()}.{fsutil.process_start(os.getpid())}-9-cafe")
    for path in (dead_file, live_file):
        with open(path, "wb") as f:
            f.write(b"half an object")
    reaper = UploadReaper({"local": backend}, expiry=1800, clock=ManualClock(time.time()))
    assert await reaper.sweep() == 0  # no upload aborted
    assert not os.path.exists(dead_file)
    assert os.path.exists(live_file)  # a writer of this process (or another gateway on the host) is alive
    os.unlink(live_file)
    await backend.close()


async def test_a_sweep_removes_the_parts_of_an_upload_whose_record_is_gone_once_they_are_old(tmp_path):
    """A Complete or Abort cut short between removing the upload's record (first) and its parts: no
    client can list, complete or abort those parts any more, and they stayed for ever."""
    from gateway.backend import MULTIPART_BUCKET
    from gateway.services.upload_reaper import ORPHAN_GRACE

    backend = LocalBackend(root=str(tmp_path / "cv-storage"))
    await backend.start()
    await backend.create_bucket("faces")
    cut = await backend.create_multipart("faces", "cut.jpg", ObjectMeta())
    live = await backend.create_multipart("faces", "live.jpg", ObjectMeta())
    for upload in (cut, live):
        for n in (1, 2, 3):
            await backend.upload_part("faces", upload.key, upload.upload_id, n, Payload.from_bytes(b"p" * 1000))
    await backend.delete(MULTIPART_BUCKET, f"faces/{cut.upload_id}/upload")  # what _delete_upload does first

    def files_of(upload) -> int:
        return len(list((tmp_path / "cv-storage" / MULTIPART_BUCKET / "faces" / upload.upload_id).rglob("*%obj")))

    clock = ManualClock(time.time())
    reaper = UploadReaper({"local": backend}, expiry=7 * 86400, clock=clock)
    clock.now += ORPHAN_GRACE - 60  # an UploadPart that raced an Abort may still be writing
    await reaper.sweep()
    assert files_of(cut) == 3
    clock.now += 120
    await reaper.sweep()
    assert files_of(cut) == 0, "the orphaned parts are still there"
    assert files_of(live) == 4  # its record and three parts: a live upload waits for its expiry
    assert [u.key for u in await backend.list_uploads("faces")] == ["live.jpg"]
    await backend.close()


async def test_a_part_written_while_its_upload_is_aborted_is_not_left_behind(tmp_path):
    """A FUSE mount aborted its upload while other parts were still being written: those parts made the
    upload's directory again and stayed (no record, so no client could list or abort them), filling a
    full disk for the reaper's hour of grace. The part's writer now sees the abort and takes its part back."""
    backend = LocalBackend(root=str(tmp_path / "cv-storage"))
    await backend.start()
    await backend.create_bucket("faces")
    upload = await backend.create_multipart("faces", "big.bin", ObjectMeta())

    async def aborted_midway():
        yield b"a" * 100_000
        await backend.abort_multipart("faces", "big.bin", upload.upload_id)  # another client's abort
        yield b"b" * 100_000

    with pytest.raises(errors.NoSuchUpload):
        await backend.upload_part("faces", "big.bin", upload.upload_id, 2, Payload(aborted_midway()))
    left = [p for p in (tmp_path / "cv-storage").rglob("*") if upload.upload_id in str(p) and p.is_file()]
    assert left == []
    await backend.close()
