"""`gateway cluster join|leave|status` mistakes from the ops probe (bugs 7 and 9, the stale count of the
leave guard), on real SQLite registries with real gateway processes."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from botocore.exceptions import ClientError
from click.testing import CliRunner

from gateway.cli import main
from gateway.cluster.election import LEASE
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
        assert "joined, not seen yet" in out
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
        # A node that never ran holds nothing: misses are 404 and DeleteBucket works (they were 503s
        # naming r9 for as long as it stayed joined and not started).
        s3 = nodes["p1"].client()
        wait_for(lambda: "r9" in {n["node_id"] for n in nodes.admin("p1")["nodes"]}, 20,
                 "p1 listing r9")
        s3.create_bucket(Bucket="joined")
        for call in (lambda: s3.head_object(Bucket="joined", Key="missing"),
                     lambda: s3.get_object(Bucket="joined", Key="missing")):
            with pytest.raises(ClientError) as info:
                call()
            assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        for i in range(10):  # and writes are placed on the nodes that run (the primary spreads them)
            s3.put_object(Bucket="joined", Key=f"k{i}", Body=b"placed")
            assert s3.get_object(Bucket="joined", Key=f"k{i}")["Body"].read() == b"placed"
            s3.delete_object(Bucket="joined", Key=f"k{i}")
        s3.delete_bucket(Bucket="joined")

        # Its gateway starts: the first heartbeat makes it a node like any other.
        nodes.nodes["r9"] = later
        later.start()
        row = wait_for(lambda: (r := rows_of(registry)["r9"])["healthy"] and r, 10, "r9 heartbeating")
        assert row["last_seen"] > 0 and row["role"] == "redundant"
        code, table, _ = cli("cluster", "status", "--registry", registry)
        line = next(line for line in table.splitlines() if line.startswith("r9"))
        assert " ok " in line and "s ago" in line, line
        assert "joined, not seen yet" in next(line for line in table.splitlines() if line.startswith("ghost"))
        s3.create_bucket(Bucket="later")
        later.client().put_object(Bucket="later", Key="on-r9", Body=b"stored on r9")
        assert s3.get_object(Bucket="later", Key="on-r9")["Body"].read() == b"stored on r9"
    finally:
        nodes.stop()


def test_join_refuses_a_second_primary_an_address_in_use_and_a_registry_in_a_missing_directory(tmp_path):
    registry = f"sqlite:///{tmp_path}/registry.db"
    nodes = ClusterNodes(tmp_path, registry)
    try:
        p1 = nodes.add("p1", "primary")
        # A second primary, while p1 is listed primary and holds the lease.
        code, _, err = cli("cluster", "join", "--registry", registry, "--advertise", "http://127.0.0.1:18897",
                           "--role", "primary", "--node-id", "second-primary")
        assert code == 2, err
        assert "node p1 is the primary already (listed primary and holds the primary lease)" in err, err
        assert "--role redundant" in err and "gateway cluster promote second-primary" in err, err
        # The running primary's address, under another id (also spelled with a capital and a slash).
        for address in (p1.endpoint, p1.endpoint.replace("http://", "HTTP://") + "/"):
            code, _, err = cli("cluster", "join", "--registry", registry, "--advertise", address,
                               "--role", "redundant", "--node-id", "dup")
            assert code == 2, (address, err)
            assert "is the address of node p1 already" in err and "--node-id p1" in err, err
        assert set(rows_of(registry)) == {"p1"}
        # The node itself joined again at its own address: fine, and it stays primary.
        code, out, err = cli("cluster", "join", "--registry", registry, "--advertise", p1.endpoint, "--node-id", "p1")
        assert code == 0 and "joined as primary" in out, err
        assert rows_of(registry)["p1"]["healthy"]  # its heartbeat is kept, not reset
    finally:
        nodes.stop()

    # Only the primary lease (its holder is listed redundant for a moment in a takeover) counts too.
    other = f"sqlite:///{tmp_path}/lease.db"

    async def lease_held(reg):
        await reg.register("r1", "redundant", "http://127.0.0.1:18801")
        await reg.heartbeat("r1", {"heartbeat_interval": 5.0})
        assert await reg.acquire_lock(LEASE, "r1", 60)

    on_registry(other, lease_held)
    code, _, err = cli("cluster", "join", "--registry", other, "--advertise", "http://127.0.0.1:18802",
                       "--role", "primary", "--node-id", "r2")
    assert code == 2 and "node r1 is the primary already (holds the primary lease)" in err, err
    code, out, err = cli("cluster", "join", "--registry", other, "--advertise", "http://127.0.0.1:18802",
                         "--node-id", "r2")
    assert code == 0 and "joined as redundant" in out, err

    # A registry in a directory that does not exist is a typo: refused, and nothing is created.
    missing = tmp_path / "nonexist" / "x.db"
    code, _, err = cli("cluster", "join", "--registry", f"sqlite:///{missing}", "--advertise",
                       "http://127.0.0.1:18898")
    assert code == 2, err
    assert f"{tmp_path / 'nonexist'} does not exist, so there is no registry at {missing}" in err, err
    assert not (tmp_path / "nonexist").exists()
    # A redundant node or a proxy joining a registry file that is not there: no cluster to join.
    new = tmp_path / "new.db"
    for role in ("redundant", "proxy"):
        code, _, err = cli("cluster", "join", "--registry", f"sqlite:///{new}", "--advertise",
                           "http://127.0.0.1:18898", "--role", role)
        assert code == 2 and "a new cluster starts with its primary" in err, (role, err)
    assert not new.exists()
    # The first node, the primary, creates it, and says so.
    code, out, err = cli("cluster", "join", "--registry", f"sqlite:///{new}", "--advertise", "http://127.0.0.1:18898")
    assert code == 0, err
    assert f"created a new registry at sqlite:///{new}" in out and "joined as primary" in out, out
    assert new.exists()


def test_leave_of_a_node_on_a_share_other_nodes_serve_is_not_refused_and_a_refusal_says_how_old_the_count_is(
        tmp_path):
    """Bug 9: `cluster leave` of a sharedfs node said its objects would read as 404 through every node,
    although the other nodes on the share serve them. And a refusal by the last published count now says
    how old that count is."""
    registry = f"sqlite:///{tmp_path}/registry.db"
    (tmp_path / "share").mkdir()
    shared = f'default_backend = "shared"\n[backends.shared]\ntype = "sharedfs"\nroot = "{tmp_path / "share"}"\n'
    nodes = ClusterNodes(tmp_path, registry)
    try:
        nodes.add("p1", "primary", config=shared)
        s3 = nodes["p1"].client()
        s3.create_bucket(Bucket="share")
        for i in range(3):
            s3.put_object(Bucket="share", Key=f"k{i}", Body=b"on the share")
        # Started now, they count what is there already (a node counts at start, then every 5 minutes).
        nodes.add("r1", "redundant", config=shared)
        nodes.add("r2", "redundant")  # storage of its own
        nodes["r2"].client().put_object(Bucket="share", Key="on-r2", Body=b"only on r2")
        nodes["r2"].stop()
        nodes.restart("r2")
        rows = wait_for(lambda: (r := rows_of(registry))["r1"]["objects"] == 3 and r["r2"]["objects"] == 1 and r,
                        15, "r1 and r2 publishing their object counts")
        assert rows["r1"]["objects_counted_at"] > time.time() - 60
        nodes["r1"].stop()
        nodes["r2"].stop()

        code, out, err = cli("cluster", "leave", "--registry", registry, "--node-id", "r2")
        assert code == 1, out
        assert "r2 holds 1 objects by its last count (counted " in err and " s ago;" in err, err
        assert "404" in err and "--force" in err

        code, out, err = cli("cluster", "leave", "--registry", registry, "--node-id", "r1")
        assert code == 0, err
        assert "node r1 left the cluster; its objects stay on the shared storage, served by p1" in out, out
        assert "404" not in err
        for i in range(3):
            assert s3.get_object(Bucket="share", Key=f"k{i}")["Body"].read() == b"on the share"
        assert set(rows_of(registry)) == {"p1", "r2"}
    finally:
        nodes.stop()


def test_leave_names_the_age_of_an_old_count_and_warns_of_an_old_count_of_none(tmp_path):
    """The probe: r2's last count (0, at its start) was minutes old when it was killed with 211 objects, and
    `cluster leave` removed it without a word; its objects then read as 404 through every node."""
    registry = f"sqlite:///{tmp_path}/registry.db"

    async def fill(reg):
        now = time.time()
        await reg.register("p1", "primary", "http://127.0.0.1:18801")
        await reg.heartbeat("p1", {"heartbeat_interval": 5.0, "objects": 9, "objects_counted_at": now})
        await reg.register("r1", "redundant", "http://127.0.0.1:18802")
        await reg.heartbeat("r1", {"heartbeat_interval": 5.0, "objects": 7, "objects_counted_at": now - 240})
        await reg.register("r2", "redundant", "http://127.0.0.1:18803")
        await reg.heartbeat("r2", {"heartbeat_interval": 5.0, "objects": 0, "objects_counted_at": now - 600})

    on_registry(registry, fill)
    code, _, err = cli("cluster", "leave", "--registry", registry, "--node-id", "r1")
    assert code == 1 and "r1 holds 7 objects by its last count (counted 4 min ago;" in err, err
    code, out, err = cli("cluster", "leave", "--registry", registry, "--node-id", "r2")
    assert code == 0 and "node r2 left the cluster" in out, err
    assert "warning: r2 held no objects by its last count, counted 10 min ago" in err, err
    rejoin = (f"gateway cluster join --registry {registry} --node-id r2 --advertise http://127.0.0.1:18803 "
              "--role redundant")
    assert rejoin in err, err
    code, out, err = cli(*rejoin.split()[1:])
    assert code == 0 and "joined as redundant" in out, err


def test_a_storing_node_holding_objects_does_not_start_as_a_proxy(tmp_path):
    """Restarted with --role proxy, a redundant node that held objects stored nothing and was asked for
    nothing: its objects read 404 through every node (what `cluster leave` refuses without --force).
    Started again in its role, the other nodes ask it at once (its announce says the role)."""
    registry = f"sqlite:///{tmp_path}/registry.db"
    nodes = ClusterNodes(tmp_path, registry)
    try:
        nodes.add("p1", "primary")
        nodes.add("r1", "redundant")
        s3 = nodes["p1"].client()
        s3.create_bucket(Bucket="kept")
        nodes["r1"].client().put_object(Bucket="kept", Key="on-r1", Body=b"only on r1")
        nodes["r1"].stop()
        nodes.restart("r1")  # counted at start
        wait_for(lambda: rows_of(registry)["r1"]["objects"] == 1, 15, "r1 publishing its count")
        nodes["r1"].stop()
        as_proxy = nodes.new_node("r1", "proxy", None, None)  # the same id and data directory
        try:
            with pytest.raises(RuntimeError) as info:
                as_proxy.start()
        finally:
            as_proxy.stop()  # started after all (the bug): not left running
        message = str(info.value)
        assert "gateway exited with 2" in message, message[-3000:]
        assert "registered as a redundant node holding 1 objects" in message and "404" in message, message[-3000:]
        assert "--role redundant" in message and "cluster leave --node-id r1" in message, message[-3000:]
        assert rows_of(registry)["r1"]["role"] == "redundant"
        nodes.restart("r1")
        assert s3.get_object(Bucket="kept", Key="on-r1")["Body"].read() == b"only on r1"
        # A proxy started again as a redundant node: the others ask it at once, not after their next
        # registry read (its announce names its new role).
        nodes.add("x1", "proxy")
        nodes["x1"].stop()
        nodes.nodes["x1"] = nodes.new_node("x1", "redundant", None, None)
        nodes.restart("x1")
        wait_for(lambda: {n["node_id"]: n["role"] for n in nodes.admin("p1")["nodes"]}["x1"] == "redundant", 1,
                 "p1 taking x1's new role from its announce (its registry reads are 2 s apart here)")
        nodes["x1"].client().put_object(Bucket="kept", Key="on-x1", Body=b"x1 stores now")
        assert s3.get_object(Bucket="kept", Key="on-x1")["Body"].read() == b"x1 stores now"
    finally:
        nodes.stop()
