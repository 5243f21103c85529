"""A remote store that does not answer when the gateway starts (services/pending.py).

It used to stop the start: after a power cut that brought the gateway back
before the NAS, the buckets of every other backend were down too. Now the
gateway starts, answers 503 for that backend's buckets, and serves them once
the store answers. A wrong setting still stops the start.
"""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError

from gateway.testing.moto import ACCESS_KEY_ID, SECRET_ACCESS_KEY, MotoServer
from gateway.testing.samba import Smbd
from gateway.testing.server import GatewayProcess


def _two_backends(remote: str) -> str:
    """Buckets on the local backend by default; bucket "remote" on the backend [backends.remote] (``remote``)."""
    return f'default_backend = "local"\n\n[buckets]\nremote = "remote"\n\n[backends.local]\ntype = "local"\n' \
           f'root = "{{root}}"\n\n{remote}'


def _toml_table(options: dict) -> str:
    lines = ["[backends.remote]"]
    for key, value in options.items():
        lines.append(f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value}")
    return "\n".join(lines) + "\n"


def _wait_served(client, timeout: float) -> None:
    """Until the bucket on the remote backend can be created (the backend started in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.create_bucket(Bucket="remote")
            return
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ServiceUnavailable" or time.monotonic() > deadline:
                raise
        time.sleep(0.3)


def _check_down_then_up(tmp_path, remote_options: dict, start_store, what: str, setting: str) -> None:
    config = _two_backends(_toml_table(remote_options)).replace("{root}", str(tmp_path / "local"))
    gateway = GatewayProcess(tmp_path / "unused", config=config)
    gateway.start()  # the store is not there: it starts anyway
    try:
        log = gateway.log_path.read_text()
        assert f"backend 'remote' ({what})" in log and "is not answering" in log and "starting without it" in log, log
        assert f"check the {setting} setting if it stays so" in log, log  # a wrong address looks the same
        client = gateway.client()
        # The local backend's buckets are served.
        client.create_bucket(Bucket="here")
        client.put_object(Bucket="here", Key="a", Body=b"local bytes")
        assert client.get_object(Bucket="here", Key="a")["Body"].read() == b"local bytes"
        # The remote backend's: a 503 that says why and when to retry, for reads and writes alike.
        for call in (lambda: client.create_bucket(Bucket="remote"),
                     lambda: client.put_object(Bucket="remote", Key="k", Body=b"x"),
                     lambda: client.get_object(Bucket="remote", Key="k")):
            with pytest.raises(ClientError) as failure:
                call()
            error = failure.value.response
            assert error["Error"]["Code"] == "ServiceUnavailable", error
            assert "not been reachable since the gateway started" in error["Error"]["Message"], error
            assert f"check the {setting} setting" in error["Error"]["Message"], error
            assert error["ResponseMetadata"]["HTTPHeaders"].get("retry-after"), error
        start_store()
        _wait_served(client, 30)  # retried at 2, 6, 14, 30 s after the start
        client.put_object(Bucket="remote", Key="k", Body=b"remote bytes")
        assert client.get_object(Bucket="remote", Key="k")["Body"].read() == b"remote bytes"
        assert "answers now; its buckets are served again" in gateway.log_path.read_text()
        assert client.get_object(Bucket="here", Key="a")["Body"].read() == b"local bytes"
    finally:
        gateway.stop()


def test_an_smb_server_down_at_start_gives_503_for_its_buckets_until_it_answers(tmp_path):
    smbd = Smbd(tmp_path / "smbd")  # its port is chosen, nothing listens yet
    try:
        _check_down_then_up(tmp_path, smbd.backend_options(type="smb", timeout=3, connect_timeout=2),
                            smbd.start, "smb", "server/port")
    finally:
        smbd.stop()


def test_an_s3_endpoint_down_at_start_gives_503_for_its_buckets_until_it_answers(tmp_path):
    moto = MotoServer(tmp_path / "moto.log")
    options = {"type": "s3", "endpoint_url": moto.endpoint, "region": "us-east-1", "access_key_id": ACCESS_KEY_ID,
               "secret_access_key": SECRET_ACCESS_KEY, "bucket_prefix": "gw-", "timeout": 3, "max_attempts": 1}
    try:
        _check_down_then_up(tmp_path, options, moto.start, "s3", "endpoint_url")
    finally:
        moto.stop()


def test_a_refused_password_still_stops_the_start(tmp_path):
    """Only what passes by itself is waited for: a wrong setting is said at once, as before."""
    with Smbd.private() as smbd:
        options = smbd.backend_options(type="smb", password="not-the-password")
        config = _two_backends(_toml_table(options)).replace("{root}", str(tmp_path / "local"))
        gateway = GatewayProcess(tmp_path / "unused", config=config)
        with pytest.raises(RuntimeError):
            gateway.start()
        log = gateway.log_path.read_text()
        assert "backend 'remote' (smb): cannot use SMB server" in log and "check the user/password setting" in log, log
        line = next(line for line in log.splitlines() if "cannot use SMB server" in line)
        assert line.count("backend 'remote' (smb)") == 1, line  # said once, not again for the cause
        assert gateway.process.poll() == 2, log


@pytest.mark.parametrize("status, code, passes", [
    (503, "ServiceUnavailable", True), (500, "InternalError", True), (503, "SlowDown", False),
    (429, "TooManyRequests", True), (400, "RequestTimeout", True), (502, "", True),
    (403, "AccessDenied", False), (403, "SignatureDoesNotMatch", False), (403, "RequestTimeTooSkewed", False),
])
def test_s3_answers_that_pass_are_told_from_refusals(status, code, passes):
    """What an S3 backend's start() waits for (BackendUnreachable) and what stops it: a store that is not
    serving now passes; refused credentials or a clock that is off do not (errors.SlowDown is its own 503)."""
    from botocore.exceptions import ClientError as BotoClientError

    from gateway import errors
    from gateway_plugins.s3_errors import translate

    exc = BotoClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                          "HeadBucket")
    error = translate(exc, "backend 'r' (s3): check bucket", "b")
    assert isinstance(error, errors.BackendUnreachable) is passes, (type(error), error)
    assert error.status == 503, error


def test_a_store_that_cannot_be_connected_to_passes():
    from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

    from gateway import errors
    from gateway_plugins.s3_errors import translate

    for exc in (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
                ReadTimeoutError(endpoint_url="http://127.0.0.1:1")):
        assert isinstance(translate(exc, "backend 'r' (s3): check bucket", "b"), errors.BackendUnreachable), exc


def test_every_call_on_a_pending_backend_is_a_503_that_says_why():
    """The stand-in answers every coroutine of the Backend contract (a new one must be added to it)."""
    import asyncio
    import inspect

    from gateway import errors
    from gateway.backend import Backend
    from gateway.services.pending import PendingBackend
    from gateway_plugins.memory import MemoryBackend

    stand_in = PendingBackend(MemoryBackend("remote"), "backend 'remote' (x): not answering")
    calls = [name for name, member in inspect.getmembers(Backend, inspect.iscoroutinefunction)
             if not name.startswith("_") and name not in ("start", "close")]
    assert len(calls) > 20, calls
    for name in calls:
        parameters = list(inspect.signature(getattr(Backend, name)).parameters)[1:]
        with pytest.raises(errors.BackendUnavailable, match="not answering.*not been reachable since") as failure:
            asyncio.run(getattr(stand_in, name)(*["x"] * len(parameters)))
        assert failure.value.status == 503, name
