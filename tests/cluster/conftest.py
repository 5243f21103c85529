"""Cluster fixtures: real gateway processes on loopback ports, a real SQLite registry or a real 3-member etcd."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gateway.cluster.registry import Registry
from gateway.testing.server import GatewayProcess, free_port

SECRET = "cluster-test-secret-0123456789abcdef"

# The nodes of start_cluster: 1 primary, 2 redundant, 1 proxy.
NODES = ("p1", "r1", "r2", "x1")


def clients(cluster, names=NODES) -> dict:
    """A boto3 client per node."""
    return {name: cluster[name].client() for name in names}


def error_of(call):
    """The botocore ClientError that ``call()`` raises (fails the test when it raises none)."""
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as info:
        call()
    return info.value
# Short intervals so membership changes show within a second; the peer timeout stays
# well above a loaded 2-core machine's worst answer time.
NODE_ENV = {"GATEWAY_CLUSTER_SECRET": SECRET, "GATEWAY_HEARTBEAT_INTERVAL": "0.5",
            "GATEWAY_PEER_TIMEOUT": "3", "GATEWAY_REGISTRY_RELOAD_INTERVAL": "2",
            "GATEWAY_MIN_PART_SIZE": "1024"}  # multipart tests with small parts


class NodesOnly(Registry):
    """A registry plugin that keeps the node list and nothing else (no retirements, no locks)."""

    async def register(self, node_id, role, address):
        raise AssertionError("not used")

    async def heartbeat(self, node_id, info):
        pass

    async def nodes(self):
        return []

    async def remove(self, node_id):
        return False


class ClusterNodes:
    """The nodes of one test cluster by name; start, kill and restart them."""

    def __init__(self, base: Path, registry: str):
        self.base = base
        self.registry = registry
        self.nodes: dict[str, GatewayProcess] = {}

    def add(self, name: str, role: str, extra_env: dict | None = None, config: str | None = None) -> GatewayProcess:
        return self.add_many([(name, role)], extra_env, config)[0]

    def add_many(self, specs: list[tuple[str, str]], extra_env: dict | None = None,
                 config: str | None = None) -> list[GatewayProcess]:
        """Start several nodes at once (they register in any order), then wait until all answer."""
        started = []
        for name, role in specs:
            node = self.new_node(name, role, extra_env, config)
            self.nodes[name] = node
            with open(node.log_path, "ab") as log:
                node.process = subprocess.Popen(node.command(), stdout=log, stderr=subprocess.STDOUT,
                                                env={**os.environ, **node.env})
            started.append(node)
        for node in started:
            node.wait_ready()
        return started

    def new_node(self, name: str, role: str, extra_env: dict | None, config: str | None) -> GatewayProcess:
        """The (not yet started) GatewayProcess of one node: plain HTTP between nodes."""
        return GatewayProcess(self.base / name / "cv-storage", config=config,
                              args=["--role", role, "--registry", self.registry, "--insecure-peers"],
                              env={**NODE_ENV, "GATEWAY_NODE_ID": name, **(extra_env or {})})

    def __getitem__(self, name: str) -> GatewayProcess:
        return self.nodes[name]

    def restart(self, name: str) -> GatewayProcess:
        node = self.nodes[name]
        node.start()
        return node

    def admin(self, name: str) -> dict:
        with urllib.request.urlopen(self.nodes[name].endpoint + "/_admin/cluster", timeout=5) as response:
            return json.loads(response.read())

    def status(self, registry_may_be_gone: bool = False) -> list[dict]:
        """`cluster status --json`. ``registry_may_be_gone``: a registry file a test deleted, which the
        nodes have not created again yet, reads as no node listed (the command refuses to create one);
        so does the moment after a node created it again and before the first one registered."""
        out = subprocess.run([sys.executable, "-m", "gateway", "cluster", "status", "--json",
                              "--registry", self.registry], capture_output=True, text=True, timeout=30)
        if registry_may_be_gone and out.returncode == 1 and (
                "there is no registry at" in out.stderr or "no nodes are registered in" in out.stderr):
            return []
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def wait_known(self, count: int, timeout: float = 10.0) -> None:
        """Until every running node's snapshot lists ``count`` nodes (they reload on an interval)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            views = [len(self.admin(n)["nodes"]) for n, p in self.nodes.items() if p.process.poll() is None]
            if all(v >= count for v in views):
                return
            time.sleep(0.1)
        raise AssertionError(f"nodes did not all see {count} members within {timeout}s: {views}")

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


@contextmanager
def primary_and_redundant(base: Path) -> Iterator[ClusterNodes]:
    """p1 and r1 on a SQLite registry, known to each other; stopped at the end."""
    nodes = ClusterNodes(base, f"sqlite:///{base}/registry.db")
    try:
        nodes.add("p1", "primary")
        nodes.add("r1", "redundant")
        nodes.wait_known(2)
        yield nodes
    finally:
        nodes.stop()


def start_cluster(base: Path, registry: str) -> ClusterNodes:
    """1 primary + 2 redundant + 1 proxy."""
    nodes = ClusterNodes(base, registry)
    try:
        nodes.add("p1", "primary")  # first: install order 1
        nodes.add_many([("r1", "redundant"), ("r2", "redundant"), ("x1", "proxy")])
        nodes.wait_known(4)
    except BaseException:
        nodes.stop()
        raise
    return nodes


@pytest.fixture(scope="module")
def sqlite_cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("cluster-sqlite")
    nodes = start_cluster(base, f"sqlite:///{base}/registry.db")
    yield nodes
    nodes.stop()


class EtcdCluster:
    """Three etcd members on loopback ports with temp data dirs."""

    def __init__(self, base: Path):
        self.base = base
        self.processes: list[subprocess.Popen] = []
        self.client_ports = [free_port() for _ in range(3)]
        self.peer_ports = [free_port() for _ in range(3)]

    @property
    def url(self) -> str:
        return "etcd://" + ",".join(f"127.0.0.1:{p}" for p in self.client_ports)

    def start(self) -> EtcdCluster:
        binary = shutil.which("etcd")
        if binary is None:
            pytest.fail("etcd is not installed: run `make test-deps` (Debian package etcd-server)")
        initial = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, p in enumerate(self.peer_ports))
        for i in range(3):
            log = open(self.base / f"etcd-m{i}.log", "wb")
            self.processes.append(subprocess.Popen([
                binary, "--name", f"m{i}", "--data-dir", str(self.base / f"m{i}"),
                "--listen-client-urls", f"http://127.0.0.1:{self.client_ports[i]}",
                "--advertise-client-urls", f"http://127.0.0.1:{self.client_ports[i]}",
                "--listen-peer-urls", f"http://127.0.0.1:{self.peer_ports[i]}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_ports[i]}",
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", f"cvgw-{self.client_ports[0]}",
            ], stdout=log, stderr=subprocess.STDOUT))
            log.close()
        self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.client_ports[0]}/health", timeout=1) as r:
                    if json.loads(r.read()).get("health") == "true":
                        return
            except OSError:
                pass
            time.sleep(0.2)
        logs = "\n".join((self.base / f"etcd-m{i}.log").read_text()[-2000:] for i in range(3))
        raise TimeoutError(f"etcd cluster not healthy within {timeout}s:\n{logs}")

    def stop(self) -> None:
        # The data dirs are thrown away: no need to wait for a graceful etcd shutdown.
        for process in self.processes:
            process.kill()
        for process in self.processes:
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd")).start()
    yield cluster
    cluster.stop()


def repair_command(cluster, node: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`gateway cluster repair` with the settings ``node`` runs with (docs/cluster.md, "Repair")."""
    gateway = cluster[node]
    command = [sys.executable, "-m", "gateway", "cluster", "repair", "--port", str(gateway.port),
               "--data-dir", str(gateway.data_dir), *gateway.args, *args]
    environment = {**os.environ, **gateway.env, **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment)


def wait_for(condition, timeout: float, what: str):
    """Poll ``condition`` every 0.2 s until it returns something true (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout}s")
