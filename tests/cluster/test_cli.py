"""`gateway cluster join|status|leave` against a SQLite registry (no servers needed)."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from gateway.cli import main


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def gateway(*args: str, env: dict | None = None) -> Result:
    """Run the real `gateway` command in this process (a subprocess per call costs 1.5 s of imports)."""
    if env is not None:  # needs a clean environment: a real subprocess
        out = subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60,
                             env=env)
        return Result(out.returncode, out.stdout, out.stderr)
    result = CliRunner().invoke(main, list(args))
    return Result(result.exit_code, result.stdout, result.stderr)


def test_join_status_leave(tmp_path):
    registry = f"sqlite:///{tmp_path}/registry.db"
    first = gateway("cluster", "join", "--registry", registry, "--advertise", "https://10.0.0.1:8086")
    assert first.returncode == 0, first.stderr
    assert "joined as primary" in first.stdout  # the first installed node is the primary
    second = gateway("cluster", "join", "--registry", registry, "--advertise", "https://10.0.0.2:8086",
                     "--node-id", "gw2")
    assert "joined as redundant" in second.stdout
    proxy = gateway("cluster", "join", "--registry", registry, "--advertise", "https://10.0.0.3:8086",
                    "--node-id", "gw3", "--role", "proxy")
    assert "joined as proxy" in proxy.stdout

    rows = json.loads(gateway("cluster", "status", "--json", "--registry", registry).stdout)
    assert [(r["node_id"], r["role"], r["address"]) for r in rows] == [
        ("10.0.0.1:8086", "primary", "https://10.0.0.1:8086"),
        ("gw2", "redundant", "https://10.0.0.2:8086"),
        ("gw3", "proxy", "https://10.0.0.3:8086"),
    ]
    assert all({"healthy", "last_seen"} <= set(r) for r in rows)
    table = gateway("cluster", "status", "--registry", registry).stdout
    assert table.splitlines()[0].split()[:4] == ["NODE", "ROLE", "ADDRESS", "HEALTH"]
    assert "gw2" in table and "redundant" in table
    assert "failover: off (it needs two redundant nodes)" in table

    refused = gateway("cluster", "promote", "gw3", "--registry", registry)
    assert refused.returncode == 1 and "gw3 is a proxy node" in refused.stderr
    assert "primary already" in gateway("cluster", "promote", "10.0.0.1:8086", "--registry", registry).stdout

    assert gateway("cluster", "leave", "--registry", registry, "--node-id", "gw2").returncode == 0
    missing = gateway("cluster", "leave", "--registry", registry, "--node-id", "gw2")
    assert missing.returncode == 1 and "not in the registry" in missing.stderr
    rows = json.loads(gateway("cluster", "status", "--json", "--registry", registry).stdout)
    assert [r["node_id"] for r in rows] == ["10.0.0.1:8086", "gw3"]


def test_status_names_an_unreachable_registry():
    out = gateway("cluster", "status", "--registry", "etcd://127.0.0.1:1")
    assert out.returncode == 1 and "no endpoint answered" in out.stderr


def test_status_and_leave_never_create_a_registry(tmp_path):
    """A typo in --registry must not show a new, empty cluster (and leave a database behind)."""
    registry = f"sqlite:///{tmp_path}/typo/registry.db"
    for args in (["status"], ["status", "--json"], ["leave", "--node-id", "gw1"]):
        out = gateway("cluster", *args, "--registry", registry)
        assert out.returncode == 1 and "there is no registry at" in out.stderr, (args, out.stderr)
    assert not (tmp_path / "typo").exists()


def test_join_refuses_what_is_not_an_address_or_a_name(tmp_path):
    registry = f"sqlite:///{tmp_path}/registry.db"
    for advertise in ("garbage", "", "ftp://10.0.0.1:21", "http://10.0.0.1:99999"):
        out = gateway("cluster", "join", "--registry", registry, "--advertise", advertise)
        assert out.returncode == 2 and "--advertise" in out.stderr, (advertise, out.stderr)
    out = gateway("cluster", "join", "--registry", registry, "--advertise", "https://10.0.0.1:8086", "--node-id", " ")
    assert out.returncode == 2 and "--node-id" in out.stderr
    assert gateway("cluster", "leave", "--registry", registry, "--node-id", "").returncode == 2
    assert not (tmp_path / "registry.db").exists()


def test_serve_refuses_a_cluster_without_secret(tmp_path):
    out = gateway("serve", "--role", "redundant", "--registry", f"sqlite:///{tmp_path}/r.db", "--insecure-peers",
                  "--access-key", "a", "--secret-key", "b", "--print-config", env={"PATH": "/usr/bin:/bin"})
    assert out.returncode != 0 and "GATEWAY_CLUSTER_SECRET" in out.stderr


def test_serve_refuses_a_failover_shorter_than_two_heartbeats(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "GATEWAY_CLUSTER_SECRET": "0123456789abcdef0123",
           "GATEWAY_HEARTBEAT_INTERVAL": "5", "GATEWAY_FAILOVER_AFTER": "9"}
    args = ["serve", "--role", "redundant", "--registry", f"sqlite:///{tmp_path}/r.db", "--insecure-peers",
            "--access-key", "a", "--secret-key", "b", "--print-config"]
    out = gateway(*args, env=env)
    assert out.returncode == 2 and "failover_after (9 s) must be at least two heartbeat intervals (10 s)" in out.stderr
    assert gateway(*args, env={**env, "GATEWAY_FAILOVER": "false"}).returncode == 0
    assert gateway(*args, env={**env, "GATEWAY_FAILOVER_AFTER": "10"}).returncode == 0


def test_readme_cluster_commands_work_as_printed(tmp_path):
    """The three `gateway serve` lines of README "Run a cluster", started one after the other as printed
    (temp directories and free ports instead of /var/lib and 8086-8088, default intervals)."""
    import os
    import re
    import time
    from pathlib import Path

    from gateway.testing.server import GatewayProcess, free_port

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = re.search(r"## Run a cluster\n.*?```sh\n(.*?)```", readme, re.DOTALL).group(1)
    exports = dict(re.findall(r"(GATEWAY_[A-Z_]+)=(\S+)", block.splitlines()[0]))
    assert set(exports) == {"GATEWAY_CLUSTER_SECRET", "GATEWAY_REGISTRY"}
    env = {"GATEWAY_CLUSTER_SECRET": "readme-cluster-secret-0123456789",
           "GATEWAY_REGISTRY": exports["GATEWAY_REGISTRY"].replace("/var/lib", str(tmp_path))}
    lines = [line.split() for line in block.splitlines() if line.startswith("gateway serve")]
    assert [line[line.index("--role") + 1] for line in lines] == ["primary", "redundant", "proxy"]
    nodes = []
    try:
        for words in lines:
            args = [w.replace("/var/lib", str(tmp_path)) for w in words[2:]]
            args[args.index("--port") + 1] = str(free_port())
            node = GatewayProcess(tmp_path / "unused", access_key="KEY", secret_key="SECRET", env=env)
            node.port = int(args[args.index("--port") + 1])
            node.command = lambda args=args: [sys.executable, "-m", "gateway", "serve", *args]
            node.start()
            nodes.append(node)
        primary, redundant, proxy = (n.client() for n in nodes)
        proxy.create_bucket(Bucket="readme")
        redundant.put_object(Bucket="readme", Key="on-the-redundant-node", Body=b"r")
        # The primary was started first; the others announced themselves, so it knows them within a second.
        deadline = time.monotonic() + 5
        while True:
            try:
                assert primary.get_object(Bucket="readme", Key="on-the-redundant-node")["Body"].read() == b"r"
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert os.path.exists(tmp_path / "cv-storage-2" / "readme" / "on-the-redundant-node%obj")
    finally:
        for node in reversed(nodes):
            node.stop()


def test_status_of_a_registry_without_nodes_says_so(tmp_path):
    registry = f"sqlite:///{tmp_path}/registry.db"
    gateway("cluster", "join", "--registry", registry, "--advertise", "https://10.0.0.1:8086", "--node-id", "only")
    assert gateway("cluster", "leave", "--registry", registry, "--node-id", "only").returncode == 0
    for args in (["status"], ["status", "--json"]):
        out = gateway("cluster", *args, "--registry", registry)
        assert out.returncode == 1 and "no nodes are registered in" in out.stderr, (args, out.stderr)
    assert json.loads(gateway("cluster", "status", "--json", "--registry", registry).stdout) == []


def test_status_table_columns_fit_long_node_ids_and_addresses(tmp_path):
    """Columns were fixed widths: a host:port node id of a real host name, or an IPv6 address, pushed
    every later column out of line."""
    registry = f"sqlite:///{tmp_path}/registry.db"
    for advertise in ("https://storage-node-01.cluster.example.lan:8086", "https://[fd00:1234:5678::10]:8086",
                      "https://10.0.0.3:8086"):
        assert gateway("cluster", "join", "--registry", registry, "--advertise", advertise).returncode == 0
    lines = gateway("cluster", "status", "--registry", registry).stdout.splitlines()
    header, rows = lines[0], lines[1:4]
    assert [row.split()[0] for row in rows] == ["storage-node-01.cluster.example.lan:8086",
                                                "[fd00:1234:5678::10]:8086", "10.0.0.3:8086"]
    for title, values in (("ROLE", ("primary", "redundant")), ("ADDRESS", ("https://",)), ("HEALTH", ("joined",))):
        column = header.index(title)
        for row in rows:
            assert row[column:].startswith(values), (title, row)
    for row in rows:  # the numbers end where their titles end
        assert len(row) == len(header), (row, header)
