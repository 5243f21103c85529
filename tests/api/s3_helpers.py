"""Helpers for the S3 API tests: botocore-signed raw HTTP, the aws cli and rclone as subprocesses.

Raw requests are signed with botocore's own SigV4 signer (so the signature is
what a real client computes) and sent with http.client or a plain socket, so a
test controls every header and byte the gateway sees.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote, unquote

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from gateway.testing.rclone import REMOTE, rclone_executable, run_rclone  # noqa: F401 - the tests import them here

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
MAKE_TEST_DEPS = "run `make test-deps` (it installs the aws cli and rclone the tests start)"


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    header_list: list[tuple[str, str]] = field(default_factory=list)

    def xml(self) -> ET.Element:
        return ET.fromstring(self.body)

    @property
    def code(self) -> str | None:
        """The <Code> of an S3 error body."""
        return self.xml().findtext("Code")


class _UnsignedPayloadConfig:
    """Stands in for a botocore Config: only the setting S3SigV4Auth looks at."""

    s3: ClassVar[dict] = {"payload_signing_enabled": False}


def sign(gateway, method: str, path: str, body: bytes = b"", headers: dict | None = None,
         query: str = "", unsigned_payload: bool = False) -> tuple[str, dict[str, str]]:
    """Sign a request with botocore; return (path?query, headers to send).

    ``path`` is the already percent-encoded path (``/bucket/key``). With
    ``unsigned_payload`` the body is not covered by the signature
    (``x-amz-content-sha256: UNSIGNED-PAYLOAD``), as boto3 does over https.
    """
    target = path + (f"?{query}" if query else "")
    request = AWSRequest(method=method, url=gateway.endpoint + target, data=body, headers=dict(headers or {}))
    if unsigned_payload:
        request.context["client_config"] = _UnsignedPayloadConfig()
    S3SigV4Auth(Credentials(gateway.access_key, gateway.secret_key), "s3", "us-east-1").add_auth(request)
    return target, dict(request.headers.items())


def raw_request(gateway, method: str, path: str, body: bytes = b"", headers: dict | None = None,
                query: str = "", unsigned_payload: bool = False, signed: bool = True) -> RawResponse:
    """Send one botocore-signed request with http.client and read the whole response."""
    if signed:
        target, sent = sign(gateway, method, path, body, headers, query, unsigned_payload)
    else:
        target, sent = path + (f"?{query}" if query else ""), dict(headers or {})
    conn = http.client.HTTPConnection(gateway.host, gateway.port, timeout=30)
    try:
        conn.request(method, target, body=body, headers=sent)
        response = conn.getresponse()
        data = response.read()
        pairs = [(k.lower(), v) for k, v in response.getheaders()]
        return RawResponse(response.status, dict(pairs), data, pairs)
    finally:
        conn.close()


def key_path(bucket: str, key: str) -> str:
    """The percent-encoded path of an object, as botocore would send it."""
    return f"/{bucket}/{quote(key, safe='/~')}"


def send_truncated_body(gateway, bucket: str, key: str, declared: int, sent: bytes,
                        before_close=None) -> bytes:
    """PUT with Content-Length ``declared`` but only ``sent`` bytes, then close; return what came back.

    ``before_close()``, if given, runs after the bytes were sent and before the client gives up.
    """
    target, headers = sign(gateway, "PUT", key_path(bucket, key), headers={"Content-Length": str(declared)},
                           unsigned_payload=True)
    lines = [f"PUT {target} HTTP/1.1", f"Host: {gateway.host}:{gateway.port}"]
    lines += [f"{name}: {value}" for name, value in headers.items() if name.lower() != "host"]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    with socket.create_connection((gateway.host, gateway.port), timeout=10) as sock:
        sock.sendall(head + sent)
        if before_close is not None:
            before_close()
        sock.shutdown(socket.SHUT_WR)  # the client gives up: no more body will come
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return received


def assert_s3_error(response, status: int, code: str) -> None:
    """``response`` (a raw_request answer) is an S3 XML error document with this status and code."""
    assert response.status == status, (response.status, response.body)
    assert response.headers["content-type"] == "application/xml"
    root = response.xml()
    assert root.tag == "Error"
    assert root.findtext("Code") == code, response.body
    assert root.findtext("Message")
    assert root.findtext("Resource") is not None
    assert root.findtext("RequestId") == response.headers["x-amz-request-id"]
    assert root.findtext("HostId"), "the error names the node that answered"
    assert root.findtext("HostId") == unquote(response.headers["x-amz-id-2"])
    assert int(response.headers["content-length"]) == len(response.body)


def error_code(exc) -> str:
    """The S3 error code of a botocore ClientError."""
    return exc.response["Error"]["Code"]


def status_of(exc) -> int:
    return exc.response["ResponseMetadata"]["HTTPStatusCode"]


# -- the aws cli ------------------------------------------------------------------------------------

def aws_executable() -> str:
    candidate = Path(sys.executable).with_name("aws")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("aws")
    assert found, f"the aws cli is not installed: {MAKE_TEST_DEPS}"
    return found


def run_aws(gateway, *args: str, config_dir: Path | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``aws <args> --endpoint-url <gateway>`` with the gateway's credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=gateway.access_key, AWS_SECRET_ACCESS_KEY=gateway.secret_key,
               AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true", AWS_MAX_ATTEMPTS="1",
               AWS_RETRY_MODE="standard")
    if config_dir is not None:
        env["AWS_CONFIG_FILE"] = str(config_dir / "config")
        env["AWS_SHARED_CREDENTIALS_FILE"] = str(config_dir / "credentials")
    else:
        env["AWS_CONFIG_FILE"] = os.devnull
        env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    cmd = [aws_executable(), *args, "--endpoint-url", gateway.endpoint]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


# -- rclone: gateway/testing/rclone.py (the cluster tests run it too) ---------------------------------



# -- fixtures -----------------------------------------------------------------------------------------

@pytest.fixture(name="bucket")
def unique_bucket(s3, request):
    """A fresh bucket named after the test, unique also for parametrized tests
    (the shared conftest's name is cut at 50 characters, so long parametrized ids collide)."""
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:8]
    name = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower())[:40].strip("-") + "-" + digest
    s3.create_bucket(Bucket=name)
    return name


# Backends the protocol tests run against: every S3 behaviour must hold whatever stores the bytes.
BACKEND_CONFIGS = {
    "local": None,
    "memory": 'default_backend = "mem"\n\n[backends.mem]\ntype = "memory"\n',
}


@pytest.fixture(name="gateway", scope="session", params=sorted(BACKEND_CONFIGS))
def gateway_on_each_backend(request, tmp_path_factory):
    """A gateway per backend (overrides the conftest's local-only one in the modules that import it)."""
    from gateway.testing.server import GatewayProcess

    data_dir = tmp_path_factory.mktemp(f"gw-{request.param}") / "cv-storage"
    with GatewayProcess(data_dir, config=BACKEND_CONFIGS[request.param]) as gw:
        yield gw
