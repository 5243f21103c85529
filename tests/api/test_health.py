"""/healthz (liveness) and /readyz (storage writable, plugins loaded)."""

from __future__ import annotations

import json
import shutil
import socket
import urllib.error
import urllib.request

import pytest
from botocore.exceptions import ClientError

from gateway.testing.server import GatewayProcess


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_healthz_needs_no_credentials(gateway):
    status, body = _get(gateway.endpoint + "/healthz")
    assert status == 200
    assert body["status"] == "ok"
    assert body["version"]


def test_readyz_reports_backends_and_plugins(gateway):
    status, body = _get(gateway.endpoint + "/readyz")
    assert status == 200
    assert body["ready"] is True
    assert body["backends"] == {"local": "ok"}
    assert "local" in body["plugins"]


def test_readyz_fails_when_storage_is_not_writable(tmp_path):
    with GatewayProcess(tmp_path / "cv-storage") as gw:
        tmp_dir = gw.data_dir / ".gateway" / "tmp" / socket.gethostname()
        assert tmp_dir.is_dir()
        # As root, chmod would not stop writes; a data directory gone (a disk not mounted) does. (Its
        # temp directory alone gone is made again: a copy put back without .gateway/.)
        shutil.rmtree(gw.data_dir)
        status, body = _get(gw.endpoint + "/readyz")
        assert status == 503
        assert body["ready"] is False
        assert str(gw.data_dir) in body["backends"]["local"] and "gone" in body["backends"]["local"], body
        assert _get(gw.endpoint + "/healthz")[0] == 200, "liveness does not depend on storage"
        assert not gw.data_dir.exists(), "never made again by the gateway: it may be a disk not mounted"
        gw.data_dir.mkdir()
        assert _get(gw.endpoint + "/readyz")[0] == 200
        assert tmp_dir.is_dir()


def _head(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_health_answers_head_as_health_checkers_send_it(tmp_path):
    with GatewayProcess(tmp_path / "cv-storage") as gw:
        assert _head(gw.endpoint + "/healthz") == (200, b"")
        assert _head(gw.endpoint + "/readyz") == (200, b"")
        shutil.rmtree(gw.data_dir)
        assert _head(gw.endpoint + "/readyz") == (503, b"")
        assert _head(gw.endpoint + "/healthz") == (200, b"")


def test_health_paths_are_not_buckets(gateway, s3):
    """A bucket cannot be named healthz/readyz by accident: those paths never reach the S3 API."""
    status, _ = _get(gateway.endpoint + "/healthz?list-type=2")
    assert status == 200


def test_buckets_may_start_with_the_health_paths_names(s3):
    """The health paths were matched as prefixes: a bucket named readyzone or healthzone-cams got a
    JSON 404 from the admin app. Only the exact names are the gateway's."""
    for name in ("readyzone", "healthzone-cams"):
        s3.create_bucket(Bucket=name)
        s3.put_object(Bucket=name, Key="k", Body=b"x")
        assert s3.get_object(Bucket=name, Key="k")["Body"].read() == b"x"
        assert [o["Key"] for o in s3.list_objects_v2(Bucket=name)["Contents"]] == ["k"]
    for name in ("healthz", "readyz"):
        with pytest.raises(ClientError) as info:
            s3.create_bucket(Bucket=name)
        assert info.value.response["Error"]["Code"] == "InvalidBucketName"
        assert "reserved by this gateway" in info.value.response["Error"]["Message"]
