"""The remote backends (smb, s3) under failures an operator meets, through a real ``gateway serve``.

Each test starts its own smbd or moto server (they are stopped, frozen or starved here, so the
session ones of conftest.py stay untouched), and a gateway with the remote backend for one bucket
and a local backend for another:

- the remote store stopped, or frozen (SIGSTOP), gives S3 XML 503s *with Retry-After*, the other
  bucket keeps working, and the gateway recovers without a restart when the store is back;
- the store going away in the middle of a streamed PUT: a 503, the previous version stays whole,
  and no temp file is left behind;
- a full SMB share is 507 InsufficientStorage (as a full local disk is), not a retryable 503;
- the backend's directory missing from the share is a 503 naming it, not a 500 with a traceback.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import sys
import time
import urllib.error
import urllib.request
import uuid
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from gateway.testing.moto import MotoServer
from gateway.testing.samba import Smbd
from gateway.testing.server import GatewayProcess

MiB = 1024 * 1024


@pytest.fixture
def own_smbd():
    """A private smbd this test may stop and freeze."""
    with Smbd.private() as server:
        yield server


# smbd whose files may not grow past 2 MiB: a write beyond fails with EFBIG, which Samba answers as
# STATUS_DISK_FULL, exactly as for a full disk (SIGXFSZ ignored so smbd lives on). Nothing system-wide.
_LIMIT_FILES = [sys.executable, "-c",
                "import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                "resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20)); os.execv(sys.argv[1], sys.argv[1:])"]


@pytest.fixture
def full_smbd():
    with Smbd.private(command_prefix=_LIMIT_FILES) as server:
        yield server


@pytest.fixture
def own_moto(tmp_path):
    """A private moto server this test may kill and freeze."""
    server = MotoServer(tmp_path / "moto.log").start()
    try:
        yield server
    finally:
        server.stop()


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else str(value)


def _config(tmp_path, remote_type: str, options: dict, top: str = "") -> str:
    """Bucket "far" on the remote backend, bucket "near" on a local one (``top``: more top-level settings)."""
    lines = ['default_backend = "local"', top, "", "[buckets]", 'far = "remote"', 'near = "local"', "",
             "[backends.local]", 'type = "local"', f'root = "{tmp_path / "local"}"', "",
             "[backends.remote]", f'type = "{remote_type}"']
    lines += [f"{key} = {_value(value)}" for key, value in options.items()]
    return "\n".join(lines) + "\n"


def _smb_options(smbd: Smbd) -> dict:
    return smbd.backend_options(path=f"p-{uuid.uuid4().hex[:8]}", timeout=3, connect_timeout=2)


def _s3_options(moto: MotoServer) -> dict:
    # One try per call: a frozen store costs each call one timeout, not two (the retries are botocore's,
    # tested by the s3 backend's own tests).
    return moto.backend_options(bucket_prefix=f"f{uuid.uuid4().hex[:8]}-", timeout=3, connect_timeout=2,
                                max_attempts=1, buffer_size=MiB)


def _client(gw: GatewayProcess):
    """No retries: each call's answer is the gateway's, as it gave it."""
    return boto3.client("s3", endpoint_url=gw.endpoint, region_name="us-east-1", aws_access_key_id=gw.access_key,
                        aws_secret_access_key=gw.secret_key,
                        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1},
                                      connect_timeout=5, read_timeout=60))


def _answer(exc: ClientError) -> tuple[int, str, str | None]:
    meta = exc.response["ResponseMetadata"]
    return meta["HTTPStatusCode"], exc.response["Error"]["Code"], meta["HTTPHeaders"].get("retry-after")


def _assert_503_retry_after(call) -> None:
    with pytest.raises(ClientError) as caught:
        call()
    status, code, retry_after = _answer(caught.value)
    assert (status, code) == (503, "ServiceUnavailable"), caught.value.response
    assert retry_after is not None and retry_after.isdigit() and int(retry_after) > 0, \
        f"a 503 for an unavailable backend must say when to retry: Retry-After={retry_after!r}"


def _wait_recovered(call, seconds: float = 30.0):
    deadline = time.monotonic() + seconds
    for _ in range(200):
        try:
            return call()
        except ClientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    return call()


def _freeze(process, group: bool) -> None:
    (os.killpg if group else os.kill)(process.pid, signal.SIGSTOP)


def _thaw(process, group: bool) -> None:
    (os.killpg if group else os.kill)(process.pid, signal.SIGCONT)


@pytest.fixture(params=["smb", "s3"])
def remote(request, tmp_path):
    """(backend type, store, options, stop, start, freeze, thaw) for a private smbd or moto server."""
    if request.param == "smb":
        store = request.getfixturevalue("own_smbd")
        return "smb", store, _smb_options(store), store.stop, store.start, True
    store = request.getfixturevalue("own_moto")

    def kill():
        store.process.kill()
        store.process.wait()

    return "s3", store, _s3_options(store), kill, store.start, False


def test_unavailable_remote_is_503_with_retry_after_and_recovers(remote, tmp_path):
    """Store stopped, then frozen: every call on its bucket is an S3 XML 503 with Retry-After, the local
    bucket is served meanwhile, and once the store is back its bucket works without a gateway restart."""
    kind, store, options, stop, start, group = remote
    with GatewayProcess(tmp_path / "unused", config=_config(tmp_path, kind, options)) as gw:
        s3 = _client(gw)
        s3.create_bucket(Bucket="far")
        s3.create_bucket(Bucket="near")
        s3.put_object(Bucket="far", Key="k", Body=b"far value")
        s3.put_object(Bucket="near", Key="k", Body=b"near value")

        stop()
        for call in (lambda: s3.get_object(Bucket="far", Key="k"),
                     lambda: s3.put_object(Bucket="far", Key="new", Body=b"x"),
                     lambda: s3.list_objects_v2(Bucket="far"),
                     lambda: s3.create_multipart_upload(Bucket="far", Key="mp")):
            _assert_503_retry_after(call)
        assert s3.get_object(Bucket="near", Key="k")["Body"].read() == b"near value"
        start()
        if kind == "s3":  # moto keeps everything in memory: a restarted moto is empty
            _wait_recovered(lambda: s3.create_bucket(Bucket="far"))
            s3.put_object(Bucket="far", Key="k", Body=b"far value")
        assert _wait_recovered(lambda: s3.get_object(Bucket="far", Key="k"))["Body"].read() == b"far value"

        _freeze(store.process, group)
        try:
            _assert_503_retry_after(lambda: s3.get_object(Bucket="far", Key="k"))
            _assert_503_retry_after(lambda: s3.list_objects_v2(Bucket="far"))
            assert s3.get_object(Bucket="near", Key="k")["Body"].read() == b"near value"
        finally:
            _thaw(store.process, group)
        assert _wait_recovered(lambda: s3.get_object(Bucket="far", Key="k"))["Body"].read() == b"far value"
        assert "Traceback" not in gw.log(), gw.log()[-3000:]


def test_a_frozen_s3_store_is_a_503_within_the_deadline_not_after_every_retry(own_moto, tmp_path):
    """Each try waits its read timeout; tried max_attempts times, a frozen store would keep a client
    waiting past its own read timeout (60 s in boto3 and the aws cli: 30 s x 5 with the defaults).
    The backend's deadline bounds the call as a whole: the client gets its 503 with Retry-After
    in time, naming the settings, and the gateway stays up and serves the store once it thaws."""
    options = dict(_s3_options(own_moto), max_attempts=5, timeout=5, deadline=3)  # without it: 5 x 5 s
    with GatewayProcess(tmp_path / "unused", config=_config(tmp_path, "s3", options)) as gw:
        s3 = _client(gw)
        s3.create_bucket(Bucket="far")
        s3.put_object(Bucket="far", Key="k", Body=b"far value")
        _freeze(own_moto.process, False)
        try:
            started = time.monotonic()
            with pytest.raises(ClientError) as caught:
                s3.get_object(Bucket="far", Key="k")
            waited = time.monotonic() - started
        finally:
            _thaw(own_moto.process, False)
        status, code, retry_after = _answer(caught.value)
        assert (status, code) == (503, "ServiceUnavailable") and retry_after, caught.value.response
        assert "deadline" in caught.value.response["Error"]["Message"], caught.value.response
        assert waited < 12, f"the answer took {waited:.1f}s: the 3 s deadline did not bound the retries"
        assert _wait_recovered(lambda: s3.get_object(Bucket="far", Key="k"))["Body"].read() == b"far value"


def _put_stopping_halfway(gw: GatewayProcess, key: str, size: int, halfway, at: int) -> tuple[int, str, str | None]:
    """PUT ``size`` bytes with a presigned URL, calling ``halfway()`` once ``at`` bytes of it are sent."""
    url = urlsplit(_client(gw).generate_presigned_url("put_object", Params={"Bucket": "far", "Key": key},
                                                      ExpiresIn=300))
    conn = http.client.HTTPConnection(gw.host, gw.port, timeout=60)
    try:
        conn.putrequest("PUT", f"{url.path}?{url.query}")
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        block, sent = b"n" * (256 * 1024), 0
        try:
            while sent < size:
                if sent == at:
                    halfway()
                conn.send(block)
                sent += len(block)
                time.sleep(0.01)  # the gateway passes blocks on while they arrive
        except OSError:
            pass  # the gateway answered early and closed: read its answer
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace"), response.getheader("Retry-After")
    finally:
        conn.close()


def test_store_gone_mid_put_keeps_the_old_version(remote, tmp_path):
    """The store gone while a large body streams to it (smbd stopped; moto frozen, as it keeps its objects
    in memory): a 503 with Retry-After, the previous version is whole afterwards, and nothing half-written
    stays: no temp file on the share once a later PUT has run, no upload left on the S3 store."""
    kind, store, options, stop, start, group = remote
    with GatewayProcess(tmp_path / "unused", config=_config(tmp_path, kind, options)) as gw:
        s3 = _client(gw)
        s3.create_bucket(Bucket="far")
        s3.put_object(Bucket="far", Key="video", Body=b"old version")
        halfway = stop if kind == "smb" else (lambda: _freeze(store.process, group))
        # A frozen moto keeps what reached its socket, and would store the object once it runs again if
        # the whole body had fit in the TCP buffers: freeze it with far more than those still to send.
        size, at = (8 * MiB, 4 * MiB) if kind == "smb" else (64 * MiB, 4 * MiB)
        try:
            status, body, retry_after = _put_stopping_halfway(gw, "video", size, halfway, at)
        finally:
            start() if kind == "smb" else _thaw(store.process, group)
        assert status == 503 and "<Code>ServiceUnavailable</Code>" in body, body
        assert retry_after is not None, "the 503 must say when to retry"
        assert _wait_recovered(lambda: s3.get_object(Bucket="far", Key="video"))["Body"].read() == b"old version"
        s3.put_object(Bucket="far", Key="after", Body=b"a")  # (smb) sweeps what the failed PUT left
        if kind == "smb":
            tmp_dir = store.share_dir / options["path"] / ".gateway" / "tmp"
            assert [p.name for p in tmp_dir.rglob("*") if p.is_file()] == []
        else:
            direct = boto3.client("s3", endpoint_url=store.endpoint, region_name="us-east-1",
                                  aws_access_key_id="testing", aws_secret_access_key="testing")
            remote_bucket = options["bucket_prefix"] + "far"
            assert direct.list_multipart_uploads(Bucket=remote_bucket).get("Uploads", []) == []
            assert sorted(o["Key"] for o in direct.list_objects_v2(Bucket=remote_bucket)["Contents"]) == \
                ["after", "video"]


def test_full_smb_share_is_507_not_a_retryable_503(full_smbd, tmp_path):
    """STATUS_DISK_FULL (a full share, or a quota) is 507 InsufficientStorage, as ENOSPC is for the local
    backend (docs/s3-compatibility.md): not a 503 that clients retry forever. Nothing is stored."""
    options = _smb_options(full_smbd)
    with GatewayProcess(tmp_path / "unused", config=_config(tmp_path, "smb", options)) as gw:
        s3 = _client(gw)
        s3.create_bucket(Bucket="far")
        s3.put_object(Bucket="far", Key="clip", Body=b"old version")
        for size in (3 * MiB, 2 * MiB):  # streamed in blocks, and written in one hop
            with pytest.raises(ClientError) as caught:
                s3.put_object(Bucket="far", Key="clip", Body=b"c" * size)
            status, code, _ = _answer(caught.value)
            assert (status, code) == (507, "InsufficientStorage"), caught.value.response
            assert "full" in caught.value.response["Error"]["Message"]
        assert s3.get_object(Bucket="far", Key="clip")["Body"].read() == b"old version"
        tmp_dir = full_smbd.share_dir / options["path"] / ".gateway" / "tmp"
        assert [p.name for p in tmp_dir.rglob("*") if p.is_file()] == []
        s3.put_object(Bucket="far", Key="small", Body=b"fits")
        assert s3.get_object(Bucket="far", Key="small")["Body"].read() == b"fits"


def _assert_all_503_naming(s3, name: str) -> None:
    calls = {"ListBuckets": lambda: s3.list_buckets(),
             "CreateBucket": lambda: s3.create_bucket(Bucket="far"),
             "HeadBucket": lambda: s3.head_bucket(Bucket="far"),
             "GetObject": lambda: s3.get_object(Bucket="far", Key="k"),
             "PutObject": lambda: s3.put_object(Bucket="far", Key="k", Body=b"new"),
             "DeleteObject": lambda: s3.delete_object(Bucket="far", Key="k"),
             "ListObjectsV2": lambda: s3.list_objects_v2(Bucket="far"),
             "CreateMultipartUpload": lambda: s3.create_multipart_upload(Bucket="far", Key="m")}
    for call_name, call in calls.items():
        with pytest.raises(ClientError) as caught:
            call()
        status, code, retry_after = _answer(caught.value)
        assert status == 503 and retry_after, (call_name, caught.value.response)
        if call_name != "HeadBucket":  # a HEAD answer has no body: the status says it all
            assert code == "ServiceUnavailable", (call_name, caught.value.response)
            assert name in caught.value.response["Error"]["Message"], (call_name, caught.value.response)


def test_backend_directory_missing_from_the_share_is_503_not_500(own_smbd, tmp_path):
    """The backend's path removed from the share (or the volume behind the share not there): every call on
    its buckets is a 503 naming the directory, not 500s with a traceback (ListBuckets, CreateBucket) nor
    404 NoSuchBucket (which a sync tool takes for "bucket deleted"). It is not made again behind the
    operator's back; once it is back, everything works without a gateway restart."""
    options = _smb_options(own_smbd)
    with GatewayProcess(tmp_path / "unused", config=_config(tmp_path, "smb", options)) as gw:
        s3 = _client(gw)
        s3.create_bucket(Bucket="far")
        s3.put_object(Bucket="far", Key="k", Body=b"v")
        s3.create_bucket(Bucket="near")
        directory = own_smbd.share_dir / options["path"]
        shutil.move(directory, directory.with_name("moved-away"))
        _assert_all_503_naming(s3, options["path"])
        # /readyz says the same: which backend, which directory (was a bare "No such file or directory").
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            urllib.request.urlopen(gw.endpoint + "/readyz", timeout=30)
        reason = json.loads(not_ready.value.read())["backends"]["remote"]
        assert "backend 'remote' (smb)" in reason and options["path"] in reason, reason
        assert "Traceback" not in gw.log(), gw.log()[-3000:]
        assert "smbprotocol" not in gw.log(), "smbprotocol's INFO lines (~13 per PUT) flood the log"
        assert not directory.exists(), "the missing directory is not made again"
        shutil.move(directory.with_name("moved-away"), directory)
        assert s3.get_object(Bucket="far", Key="k")["Body"].read() == b"v"


def test_share_gone_from_the_server_is_503_not_no_such_bucket(own_smbd, tmp_path):
    """The share removed from (or renamed on) the SMB server while the gateway runs: over SMB every path in
    a share that is gone is "not found", which answered 404 NoSuchBucket for every bucket. It is a 503."""
    options = _smb_options(own_smbd)
    with GatewayProcess(tmp_path / "unused", config=_config(tmp_path, "smb", options)) as gw:
        s3 = _client(gw)
        s3.create_bucket(Bucket="far")
        s3.put_object(Bucket="far", Key="k", Body=b"v")
        config = own_smbd.config.read_text()
        own_smbd.config.write_text(config.replace(f"[{own_smbd.share}]", "[renamed-share]"))
        own_smbd.stop()  # the sessions, and their tree connections, go with the restart
        own_smbd.start()
        try:
            _assert_all_503_naming(s3, own_smbd.share)
        finally:
            own_smbd.config.write_text(config)
            own_smbd.stop()
            own_smbd.start()
        assert _wait_recovered(lambda: s3.get_object(Bucket="far", Key="k"))["Body"].read() == b"v"


def test_single_bucket_mode_remote_bucket_gone_is_503_not_no_such_bucket(own_moto, tmp_path):
    """Single-bucket mode keeps every gateway bucket in one remote bucket. That bucket deleted under a
    running gateway is the backend's failure: 503 naming it and the bucket setting, not 404 NoSuchBucket
    about the client's bucket (which a sync tool takes for "bucket deleted"), and never NoSuchBucket for
    ListBuckets or CreateBucket, which S3 does not answer."""
    direct = boto3.client("s3", endpoint_url=own_moto.endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    direct.create_bucket(Bucket="archive")
    options = own_moto.backend_options(bucket="archive", prefix="site-1/", timeout=3, connect_timeout=2,
                                       max_attempts=2)
    with GatewayProcess(tmp_path / "unused", config=_config(tmp_path, "s3", options)) as gw:
        s3 = _client(gw)
        s3.create_bucket(Bucket="far")
        s3.put_object(Bucket="far", Key="k", Body=b"v")
        for listed in direct.list_objects_v2(Bucket="archive")["Contents"]:
            direct.delete_object(Bucket="archive", Key=listed["Key"])
        direct.delete_bucket(Bucket="archive")
        calls = {"ListBuckets": lambda: s3.list_buckets(),
                 "CreateBucket": lambda: s3.create_bucket(Bucket="far"),
                 "GetObject": lambda: s3.get_object(Bucket="far", Key="k"),
                 "PutObject": lambda: s3.put_object(Bucket="far", Key="k2", Body=b"x"),
                 "ListObjectsV2": lambda: s3.list_objects_v2(Bucket="far"),
                 "CreateMultipartUpload": lambda: s3.create_multipart_upload(Bucket="far", Key="m")}
        for name, call in calls.items():
            with pytest.raises(ClientError) as caught:
                call()
            assert _answer(caught.value)[:2] == (503, "ServiceUnavailable"), (name, caught.value.response)
            message = caught.value.response["Error"]["Message"]
            assert "'archive'" in message and "bucket setting" in message, (name, message)
        direct.create_bucket(Bucket="archive")  # back: the gateway works again without a restart
        s3.create_bucket(Bucket="far")
        s3.put_object(Bucket="far", Key="k", Body=b"again")
        assert s3.get_object(Bucket="far", Key="k")["Body"].read() == b"again"


def test_streaming_get_is_cut_not_hung_when_the_store_goes(remote, tmp_path):
    """A large GET streaming when the store is frozen: the headers (200, Content-Length) are out, so the
    gateway ends the connection after its call timeout; the client sees a short body, not a hang and not
    bytes that are not the object's. The other bucket is served meanwhile; afterwards the GET is whole."""
    kind, store, options, stop, start, group = remote
    data = os.urandom(24 * MiB)
    with GatewayProcess(tmp_path / "unused", config=_config(tmp_path, kind, options)) as gw:
        s3 = _client(gw)
        s3.create_bucket(Bucket="far")
        s3.create_bucket(Bucket="near")
        s3.put_object(Bucket="far", Key="clip", Body=data)
        s3.put_object(Bucket="near", Key="k", Body=b"near value")
        body = s3.get_object(Bucket="far", Key="clip")["Body"]
        received = body.read(MiB)
        _freeze(store.process, group)
        try:
            with pytest.raises(Exception) as caught:  # botocore's IncompleteReadError or a reset connection
                for _ in range(64):  # at most 24 more reads of 1 MiB, and the one that fails
                    chunk = body.read(MiB)
                    if not chunk:
                        break
                    received += chunk
            assert len(received) < len(data) and data.startswith(received)
            assert s3.get_object(Bucket="near", Key="k")["Body"].read() == b"near value"
        finally:
            _thaw(store.process, group)
        assert _wait_recovered(lambda: s3.get_object(Bucket="far", Key="clip"))["Body"].read() == data


def test_complete_multipart_while_the_store_is_frozen_then_retried(remote, tmp_path):
    """CompleteMultipartUpload while the store is frozen: a 503 with Retry-After (never a hang); the SDK's
    retry once it runs again gives the object, whole, and no upload is left over."""
    kind, store, options, stop, start, group = remote
    with GatewayProcess(tmp_path / "unused", config=_config(tmp_path, kind, options)) as gw:
        s3 = _client(gw)
        s3.create_bucket(Bucket="far")
        upload_id = s3.create_multipart_upload(Bucket="far", Key="mp")["UploadId"]
        parts = []
        for number in (1, 2):
            etag = s3.upload_part(Bucket="far", Key="mp", UploadId=upload_id, PartNumber=number,
                                  Body=bytes([number]) * (5 * MiB))["ETag"]
            parts.append({"PartNumber": number, "ETag": etag})
        _freeze(store.process, group)
        try:
            _assert_503_retry_after(lambda: s3.complete_multipart_upload(
                Bucket="far", Key="mp", UploadId=upload_id, MultipartUpload={"Parts": parts}))
        finally:
            _thaw(store.process, group)
        _wait_recovered(lambda: s3.complete_multipart_upload(Bucket="far", Key="mp", UploadId=upload_id,
                                                             MultipartUpload={"Parts": parts}))
        assert s3.get_object(Bucket="far", Key="mp")["Body"].read() == b"\x01" * (5 * MiB) + b"\x02" * (5 * MiB)
        assert s3.list_multipart_uploads(Bucket="far").get("Uploads", []) == []


def test_a_listing_of_many_objects_is_not_cut_by_the_call_timeout(own_smbd, tmp_path):
    """`timeout` bounds each SMB call (so that a hung server is a 503, not a hang). A listing page is many
    calls (a directory query per level, an open+read+close per object) in one worker hop: it must not be
    bounded as a whole by one call's timeout, or an operator who sets a short timeout (or whose NAS is a
    few ms away) gets a 503 "no answer" for every listing of a large bucket from a server that answers."""
    import asyncio

    from gateway_plugins.local import LocalBackend

    from gateway.testing.backend_io import put_bytes

    options = _smb_options(own_smbd)
    options["timeout"] = 1

    async def fill():  # the same files the smb backend writes (one layout), written quickly
        local = LocalBackend(root=str(own_smbd.share_dir / options["path"]), fsync=False)
        await local.start()
        try:
            await local.create_bucket("far")
            for i in range(2000):
                await put_bytes(local, "far", f"cam/{i:05d}.jpg", b"x")
        finally:
            await local.close()

    asyncio.run(fill())
    with GatewayProcess(tmp_path / "unused", config=_config(tmp_path, "smb", options)) as gw:
        s3 = _client(gw)
        keys = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="far", PaginationConfig={"PageSize": 1000}):
            keys += [o["Key"] for o in page.get("Contents", [])]
        assert keys == [f"cam/{i:05d}.jpg" for i in range(2000)]
        # A hung server is still a 503 after the timeout, in the middle of a listing too.
        _freeze(own_smbd.process, True)
        try:
            _assert_503_retry_after(lambda: s3.list_objects_v2(Bucket="far"))
        finally:
            _thaw(own_smbd.process, True)
        assert _wait_recovered(lambda: s3.list_objects_v2(Bucket="far", MaxKeys=3))["KeyCount"] == 3


def test_smb_temp_files_left_by_failures_are_swept_while_running(own_smbd, tmp_path):
    """A PUT that fails while smbd is frozen cannot remove its temp file (as large as the object); nor does
    a gateway killed on this host. The upload reaper's sweeps (every multipart_expiry / 4) now remove both
    while the gateway runs, without waiting for a later PUT through it or a restart."""
    import socket
    import subprocess

    options = _smb_options(own_smbd)
    with GatewayProcess(tmp_path / "unused", config=_config(tmp_path, "smb", options, "multipart_expiry = 2")) as gw:
        s3 = _client(gw)
        s3.create_bucket(Bucket="far")
        tmp_dir = own_smbd.share_dir / options["path"] / ".gateway" / "tmp" / (socket.gethostname() or "localhost")
        gone = subprocess.Popen(["true"])
        gone.wait()
        (tmp_dir / f"{gone.pid}-0-deadbeef").write_bytes(b"left by a gateway killed mid-PUT")
        status, body, _ = _put_stopping_halfway(gw, "video", 8 * MiB, lambda: _freeze(own_smbd.process, True),
                                                4 * MiB)
        _thaw(own_smbd.process, True)
        assert status == 503, body
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and list(tmp_dir.iterdir()):
            time.sleep(0.2)
        assert [p.name for p in tmp_dir.iterdir()] == [], "temp files stay until a later PUT or a restart"
        s3.put_object(Bucket="far", Key="after", Body=b"a")
        assert s3.get_object(Bucket="far", Key="after")["Body"].read() == b"a"


def test_a_store_frozen_at_start_is_started_without_not_blamed_on_the_credentials(own_moto, tmp_path):
    """A deadline that ran out at start-up stopped the gateway with "check the access_key_id/
    secret_access_key setting": a store that stands still is one to start without and try again, as
    one that refuses connections."""
    options = dict(_s3_options(own_moto), max_attempts=5, timeout=5, deadline=3)
    _freeze(own_moto.process, False)
    try:
        gw = GatewayProcess(tmp_path / "unused", config=_config(tmp_path, "s3", options))
        gw.start()
    finally:
        _thaw(own_moto.process, False)
    try:
        log = gw.log_path.read_text()
        assert "is not answering" in log and "starting without it" in log, log
        assert "access_key_id" not in log, log
        s3 = _client(gw)
        s3.create_bucket(Bucket="near")  # the other backend is served meanwhile
        _wait_recovered(lambda: s3.create_bucket(Bucket="far"), seconds=60)
        s3.put_object(Bucket="far", Key="k", Body=b"far value")
        assert s3.get_object(Bucket="far", Key="k")["Body"].read() == b"far value"
    finally:
        gw.stop()


class _CutListings:
    """An S3 store on loopback that answers a listing with its 200 headers and then closes the
    connection (what a store killed mid-answer does), and everything else as an empty store would."""

    def __init__(self):
        import http.server
        import socketserver
        import threading

        buckets = (b'<?xml version="1.0" encoding="UTF-8"?><ListAllMyBucketsResult '
                   b'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Owner><ID>x</ID></Owner><Buckets><Bucket>'
                   b'<Name>cut-far</Name><CreationDate>2026-01-01T00:00:00.000Z</CreationDate></Bucket>'
                   b'</Buckets></ListAllMyBucketsResult>')

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self):
                self.send_response(200)
                if "list-type=2" in self.path or "uploads" in self.path:
                    self.send_header("Content-Length", "500")  # and no body: cut off
                    self.end_headers()
                    self.close_connection = True
                    return
                self.send_header("Content-Length", str(len(buckets)))
                self.end_headers()
                self.wfile.write(buckets)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_listing_cut_off_after_its_headers_is_a_503_not_an_empty_bucket(tmp_path):
    """botocore parses a 200 whose body never came as an empty listing: the bucket listed empty
    (KeyCount 0, not truncated), and `aws s3 sync --delete` or rclone sync would delete everything."""
    store = _CutListings()
    options = {"endpoint_url": store.endpoint, "region": "us-east-1", "access_key_id": "x", "secret_access_key": "y",
               "bucket_prefix": "cut-", "addressing_style": "path", "timeout": 3, "max_attempts": 1}
    try:
        with GatewayProcess(tmp_path / "unused", config=_config(tmp_path, "s3", options)) as gw:
            s3 = _client(gw)
            for call in (lambda: s3.list_objects_v2(Bucket="far", Prefix="cam1/"),
                         lambda: s3.list_objects(Bucket="far"),
                         lambda: s3.list_multipart_uploads(Bucket="far")):
                with pytest.raises(ClientError) as caught:
                    call()
                status, code, retry_after = _answer(caught.value)
                assert (status, code) == (503, "ServiceUnavailable") and retry_after, caught.value.response
                assert "without a listing" in caught.value.response["Error"]["Message"], caught.value.response
            assert "Traceback" not in gw.log()
    finally:
        store.close()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_gateway_stops_at_once_while_its_store_holds_a_call(own_moto, tmp_path, stop):
    """A frozen S3 endpoint holds the backend's worker thread in its call for timeout x attempts (here
    up to 100 s); the exit after Ctrl-C (`make run`) waited for that thread."""
    options = dict(_s3_options(own_moto), max_attempts=5, timeout=20, deadline=2)
    gw = GatewayProcess(tmp_path / "unused", config=_config(tmp_path, "s3", options))
    gw.start()
    try:
        s3 = _client(gw)
        s3.create_bucket(Bucket="far")
        s3.put_object(Bucket="far", Key="k", Body=b"far value")
        _freeze(own_moto.process, False)
        _assert_503_retry_after(lambda: s3.get_object(Bucket="far", Key="k"))  # answered at the deadline
        started = time.monotonic()
        gw.process.send_signal(stop)
        gw.process.wait(timeout=120)
        took = time.monotonic() - started
    finally:
        _thaw(own_moto.process, False)
        gw.stop()
    assert gw.process.returncode in (0, -stop), gw.log()[-2000:]  # uvicorn raises SIGTERM again once stopped
    assert "Application shutdown complete" in gw.log()
    assert took < 15, f"the gateway took {took:.0f} s to stop"
