"""FUSE fixtures: a gateway with an access log, and real mounts that are always unmounted."""

from __future__ import annotations

import itertools
import re
from contextlib import ExitStack

import pytest

from gateway.fuse.testing import MountProcess, fuse_available
from gateway.testing.server import GatewayProcess

_names = itertools.count()


@pytest.fixture(scope="session", autouse=True)
def _require_fuse():
    problem = fuse_available()
    if problem:
        pytest.fail(f"FUSE tests need a working FUSE: {problem}. Run `make test-deps`.", pytrace=False)


@pytest.fixture(scope="module")
def fuse_gw(tmp_path_factory):
    """A gateway of this test module, logging every request (to count LIST/GET/HEAD)."""
    data_dir = tmp_path_factory.mktemp("fusegw") / "cv-storage"
    # No fsync per object: these tests are about the mount, and fsync makes creating thousands of objects slow.
    config = f'[backends.local]\ntype = "local"\nroot = "{data_dir}"\nfsync = false\n'
    with GatewayProcess(data_dir, args=["--access-log"], config=config) as gw:
        yield gw


@pytest.fixture(scope="module")
def mnt(fuse_gw, tmp_path_factory):
    """One mount with default options, shared by the module's tests (each uses its own bucket)."""
    with MountProcess(fuse_gw, tmp_path_factory.mktemp("mnt") / "m") as mount:
        yield mount


@pytest.fixture
def mount_factory(fuse_gw, tmp_path):
    """Start extra mounts with their own options; all are unmounted when the test ends, pass or fail."""
    with ExitStack() as stack:
        def start(args=None, gateway=None, **kwargs):
            mount = MountProcess(gateway or fuse_gw, tmp_path / f"m{next(_names)}", args, **kwargs)
            stack.callback(mount.stop)
            return mount.start()

        yield start


@pytest.fixture
def bucket(fuse_gw, request):
    """A fresh bucket named after the test."""
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + f"-{next(_names)}"
    fuse_gw.client().create_bucket(Bucket=name)
    return name
