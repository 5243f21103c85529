"""Shared fixtures: real gateway processes on free loopback ports."""

from __future__ import annotations

import os
import tempfile

import pytest

from gateway.testing.server import GatewayProcess


@pytest.fixture(scope="session", autouse=True)
def _temp_files_under_pytest(tmp_path_factory):
    """The temp files of the tests and of the processes they start (gateway logs and configs, smbd
    and moto directories, mount caches) go under pytest's own temp dir instead of piling up in /tmp
    (a full run left some 1,600 files there): removed after a green run, kept after a failed one
    (tmp_path_retention_policy in pyproject.toml)."""
    base = tmp_path_factory.getbasetemp() / "tmp"
    base.mkdir(exist_ok=True)
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = tempfile.tempdir = str(base)
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[0]
        tempfile.tempdir = saved[1]


@pytest.fixture(scope="session")
def gateway(tmp_path_factory):
    """One gateway on local storage for the whole session; tests use their own buckets."""
    with GatewayProcess(tmp_path_factory.mktemp("gw") / "cv-storage") as gw:
        yield gw


@pytest.fixture
def s3(gateway):
    return gateway.client()


@pytest.fixture
def bucket(s3, request):
    """A fresh bucket named after the test."""
    import hashlib
    import re

    # Parametrized ids can share a long prefix: a hash of the full id keeps names unique.
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:8]
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + digest
    s3.create_bucket(Bucket=name)
    return name
