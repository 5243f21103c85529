"""Local reads through a real mount (`gateway mount --local-socket`): large objects the gateway on
this host stores are read from their files, the same bytes as through HTTP; anything else (small
files, a socket that does not answer) still reads through HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest

from gateway.fuse.fstab import mount_args
from gateway.testing.server import GatewayProcess

from fuse_helpers import log_lines, requests_in_log

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def local_gw(tmp_path_factory):
    base = tmp_path_factory.mktemp("local-reads")
    config = f'[backends.local]\ntype = "local"\nroot = "{base / "cv-storage"}"\nfsync = false\n'
    with GatewayProcess(base / "cv-storage", config=config,
                        args=["--access-log", "--local-socket", str(base / "gw.sock")]) as gw:
        gw.socket_path = str(base / "gw.sock")
        gw.client().create_bucket(Bucket="local-reads")
        yield gw


def _stats(mount) -> dict:
    return json.loads((mount.path / ".cv-gateway-stats").read_text())["requests"]


def test_a_large_object_is_read_from_its_file(local_gw, mount_factory):
    body = os.urandom(5 * MiB + 123)
    local_gw.client().put_object(Bucket="local-reads", Key="big/one.bin", Body=body)
    mount = mount_factory(["--local-socket", local_gw.socket_path], gateway=local_gw)
    path = mount.path / "local-reads" / "big" / "one.bin"
    assert path.stat().st_size == len(body)
    since = log_lines(local_gw)
    out = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.split()[0] == hashlib.sha256(body).hexdigest()
    with open(path, "rb") as f:  # random offsets, and past the end
        f.seek(4 * MiB + 5)
        assert f.read(1000) == body[4 * MiB + 5: 4 * MiB + 1005]
        f.seek(len(body) - 10)
        assert f.read(100) == body[-10:]
    stats = _stats(mount)
    assert stats.get("local_reads", 0) >= 1, stats
    gets = [target for method, target in requests_in_log(local_gw, since) if method == "GET"]
    assert not any(target.startswith("/local-reads/big/one.bin") for target in gets), gets


def test_small_files_and_other_nodes_objects_still_use_http(local_gw, mount_factory):
    local_gw.client().put_object(Bucket="local-reads", Key="small.txt", Body=b"tiny" * 100)
    mount = mount_factory(["--local-socket", local_gw.socket_path], gateway=local_gw)
    assert (mount.path / "local-reads" / "small.txt").read_bytes() == b"tiny" * 100
    stats = _stats(mount)
    assert stats.get("local_reads", 0) == 0 and stats.get("local_read_failures", 0) == 0, stats


def test_an_open_file_keeps_reading_the_version_it_opened(local_gw, mount_factory):
    s3 = local_gw.client()
    old, new = os.urandom(3 * MiB), os.urandom(3 * MiB)
    s3.put_object(Bucket="local-reads", Key="replaced.bin", Body=old)
    mount = mount_factory(["--local-socket", local_gw.socket_path, "--attr-ttl", "0", "--dir-ttl", "0"],
                          gateway=local_gw)
    path = mount.path / "local-reads" / "replaced.bin"
    with open(path, "rb", buffering=0) as f:
        first = f.read(MiB)
        s3.put_object(Bucket="local-reads", Key="replaced.bin", Body=new)
        rest = f.read()
    # One version from start to end, never a mix (the page cache may hold the first MiB either way).
    assert first + rest == old
    assert path.read_bytes() == new


def test_a_socket_that_does_not_answer_falls_back_to_http(local_gw, mount_factory, tmp_path):
    body = os.urandom(2 * MiB)
    local_gw.client().put_object(Bucket="local-reads", Key="fallback.bin", Body=body)
    mount = mount_factory(["--local-socket", str(tmp_path / "nobody.sock")], gateway=local_gw)
    assert (mount.path / "local-reads" / "fallback.bin").read_bytes() == body
    stats = _stats(mount)
    assert stats.get("local_read_failures", 0) >= 1 and stats.get("local_reads", 0) == 0, stats
    assert "local reads through" in mount.log() and "reading through HTTP instead" in mount.log()


def test_fstab_passes_local_socket():
    args, _, _ = mount_args(["http://127.0.0.1:8086", "/mnt/cv", "-o", "local_socket=/run/cv-gateway/local.sock"])
    assert args[args.index("--local-socket") + 1] == "/run/cv-gateway/local.sock"


def test_a_mount_on_a_cluster_node_reads_its_objects_locally_and_the_others_through_the_relay(tmp_path,
                                                                                              mount_factory):
    """The mount on every node (issue 6): objects that node stores come from their files, objects on
    other nodes through HTTP (the gateway relays them); both read right."""
    from cluster.conftest import ClusterNodes

    nodes = ClusterNodes(tmp_path / "cluster", f"sqlite:///{tmp_path}/registry.db")
    try:
        nodes.add("p1", "primary")
        nodes.add("r1", "redundant", extra_env={"GATEWAY_LOCAL_SOCKET": str(tmp_path / "r1.sock")})
        nodes.add("r2", "redundant")
        nodes.wait_known(3)
        nodes["r1"].client().create_bucket(Bucket="cams")
        here, there = os.urandom(2 * MiB), os.urandom(2 * MiB)
        nodes["r1"].client().put_object(Bucket="cams", Key="here.bin", Body=here)  # a redundant node keeps its PUTs
        nodes["r2"].client().put_object(Bucket="cams", Key="there.bin", Body=there)
        mount = mount_factory(["--local-socket", str(tmp_path / "r1.sock")], gateway=nodes["r1"])
        assert (mount.path / "cams" / "here.bin").read_bytes() == here
        assert (mount.path / "cams" / "there.bin").read_bytes() == there
        stats = _stats(mount)
        assert (stats.get("local_reads"), stats.get("local_read_misses")) == (1, 1), stats
    finally:
        nodes.stop()
