"""Relay benchmark: GET of a 32 KiB object relayed from a peer vs a local hit, and through a proxy node.

Both storing nodes and the proxy share core 0, wrk runs on core 1 (2-core
machine): a relayed GET costs two request handlings on one core, so 0.5 of
the local-hit rate is the ideal and 0.4 the target (issue 5).

Standalone: ``python -m benchmarks.cluster_bench``; ``benchmarks/__main__.py``
calls :func:`run`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from gateway.cluster import tls
from gateway.testing.server import GatewayProcess, free_port

from .procs import CLIENT_CORE, SERVER_CORE, cpu_seconds, pinned

SIZE = 32 * 1024
DURATION = int(os.environ.get("CLUSTER_BENCH_SECONDS", "5"))  # seconds per wrk round
ROUNDS = int(os.environ.get("CLUSTER_BENCH_ROUNDS", "3"))  # interleaved rounds of every read
CONNECTIONS = 32
SECRET = "cluster-bench-secret-0123456789abcdef"


def node_args(role: str, registry: str, tls: tuple[Path, str] | None = None) -> list[str]:
    """``gateway serve`` arguments of a benchmark node (cluster_instructions.py starts the same).
    Plain HTTP between the nodes, or with ``tls`` (the directory of ``gateway cluster tls init``
    and the node's name in it) HTTPS to clients and between the nodes, as in production."""
    if tls is None:
        security = ["--insecure-peers"]
    else:
        directory, name = tls
        security = ["--tls-cert", str(directory / f"{name}.pem"), "--tls-key", str(directory / f"{name}-key.pem"),
                    "--tls-ca", str(directory / "ca.pem")]
    return ["--role", role, "--registry", registry, *security, "--allow-anonymous", "--no-access-log",
            "--log-level", "warning"]


class PinnedGateway(GatewayProcess):
    """A gateway on the servers' core (and at the benchmarks' priority as root: procs.pinned)."""

    def command(self) -> list[str]:
        return pinned(SERVER_CORE, super().command())


def _wrk(url: str, seconds: int, nodes: dict | None = None, cpu: dict | None = None) -> float:
    """Requests per second wrk measured for ``url`` (on the client core). With ``nodes`` (name ->
    process id) and ``cpu``, each node's CPU per request in µs goes into ``cpu[name]``: where a
    ratio's time went (docs/cluster.md, "Benchmark"), steadier from run to run than the rates."""
    before = {name: cpu_seconds(pid) for name, pid in (nodes or {}).items()}
    out = subprocess.run(pinned(CLIENT_CORE, ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", url]),
                         capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed: {out.stderr or out.stdout}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    if errors:
        raise RuntimeError(f"wrk saw {errors.group(1)} error responses from {url}:\n{out.stdout}")
    if nodes and cpu is not None:
        requests = int(re.search(r"(\d+) requests in", out.stdout).group(1))
        for name, pid in nodes.items():
            cpu[name] = round((cpu_seconds(pid) - before[name]) / max(requests, 1) * 1e6, 1)
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out.stdout).group(1))


class ReferenceRelay:
    """A reference relay (``module``: benchmarks.pipe_proxy or benchmarks.http_relay, with ``args``)
    on core 0 in front of ``target`` (an endpoint URL)."""

    def __init__(self, module: str, target: str, args: tuple[str, ...] = ()):
        self.module, self.args = module, args
        self.target_port = urlsplit(target).port
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ReferenceRelay":
        # Under the gateway's own CPU scheduling policy (cpu_scheduling, default batch): like for like.
        command = ["chrt", "--batch", "0", sys.executable, "-m", self.module, str(self.port), str(self.target_port),
                   *self.args]
        self.process = subprocess.Popen(pinned(SERVER_CORE, command), stdout=subprocess.PIPE, text=True)
        if self.process.stdout.readline().strip() != "ready":  # it prints "ready" once listening
            self.__exit__()
            raise RuntimeError(f"{self.module} did not start")
        return self

    def __exit__(self, *exc) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


def _wait_all_known(nodes, count: int, timeout: float = 10.0) -> None:
    """Until every node lists ``count`` members (a starting node announces itself; the others reload)."""
    deadline = time.monotonic() + timeout
    contexts = [node.ssl_context() for node in nodes]
    while time.monotonic() < deadline:
        views = []
        for node, context in zip(nodes, contexts):
            with urllib.request.urlopen(node.endpoint + "/_admin/cluster", timeout=5, context=context) as response:
                views.append(len(json.loads(response.read())["nodes"]))
        if min(views) >= count:
            return
        time.sleep(0.1)
    raise RuntimeError(f"the benchmark nodes did not all see each other within {timeout}s: {views}")


def _local_of(read: str) -> str:
    """The local hit ``read`` is compared with: its own pair's (the HTTPS pair's is HTTPS too)."""
    return "tls_local_hit" if read.startswith("tls_") else "local_hit"


def run(results: dict, rounds: int = ROUNDS, seconds: int = DURATION) -> dict:
    """Measure and add ``results["cluster"]``; return ``results``.

    Every read is measured ``rounds`` times, the reads interleaved (local hit, relayed, proxy, the
    reference relays, then again), and each ratio is the median of its rounds' ratios: the rates
    drift with the host's load over the minute a run takes, and each round's ratio compares two
    rounds taken seconds apart, which the drift moves together."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: run `make test-deps` (Debian package wrk)")
    base = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    env = {"GATEWAY_CLUSTER_SECRET": SECRET, "GATEWAY_HEARTBEAT_INTERVAL": "1"}
    tls_dir = base / "tls"
    tls.tls_init(tls_dir, {"ta": ["127.0.0.1"], "tb": ["127.0.0.1"]})
    nodes = {}
    try:
        with contextlib.ExitStack() as stack:
            # Two redundant nodes (no primary, so nothing re-places the objects) and a proxy; and a
            # second pair, in a cluster of its own, with HTTPS to clients and between them.
            for name, role, cluster, security in (("a", "redundant", "plain", None), ("b", "redundant", "plain", None),
                                                  ("proxy", "proxy", "plain", None),
                                                  ("ta", "redundant", "tls", (tls_dir, "ta")),
                                                  ("tb", "redundant", "tls", (tls_dir, "tb"))):
                https = dict(scheme="https", ca=tls_dir / "ca.pem") if security else {}
                args = node_args(role, f"sqlite:///{base}/{cluster}.db", security)
                nodes[name] = PinnedGateway(base / name, args=args, env={**env, "GATEWAY_NODE_ID": name}, **https)
                nodes[name].start()
            _wait_all_known([nodes[n] for n in ("a", "b", "proxy")], 3)
            _wait_all_known([nodes["ta"], nodes["tb"]], 2)
            body = os.urandom(SIZE)
            for holder, other in (("a", "b"), ("ta", "tb")):
                nodes[holder].client().create_bucket(Bucket="bench")
                nodes[holder].client().put_object(Bucket="bench", Key="local.bin", Body=body)
                nodes[other].client().put_object(Bucket="bench", Key="remote.bin", Body=body)
            urls = {
                "local_hit": f"{nodes['a'].endpoint}/bench/local.bin",
                "relayed": f"{nodes['a'].endpoint}/bench/remote.bin",
                "proxy": f"{nodes['proxy'].endpoint}/bench/local.bin",
                "tls_local_hit": f"{nodes['ta'].endpoint}/bench/local.bin",
                "tls_relayed": f"{nodes['ta'].endpoint}/bench/remote.bin",
            }
            # Node B's local hit of the relayed object through reference relays on the same core, for
            # reading the relayed ratio against: one that only pipes bytes (the ceiling of any relay
            # here) and one that parses HTTP both ways and does nothing else (of any relay in Python),
            # also pipelined on one upstream connection (what pipelining the peer connection gives).
            for name, module, args in (("pipe_relay", "benchmarks.pipe_proxy", ()),
                                       ("http_relay", "benchmarks.http_relay", ()),
                                       ("pipelined_http_relay", "benchmarks.http_relay", ("--pipelined",))):
                relay = stack.enter_context(ReferenceRelay(module, nodes["b"].endpoint, args))
                urls[name] = f"{relay.endpoint}/bench/remote.bin"
            for url in urls.values():  # warm the page cache and the location caches
                subprocess.run(["curl", "-sf", "--cacert", str(tls_dir / "ca.pem"), "-o", "/dev/null", url],
                               check=True, timeout=30)
            pids = {name: node.process.pid for name, node in nodes.items()}
            busy = {"local_hit": ("a",), "relayed": ("a", "b"), "proxy": ("proxy", "a"),  # the nodes a round uses
                    "tls_local_hit": ("ta",), "tls_relayed": ("ta", "tb")}
            measured = []  # one {read: (rate, cpu)} per round
            for _ in range(rounds):
                this_round = {}
                for name, url in urls.items():
                    cpu: dict[str, float] = {}
                    rate = _wrk(url, seconds, {n: pids[n] for n in busy.get(name, ())}, cpu)
                    this_round[name] = (rate, cpu)
                measured.append(this_round)
        rates = {name: statistics.median(r[name][0] for r in measured) for name in urls}
        cpu_us = {name: {node: statistics.median(r[name][1][node] for r in measured) for node in busy[name]}
                  for name in busy}
        # Each read's rate against its own pair's local hit in the same round.
        per_round = {name: [r[name][0] / r[_local_of(name)][0] for r in measured]
                     for name in urls if not name.endswith("local_hit")}
        results["cluster"] = {
            "object_size": SIZE, "connections": CONNECTIONS, "seconds": seconds, "rounds": rounds,
            "requests_per_second": rates,  # medians over the rounds
            **{f"{name}_vs_local": round(statistics.median(ratios), 3) for name, ratios in per_round.items()},
            **{f"{name}_vs_local_per_round": [round(ratio, 3) for ratio in per_round[name]]
               for name in ("relayed", "tls_relayed")},
            # CPU µs per request of each node a round uses (a, ta: the node asked; b, tb: the relayed
            # object's holder).
            "cpu_us_per_request": cpu_us,
            "target_relayed_vs_local": 0.4,
        }
        return results
    finally:
        for node in nodes.values():
            node.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(run({}), indent=2))
    sys.exit(0)
