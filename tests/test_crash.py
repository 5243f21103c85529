"""kill -9 a real gateway in the middle of writes, restart it on the same cv-storage, check what is left.

After a restart every object is either absent or complete with the right
checksum, an overwrite that was cut short leaves the old version, and no
temp file survives start-up.
"""

from __future__ import annotations

import glob
import hashlib
import os
import random
import socket
import threading
import time
import urllib.parse

import pytest

from gateway.testing.server import GatewayProcess

MiB = 1024 * 1024
BUCKET = "crash"
DEADLINE = 30.0  # seconds any wait in these tests may take before it fails


def body_of(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def temp_files(gw: GatewayProcess) -> list[str]:
    return glob.glob(str(gw.data_dir / ".gateway" / "tmp" / "*" / "*"))


def size_of(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def wait_for(condition, what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def stored(s3, key: str) -> bytes | None:
    try:
        return s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None


def all_keys(s3) -> list[str]:
    return [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])]


class SlowPut:
    """A PUT over a raw socket to a presigned URL, sending the body only when told to.

    Lets a test hold a request mid-body for as long as it needs, which no
    client library offers.
    """

    def __init__(self, url: str, body: bytes):
        parts = urllib.parse.urlsplit(url)
        self.body = body
        self.sent = 0
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=DEADLINE)
        head = f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Length: {len(body)}\r\n\r\n"
        self.sock.sendall(head.encode())

    def send(self, size: int) -> None:
        self.sock.sendall(self.body[self.sent:self.sent + size])
        self.sent += size

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "cv-storage"


@pytest.fixture
def gateways(data_dir):
    """Start gateways on the same data dir (one after the other); stop any still running at the end."""
    started: list[GatewayProcess] = []

    def start() -> GatewayProcess:
        gw = GatewayProcess(data_dir).start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


def restart_after_kill(gw: GatewayProcess, gateways) -> GatewayProcess:
    gw.kill()
    assert gw.process.returncode == -9
    again = gateways()
    assert temp_files(again) == [], "start-up left temp files of the killed gateway"
    return again


def test_kill_during_large_puts(gateways):
    gw = gateways()
    s3 = gw.client(signature_version="s3v4")
    s3.create_bucket(Bucket=BUCKET)
    old = body_of(1, 2 * MiB)
    s3.put_object(Bucket=BUCKET, Key="victim", Body=old, ContentType="image/jpeg", Metadata={"version": "old"})
    done = body_of(2, 5 * MiB)
    s3.put_object(Bucket=BUCKET, Key="done/finished", Body=done)
    uploads = {}
    for number, key in enumerate(["big/0", "big/1", "victim"]):
        url = s3.generate_presigned_url("put_object", Params={"Bucket": BUCKET, "Key": key})
        uploads[key] = SlowPut(url, body_of(10 + number, 64 * MiB))
    try:
        for number, upload in enumerate(uploads.values()):
            for _ in range(6 * (number + 1)):
                upload.send(MiB)
        # The server streams each body to a temp file once it is past its 1 MiB memory buffer.
        wait_for(lambda: sum(1 for path in temp_files(gw) if size_of(path) >= 4 * MiB) == 3,
                 "three large temp files being written")
        again = restart_after_kill(gw, gateways)
    finally:
        for upload in uploads.values():
            upload.close()
    s3 = again.client()
    assert all_keys(s3) == ["done/finished", "victim"]
    assert stored(s3, "done/finished") == done
    victim = s3.get_object(Bucket=BUCKET, Key="victim")
    assert victim["Body"].read() == old, "the cut-short overwrite damaged the old version"
    assert (victim["ETag"], victim["ContentType"], victim["Metadata"]) == (f'"{md5(old)}"', "image/jpeg",
                                                                         {"version": "old"})


def test_kill_during_multipart_part_upload(gateways):
    gw = gateways()
    s3 = gw.client(signature_version="s3v4")
    s3.create_bucket(Bucket=BUCKET)
    upload_id = s3.create_multipart_upload(Bucket=BUCKET, Key="video.mp4", ContentType="video/mp4")["UploadId"]
    parts = [body_of(20, 5 * MiB), body_of(21, 5 * MiB), body_of(22, 123)]
    first = s3.upload_part(Bucket=BUCKET, Key="video.mp4", UploadId=upload_id, PartNumber=1, Body=parts[0])
    url = s3.generate_presigned_url("upload_part", Params={
        "Bucket": BUCKET, "Key": "video.mp4", "UploadId": upload_id, "PartNumber": 2})
    slow = SlowPut(url, parts[1])
    try:
        for _ in range(4):
            slow.send(MiB)
        wait_for(lambda: any(size_of(path) >= 2 * MiB for path in temp_files(gw)), "the part's temp file")
        again = restart_after_kill(gw, gateways)
    finally:
        slow.close()
    s3 = again.client()
    assert all_keys(s3) == []
    listed = s3.list_parts(Bucket=BUCKET, Key="video.mp4", UploadId=upload_id)["Parts"]
    assert [(p["PartNumber"], p["Size"], p["ETag"]) for p in listed] == [(1, 5 * MiB, first["ETag"])]
    etags = [first["ETag"]]
    for number, data in enumerate(parts[1:], start=2):
        etags.append(s3.upload_part(Bucket=BUCKET, Key="video.mp4", UploadId=upload_id, PartNumber=number,
                                    Body=data)["ETag"])
    s3.complete_multipart_upload(Bucket=BUCKET, Key="video.mp4", UploadId=upload_id, MultipartUpload={
        "Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, start=1)]})
    result = s3.get_object(Bucket=BUCKET, Key="video.mp4")
    assert result["Body"].read() == b"".join(parts) and result["ContentType"] == "video/mp4"
    combined = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    assert result["ETag"] == f'"{combined}-3"'


def test_kill_during_multipart_complete(gateways):
    gw = gateways()
    s3 = gw.client(signature_version="s3v4")
    s3.create_bucket(Bucket=BUCKET)
    upload_id = s3.create_multipart_upload(Bucket=BUCKET, Key="assembled")["UploadId"]
    parts = [body_of(30 + n, 8 * MiB) for n in range(4)]
    etags = [s3.upload_part(Bucket=BUCKET, Key="assembled", UploadId=upload_id, PartNumber=n, Body=data)["ETag"]
             for n, data in enumerate(parts, start=1)]
    completion = {"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, start=1)]}
    finished = threading.Event()

    def complete():
        try:
            s3.complete_multipart_upload(Bucket=BUCKET, Key="assembled", UploadId=upload_id,
                                         MultipartUpload=completion)
        except Exception:
            pass  # the server was killed under it
        finally:
            finished.set()

    thread = threading.Thread(target=complete)
    thread.start()
    # Kill while the parts are being assembled into a temp file (or just after, if that was quicker).
    wait_for(lambda: temp_files(gw) or finished.is_set(), "the assembly to start")
    again = restart_after_kill(gw, gateways)
    thread.join(DEADLINE)
    s3 = again.client()
    whole = b"".join(parts)
    assert stored(s3, "assembled") in (None, whole), "the object is neither absent nor complete"
    uploads = [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])]
    if upload_id in uploads:  # killed before the upload was cleaned up: completing it again must work
        s3.complete_multipart_upload(Bucket=BUCKET, Key="assembled", UploadId=upload_id, MultipartUpload=completion)
    assert stored(s3, "assembled") == whole
    assert all_keys(s3) == ["assembled"]


def test_kill_during_a_stream_of_writes(gateways):
    """Writes acknowledged before the kill survive it; the one in flight is all or nothing."""
    gw = gateways()
    s3 = gw.client(signature_version="s3v4")
    s3.create_bucket(Bucket=BUCKET)
    rng = random.Random(5)
    acknowledged: dict[str, bytes] = {}  # key -> last version the server confirmed
    in_flight: dict[str, bytes] = {}
    stop = threading.Event()

    def writer():
        for number in range(300):
            if stop.is_set():
                return
            key = f"cam/{number % 7}.jpg"  # overwrites, so a kill can cut one short
            data = body_of(1000 + number, rng.choice([0, 1, 4096, 50_000, 900_000, 1_500_000, 3 * MiB]))
            in_flight.clear()
            in_flight[key] = data
            try:
                s3.put_object(Bucket=BUCKET, Key=key, Body=data)
            except Exception:
                return  # killed
            acknowledged[key] = data

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        wait_for(lambda: len(acknowledged) >= 7 or not thread.is_alive(), "the first writes")
        time.sleep(0.2)
        again = restart_after_kill(gw, gateways)
    finally:
        stop.set()
        thread.join(DEADLINE)
    assert len(acknowledged) == 7, "the writer stopped before the kill: see the gateway log"
    s3 = again.client()
    for key in all_keys(s3):
        data = stored(s3, key)
        allowed = [version for version in (acknowledged.get(key), in_flight.get(key)) if version is not None]
        assert data in allowed, f"{key} holds neither its last acknowledged nor its in-flight version"
    for key, data in acknowledged.items():
        if key not in in_flight:
            assert stored(s3, key) == data, f"acknowledged write of {key} was lost"
