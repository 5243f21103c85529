"""Shared fixtures: real gateway processes on free loopback ports."""

from __future__ import annotations

import pytest

from gateway.testing.server import GatewayProcess


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
