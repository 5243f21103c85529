"""`gateway cluster join|leave|status` mistakes from the ops probe (bugs 7 and 9, the stale count of the
leave guard), on real SQLite registries with real gateway processes."""

from __future__ import annotations

import asyncio
import json
import time

from click.testing import CliRunner

from gateway.cli import main
from gateway.cluster.registry import open_registry

from .conftest import ClusterNodes, wait_for


def cli(*args: str):
    """The real `gateway` command, in this process; returns (exit code, stdout, stderr)."""
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def rows_of(registry: str) -> dict[str, dict]:
    code, out, err = cli("cluster", "status", "--json", "--registry", registry)
    assert code == 0, err
    return {row["node_id"]: row for row in json.loads(out)}


def on_registry(url: str, work):
    async def run():
        registry = open_registry(url)
        try:
            return await work(registry)
        finally:
            await registry.close()

    return asyncio.run(run())


def test_a_joined_node_that_never_ran_is_not_shown_healthy_until_its_gateway_heartbeats(tmp_path):
    """`cluster join` stamped the record with a heartbeat: a node that never ran showed "ok, 8s ago"
    for 15 s, then "down"."""
    registry = f"sqlite:///{tmp_path}/registry.db"
    nodes = ClusterNodes(tmp_path, registry)
    later = nodes.new_node("r9", "redundant", None, None)
    try:
        nodes.add("p1", "primary")
        code, out, err = cli("cluster", "join", "--registry", registry, "--advertise", "http://127.0.0.1:9",
                             "--role", "proxy", "--node-id", "ghost")
        assert code == 0, err
        code, out, err = cli("cluster", "join", "--registry", registry, "--advertise", later.endpoint,
                             "--role", "redundant", "--node-id", "r9")
        assert code == 0, err
        rows = rows_of(registry)
        for name in ("ghost", "r9"):
            assert rows[name]["healthy"] is False and rows[name]["heartbeat_fresh"] is False, rows[name]
            assert rows[name]["last_seen"] is None and rows[name]["last_seen_ago"] is None, rows[name]
        assert rows["p1"]["healthy"] is True and rows["p1"]["last_seen"] > 0
        code, table, _ = cli("cluster", "status", "--registry", registry)
        line = next(line for line in table.splitlines() if line.startswith("ghost"))
        assert "joined, not seen yet" in line and "never" in line and " ok " not in line, line
        code, _, err = cli("cluster", "promote", "r9", "--registry", registry)
        assert code == 1 and "r9 has never run (joined, not seen yet): start it first" in err, err

        # Its gateway starts: the first heartbeat makes it a node like any other.
        nodes.nodes["r9"] = later
        later.start()
        row = wait_for(lambda: (r := rows_of(registry)["r9"])["healthy"] and r, 10, "r9 heartbeating")
        assert row["last_seen"] > 0 and row["role"] == "redundant"
        code, table, _ = cli("cluster", "status", "--registry", registry)
        line = next(line for line in table.splitlines() if line.startswith("r9"))
        assert " ok " in line and "s ago" in line, line
        assert "joined, not seen yet" in next(line for line in table.splitlines() if line.startswith("ghost"))
    finally:
        nodes.stop()
