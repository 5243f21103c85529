"""Fixtures for backend plugin tests: a real Samba smbd and a real moto S3 server, on loopback ports.

Nothing system-wide is touched: smbd gets its own config, passdb
(``tdbsam:<dir>/passdb.tdb``), lock/state/cache/pid directories and share,
all in a temp dir; the moto server is a separate process on a free port.
The start/stop code lives in gateway/testing/samba.py and gateway/testing/moto.py
(the benchmarks use it too).
"""

from __future__ import annotations

import uuid

import pytest

from gateway.testing.moto import MotoServer
from gateway.testing.samba import Smbd


@pytest.fixture(scope="session")
def smbd():
    """One private smbd for the session (tests use their own path inside the share)."""
    with Smbd.private() as server:
        yield server


@pytest.fixture
def smb_path():
    """A fresh directory inside the share for one test."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def moto(tmp_path_factory):
    """A moto S3 server process on a free loopback port (a process: see gateway/testing/moto.py)."""
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_server(moto):
    """The moto server's endpoint URL."""
    return moto.endpoint


@pytest.fixture
def moto_options(moto):
    """``moto_options(**extra)``: s3 backend options pointing at the moto server."""
    return moto.backend_options
