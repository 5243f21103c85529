"""Instructions per request of the relay benchmark's nodes, counted by valgrind (callgrind).

    python -m benchmarks.cluster_instructions [--connections N] [--seconds S]

The cluster benchmark's rates swing by 20-50% from one run to the next on a
shared machine, and so does the CPU time per request it reports: a change
worth 2% cannot be seen in them. The number of user-space instructions a node
executes per request does not depend on what else runs (±2% between runs
here), so this measures that, for the same three reads as cluster_bench.py:

- ``local_hit``: node A's GET of an object it holds;
- ``relayed``: node A's GET of an object node B holds (A passes it through);
- ``http_relay``: benchmarks/http_relay.py --pipelined in front of node B (the
  floor of a relay in Python: it parses HTTP both ways and does nothing else).

Each node (and the reference relay) runs under ``valgrind --tool=callgrind``
with counting switched on only during its wrk round, less what the process
executes in as long a time without requests (``idle_per_second``: heartbeats,
membership reloads, timers; under valgrind a node serves a few hundred
requests a second, so that work would otherwise weigh on each request dozens
of times more than at full speed, and three times more on a relayed read than
on a local hit). Instructions are not
time: the kernel's work (socket reads and writes) is not counted, and a
``rep movsb`` copy counts one instruction per byte (a relayed 32 KiB body
copied once in user space: ~33,000), so compare like with like: the same
read before and after a change (docs/cluster.md, "Benchmark").
Starting a gateway under valgrind takes about a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway.testing.server import GatewayProcess, free_port

from .cluster_bench import SECRET, SIZE, _wait_all_known, node_args

VALGRIND = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]


class Counted:
    """Switches callgrind's counting of process ``pid`` (dumps go to ``prefix``.<pid>.<n>)."""

    def __init__(self, pid: int, prefix: str):
        self.pid, self.prefix = pid, prefix
        self.name = Path(prefix).name  # the process's name in the results: a, b or relay

    def _control(self, *args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(self.pid)], capture_output=True, timeout=60, check=True)

    def start(self) -> None:
        self._control("--zero")
        self._control("--instr=on")

    def stop(self) -> int:
        """Counting off; the instructions counted since start()."""
        self._control("--instr=off")
        before = set(Path(self.prefix).parent.glob(f"{self.name}.{self.pid}.*"))
        self._control("--dump")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            new = set(Path(self.prefix).parent.glob(f"{self.name}.{self.pid}.*")) - before
            for path in new:
                totals = re.search(r"^totals: (\d+)", path.read_text(errors="replace"), re.MULTILINE)
                if totals:
                    return int(totals.group(1))
            time.sleep(0.2)
        raise RuntimeError(f"callgrind wrote no dump for process {self.pid} within 60 s")


class GrindedGateway(GatewayProcess):
    """A gateway under callgrind, counting off until switched on."""

    prefix = ""

    def command(self) -> list[str]:
        return [*VALGRIND, f"--callgrind-out-file={self.prefix}.%p", *super().command()]


def _idle(seconds: int, counted: list[Counted]) -> dict[str, int]:
    """Instructions each of ``counted`` executes in ``seconds`` without requests: its background
    work (heartbeats, membership reloads, timers), which a round's count includes too."""
    for process in counted:
        process.start()
    time.sleep(seconds)
    return {p.name: p.stop() for p in counted}


def _requests(url: str, connections: int, seconds: int, counted: list[Counted],
              idle: dict[str, int]) -> dict[str, float]:
    """One wrk round on ``url`` with counting on in ``counted``: instructions per request of each,
    less what it spends in ``seconds`` without requests (``idle``). Under valgrind a node serves
    only a few hundred requests a second, so its background work would otherwise weigh dozens of
    times more per request than at full speed, and more on a slower read (a relayed one)."""
    for process in counted:
        process.start()
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", url], capture_output=True, text=True,
                         timeout=seconds + 120)
    counts = [process.stop() for process in counted]
    if out.returncode != 0 or "Non-2xx" in out.stdout:
        raise RuntimeError(f"wrk failed on {url}:\n{out.stdout}{out.stderr}")
    requests = int(re.search(r"(\d+) requests in", out.stdout).group(1))
    return {"requests": requests,
            **{p.name: round(max(c - idle[p.name], 0) / max(requests, 1)) for p, c in zip(counted, counts)}}


def run(connections: int = 32, seconds: int = 10) -> dict:
    for tool in ("valgrind", "callgrind_control", "wrk"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed: apt-get install valgrind wrk")
    base = Path(tempfile.mkdtemp(prefix="cluster-instructions-"))
    env = {"GATEWAY_CLUSTER_SECRET": SECRET, "GATEWAY_HEARTBEAT_INTERVAL": "5"}
    registry = f"sqlite:///{base}/registry.db"
    nodes: dict[str, GrindedGateway] = {}
    relay = None
    try:
        for name in ("a", "b"):
            node = nodes[name] = GrindedGateway(base / name, args=node_args("redundant", registry),
                                                env={**env, "GATEWAY_NODE_ID": name})
            node.prefix = str(base / name)
            node.start(timeout=600)
        _wait_all_known(nodes.values(), 2, timeout=300)
        a, b = nodes["a"].client(), nodes["b"].client()
        a.create_bucket(Bucket="bench")
        body = os.urandom(SIZE)
        a.put_object(Bucket="bench", Key="local.bin", Body=body)
        b.put_object(Bucket="bench", Key="remote.bin", Body=body)
        port = free_port("127.0.0.1")
        relay_prefix = str(base / "relay")
        relay = subprocess.Popen([*VALGRIND, f"--callgrind-out-file={relay_prefix}.%p", sys.executable, "-m",
                                  "benchmarks.http_relay", str(port), str(nodes["b"].port), "--pipelined"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if relay.stdout.readline().strip() != "ready":
            raise RuntimeError("benchmarks.http_relay did not start under valgrind")
        urls = {"local_hit": f"{nodes['a'].endpoint}/bench/local.bin",
                "relayed": f"{nodes['a'].endpoint}/bench/remote.bin",
                "http_relay": f"http://127.0.0.1:{port}/bench/remote.bin"}
        for url in urls.values():  # warm the caches (and the location cache: the read is passed through)
            for _ in range(3):
                subprocess.run(["curl", "-sf", "-o", "/dev/null", url], check=True, timeout=120)
        count = {name: Counted(node.process.pid, node.prefix) for name, node in nodes.items()}
        count["relay"] = Counted(relay.pid, relay_prefix)
        rounds = {"local_hit": [count["a"]], "relayed": [count["a"], count["b"]],
                  "http_relay": [count["relay"], count["b"]]}
        idle = _idle(seconds, list(count.values()))
        per_request = {name: _requests(urls[name], connections, seconds, rounds[name], idle) for name in urls}
        local = per_request["local_hit"]["a"]
        return {
            "object_size": SIZE, "connections": connections, "seconds": seconds,
            "instructions_per_request": per_request,  # less the background work (idle_per_second)
            "idle_per_second": {name: round(n / seconds) for name, n in idle.items()},
            # The relayed ratio as instructions say it: what one local hit costs against what both
            # nodes spend on a relayed read (cluster_bench.py's ratio counts time, the kernel's too).
            "relayed_vs_local": round(local / (per_request["relayed"]["a"] + per_request["relayed"]["b"]), 3),
            "http_relay_vs_local": round(local / (per_request["http_relay"]["relay"]
                                                  + per_request["http_relay"]["b"]), 3),
        }
    finally:
        if relay is not None:
            relay.kill()
            relay.wait(timeout=30)
        for node in nodes.values():
            node.stop()
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster_instructions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32; 1: no batching)")
    parser.add_argument("--seconds", type=int, default=10, help="seconds per wrk round (default 10, at most 60)")
    args = parser.parse_args()
    if not 1 <= args.seconds <= 60 or not 1 <= args.connections <= 256:
        parser.error("--seconds must be 1-60 and --connections 1-256 (every load is bounded)")
    print(json.dumps(run(args.connections, args.seconds), indent=2))


if __name__ == "__main__":
    main()
