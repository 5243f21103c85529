"""The smb backend against a real smbd: the conformance suite, then what only SMB can break.

- the files it writes are those of the local backend (a share mounted as
  cv-storage and the share spoken to over SMB are interchangeable);
- smbd restarting in the middle of a workload gives clean 503 S3 errors
  while it is down, success after, and never a partial object;
- a hung server gives a 503 after the timeout, never a hang;
- bad settings fail at start-up, naming the backend and the setting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest
from botocore.exceptions import ClientError
from gateway_plugins.local import LocalBackend
from gateway_plugins.smb import SmbBackend, read_credentials_file

from gateway.backend import ObjectMeta
from gateway.testing.backend_io import get_bytes, list_all, put_bytes
from gateway.testing.conformance import OptionsBackendConformance
from gateway.testing.server import GatewayProcess, free_port


async def started(options: dict) -> SmbBackend:
    backend = SmbBackend(name="nas", **options)
    await backend.start()
    return backend


class TestSmbBackend(OptionsBackendConformance):
    backend_class, backend_name = SmbBackend, "nas"

    @pytest.fixture
    def options(self, smbd, smb_path):
        return smbd.backend_options(path=smb_path)

    async def test_files_are_the_local_layout(self, backend, smbd, smb_path):
        """What the smb backend writes, the local backend reads on the share's directory, and back."""
        meta = ObjectMeta("image/jpeg", {"camera": "7"}, {"cache-control": "no-cache"})
        await backend.create_bucket("faces")
        keys = ["cam1/0001.jpg", "cam1/deeper/x", "per%cent", "back\\slash:colon*star?", "tab\there"]
        for key in keys:
            await put_bytes(backend, "faces", key, key.encode() * 3, meta)
        local = LocalBackend(root=str(smbd.share_dir / smb_path))
        await local.start()
        try:
            assert (await list_all(local, "faces"))[0] == sorted(keys, key=str.encode)
            for key in keys:
                assert await get_bytes(local, "faces", key) == key.encode() * 3
                assert (await local.head("faces", key)).metadata == {"camera": "7"}
            await put_bytes(local, "faces", "from-local/é", b"written by the local backend")
        finally:
            await local.close()
        assert await get_bytes(backend, "faces", "from-local/é") == b"written by the local backend"

    async def test_key_with_reserved_private_use_character_is_refused(self, backend, bucket):
        from gateway import errors

        with pytest.raises(errors.InvalidArgument):
            await put_bytes(backend, bucket, "odd\uf026name", b"x")

    @pytest.mark.parametrize("long_part", ["file", "directory"])
    async def test_a_listing_never_drops_an_object_the_server_fails_to_read(self, backend, bucket, monkeypatch,
                                                                            long_part):
        """A long (hashed) name's full text is read while listing; an error there fails the listing
        instead of leaving the object out, which a sync tool would take for a delete."""
        import errno

        import smbclient
        from gateway_plugins import smb_files

        long = "n" * 300
        key = long if long_part == "file" else f"{long}/inside"
        await put_bytes(backend, bucket, key, b"x")
        assert (await list_all(backend, bucket))[0] == [key]
        real_read_info, real_open_file = smb_files.read_info, smbclient.open_file

        def failing(real):
            def call(kw_or_path, *args, **kwargs):
                path = args[0] if isinstance(kw_or_path, dict) else kw_or_path
                name = path.rsplit("\\", 1)[-1]
                if "%h" in name or name == "%name":
                    raise OSError(errno.EIO, "Input/output error", path)
                return real(kw_or_path, *args, **kwargs)
            return call

        monkeypatch.setattr(smb_files, "read_info", failing(real_read_info))
        monkeypatch.setattr(smbclient, "open_file", failing(real_open_file))
        with pytest.raises(OSError, match="Input/output error"):  # the front end's logged 500
            await list_all(backend, bucket)

    async def test_failed_put_leaves_no_temp_file(self, backend, bucket, smbd, smb_path):
        from gateway.payload import Payload
        from gateway.testing.backend_io import StreamBroke, breaking_stream

        with pytest.raises(StreamBroke):
            await backend.put(bucket, "big", Payload(breaking_stream(b"z" * (3 << 20), 2 << 20)), ObjectMeta())
        tmp_dir = smbd.share_dir / smb_path / ".gateway" / "tmp" / backend.host
        assert [p.name for p in tmp_dir.iterdir()] == []


async def hold_open(backend: SmbBackend, path: str):
    """Open ``path`` as a Windows program or another SMB client does by default: others may read
    it, but not delete or rename over it (no delete sharing). Returns the open file."""
    import smbclient

    return await backend.pool.call(lambda kw: smbclient.open_file(path, mode="rb", share_access="r", **kw),
                                   what="hold a file")


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_overwrite_waits_while_another_client_holds_the_file(smbd, smb_path):
    """SMB refuses to replace a file another client has open without delete sharing: the PUT waits
    (without blocking the event loop) until it is closed, then wins."""
    backend = await started(smbd.backend_options(path=smb_path))
    try:
        await backend.create_bucket("faces")
        await put_bytes(backend, "faces", "held", b"old")
        handle = await hold_open(backend, backend._object_path("faces", "held"))
        loop = asyncio.get_running_loop()
        loop.call_later(0.5, handle.close)
        ticks = 0

        async def ticker():  # proves the loop keeps running while the PUT waits
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        tick_task = asyncio.create_task(ticker())
        started_at = time.monotonic()
        await put_bytes(backend, "faces", "held", b"new")
        waited = time.monotonic() - started_at
        tick_task.cancel()
        assert waited >= 0.4, f"the PUT did not wait for the reader ({waited:.2f}s)"
        assert ticks >= 5
        assert await get_bytes(backend, "faces", "held") == b"new"
    finally:
        await backend.close()


@pytest.mark.anyio
async def test_file_held_past_the_deadline_is_a_503_and_keeps_the_old_version(smbd, smb_path):
    from gateway import errors

    backend = await started(smbd.backend_options(path=smb_path, timeout=1))  # waits up to 0.8 s
    try:
        await backend.create_bucket("faces")
        await put_bytes(backend, "faces", "held", b"old")
        handle = await hold_open(backend, backend._object_path("faces", "held"))
        try:
            with pytest.raises(errors.GatewayError) as caught:
                await put_bytes(backend, "faces", "held", b"new")
            assert caught.value.status == 503 and "in use" in caught.value.message, caught.value.message
        finally:
            handle.close()
        assert await get_bytes(backend, "faces", "held") == b"old"
        tmp_dir = smbd.share_dir / smb_path / ".gateway" / "tmp" / backend.host
        deadline = time.monotonic() + 5
        while list(tmp_dir.iterdir()) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert list(tmp_dir.iterdir()) == [], "the failed PUT's temp file stays"
    finally:
        await backend.close()


@pytest.mark.anyio
async def test_a_key_deleted_while_a_reader_streams_it(smbd, smb_path):
    """SMB keeps a file deleted while open "delete pending" until the reader closes it: meanwhile the
    key is gone (404, not a 500 from STATUS_DELETE_PENDING, and the bucket still lists), and a PUT of
    it waits for the reader like an overwrite, then answers 503 saying why; after the read it works."""
    from gateway import errors

    backend = await started(smbd.backend_options(path=smb_path, timeout=1))  # a PUT waits up to 0.8 s
    try:
        await backend.create_bucket("faces")
        data = os.urandom(3 * 1024 * 1024)  # streamed with the file open (above WHOLE_READ_LIMIT)
        await put_bytes(backend, "faces", "clip", data)
        await put_bytes(backend, "faces", "other", b"o")
        reader = await backend.get("faces", "clip")
        async with reader:
            chunks = reader.chunks()
            read = [await chunks.__anext__()]
            await backend.delete("faces", "clip")
            assert not await backend.exists("faces", "clip")
            with pytest.raises(errors.NoSuchKey):
                await backend.get("faces", "clip")
            await backend.delete("faces", "clip")
            assert await list_all(backend, "faces") == (["other"], [])
            with pytest.raises(errors.GatewayError) as caught:
                await put_bytes(backend, "faces", "clip", b"new")
            assert caught.value.status == 503 and "reader still has it open" in caught.value.message
            async for chunk in chunks:
                read.append(chunk)
        assert b"".join(read) == data
        await put_bytes(backend, "faces", "clip", b"new")
        assert await get_bytes(backend, "faces", "clip") == b"new"
    finally:
        await backend.close()


def test_credentials_file(tmp_path):
    path = tmp_path / "smb.cred"
    path.write_text("# mount.cifs format\nusername=cvgw\npassword=p=a=ss\ndomain=LAB\n")
    assert read_credentials_file(str(path)) == {"username": "cvgw", "password": "p=a=ss", "domain": "LAB"}


def _serve_and_fail(tmp_path, config: str) -> tuple[int, str]:
    """Run ``gateway serve --config`` expecting it to refuse to start; return (exit code, output)."""
    path = tmp_path / "gateway.toml"
    path.write_text(config)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", str(free_port()),
         "--access-key", "k", "--secret-key", "s" * 20],
        check=False, capture_output=True, text=True, timeout=60,
    )
    return result.returncode, result.stdout + result.stderr


# A server that does not answer (a wrong port, or down) no longer stops the start: the gateway starts
# without that backend and says which setting to check (tests/plugins/test_backend_down_at_start.py).
@pytest.mark.parametrize("problem, setting", [
    ("password", "user/password"),
    ("share", "share"),
])
def test_bad_settings_fail_at_start_up(tmp_path, smbd, problem, setting):
    text = smbd.toml("nas", path="startup")
    if problem == "password":
        text = text.replace(f'password = "{smbd.password}"', 'password = "wrong-password"')
    else:
        text = text.replace(f'share = "{smbd.share}"', 'share = "no-such-share"')
    code, output = _serve_and_fail(tmp_path, text)
    assert code == 2, output
    assert "backend 'nas' (smb)" in output, output
    assert setting in output, output


def test_missing_setting_and_unknown_option(tmp_path, smbd):
    code, output = _serve_and_fail(tmp_path, 'default_backend = "nas"\n[backends.nas]\ntype = "smb"\n'
                                             'share = "x"\nuser = "u"\n')
    assert code != 0 and "backends.nas.server is required" in output, output
    code, output = _serve_and_fail(tmp_path, smbd.toml("nas").replace("[backends.nas]\n", '[backends.nas]\npasword = "x"\n'))
    assert code != 0 and "pasword" in output, output


@pytest.fixture
def smb_gateway(smbd, smb_path, tmp_path):
    config = smbd.toml("nas", path=smb_path, timeout=3, connect_timeout=2)
    with GatewayProcess(tmp_path / "unused", config=config) as gw:
        yield gw


def _error_code(exc: ClientError) -> tuple[int, str]:
    return exc.response["ResponseMetadata"]["HTTPStatusCode"], exc.response["Error"]["Code"]


def test_smbd_restart_mid_workload(smbd, smb_gateway):
    """While smbd is down every request is a clean 503; afterwards all succeed; no object is ever partial."""
    s3 = smb_gateway.client()
    s3.create_bucket(Bucket="work")
    versions: dict[str, set[bytes]] = {}  # key -> every body a PUT of it was acknowledged or attempted with

    def body(key: str, n: int) -> bytes:
        return hashlib.sha256(f"{key}-{n}".encode()).digest() * (200 + n % 7 * 300)

    for i in range(10):
        key = f"k{i}"
        s3.put_object(Bucket="work", Key=key, Body=body(key, 0))
        versions[key] = {body(key, 0)}

    outcomes = {"ok": 0, "503": 0}
    unexpected = []

    def one(n: int) -> None:
        key = f"k{n % 10}"
        try:
            if n % 2:
                data = body(key, n)
                versions[key].add(data)
                s3.put_object(Bucket="work", Key=key, Body=data)
            else:
                got = s3.get_object(Bucket="work", Key=key)["Body"].read()
                if got not in versions[key]:
                    unexpected.append(f"GET {key} returned {len(got)} bytes that no PUT wrote")
            outcomes["ok"] += 1
        except ClientError as exc:
            status, code = _error_code(exc)
            if (status, code) == (503, "ServiceUnavailable"):
                outcomes["503"] += 1
            else:
                unexpected.append(f"{key}: {status} {code}")

    deadline = time.monotonic() + 60
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(40)))  # smbd up
        smbd.stop()
        list(pool.map(one, range(40, 80)))  # smbd down: every request must be a 503
        down_ok = outcomes["ok"]
        smbd.start()
        list(pool.map(one, range(80, 160)))
    assert time.monotonic() < deadline
    assert not unexpected, unexpected
    assert outcomes["503"] >= 30, outcomes  # practically all of the 40 requests made while it was down
    assert down_ok >= 40
    # Back up: everything works again, and every object is one complete version.
    for i in range(10):
        key = f"k{i}"
        got = s3.get_object(Bucket="work", Key=key)["Body"].read()
        assert got in versions[key], f"{key} is not a version that was written"
    s3.put_object(Bucket="work", Key="after", Body=b"after the restart")
    assert s3.get_object(Bucket="work", Key="after")["Body"].read() == b"after the restart"


def test_down_server_gives_s3_xml_503(smbd, smb_gateway):
    import urllib.request

    s3 = smb_gateway.client()
    s3.create_bucket(Bucket="down")
    s3.put_object(Bucket="down", Key="x", Body=b"x")
    smbd.stop()
    try:
        for call in (lambda: s3.get_object(Bucket="down", Key="x"), lambda: s3.list_objects_v2(Bucket="down"),
                     lambda: s3.put_object(Bucket="down", Key="y", Body=b"y")):
            with pytest.raises(ClientError) as caught:
                call()
            assert _error_code(caught.value) == (503, "ServiceUnavailable")
            assert "smb" in caught.value.response["Error"]["Message"]
        with urllib.request.urlopen(smb_gateway.endpoint + "/readyz", timeout=30) as response:
            pytest.fail(f"/readyz answered {response.status} while smbd is down")
    except urllib.error.HTTPError as exc:
        assert exc.code == 503
    finally:
        smbd.start()
    assert s3.get_object(Bucket="down", Key="x")["Body"].read() == b"x"


def test_hung_server_gives_503_not_a_hang(smbd, smb_gateway):
    """smbd stopped (SIGSTOP) keeps its sockets open but never answers: the call timeout must fire."""
    s3 = smb_gateway.client()
    s3.create_bucket(Bucket="hung")
    s3.put_object(Bucket="hung", Key="x", Body=b"x")
    os.killpg(smbd.process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(ClientError) as caught:
            s3.get_object(Bucket="hung", Key="x")
        status, code = _error_code(caught.value)
        assert (status, code) == (503, "ServiceUnavailable")
        assert "timeout" in caught.value.response["Error"]["Message"]
    finally:
        os.killpg(smbd.process.pid, signal.SIGCONT)
    deadline = time.monotonic() + 30
    while True:  # the connection the timeout shut down is replaced on the next call
        try:
            assert s3.get_object(Bucket="hung", Key="x")["Body"].read() == b"x"
            break
        except ClientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
