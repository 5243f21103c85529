"""Failover with real gateway processes: kill -9 the primary of 1 primary + 3 redundant nodes."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from botocore.exceptions import ClientError

from .conftest import ClusterNodes, wait_for

FAILOVER_ENV = {"GATEWAY_FAILOVER_AFTER": "2"}  # heartbeats every 0.5 s (NODE_ENV)
BUCKET = "failover"


@pytest.fixture
def cluster(tmp_path):
    nodes = ClusterNodes(tmp_path, f"sqlite:///{tmp_path}/registry.db")
    try:
        nodes.add("p1", "primary", extra_env=FAILOVER_ENV)
        for name in ("r1", "r2", "r3"):  # one after the other: install order decides who votes
            nodes.add(name, "redundant", extra_env=FAILOVER_ENV)
        nodes.wait_known(4)
        yield nodes
    finally:
        nodes.stop()


def roles(cluster) -> dict[str, str]:
    return {row["node_id"]: row["role"] for row in cluster.status()}


def test_a_voter_takes_over_from_a_killed_primary_and_the_old_one_returns_redundant(cluster):
    table = subprocess.run([sys.executable, "-m", "gateway", "cluster", "status", "--registry", cluster.registry],
                           capture_output=True, text=True, timeout=30)
    assert "failover: voters p1, r1, r2; primary lease held by p1" in table.stdout, table.stdout
    assert {r["node_id"] for r in cluster.status() if r["voter"]} == {"p1", "r1", "r2"}
    s3 = cluster["p1"].client()
    s3.create_bucket(Bucket=BUCKET)
    for i in range(8):
        s3.put_object(Bucket=BUCKET, Key=f"before/{i}", Body=f"object {i}".encode())
    on_p1 = [k for k in (f"before/{i}" for i in range(8))
             if (cluster.base / "p1" / "cv-storage" / BUCKET / "before" / f"{k.split('/')[1]}%obj").exists()]

    cluster["p1"].kill()
    new = wait_for(lambda: [n for n, r in roles(cluster).items() if r == "primary" and n != "p1"], 20,
                   "a failover")
    assert new in (["r1"], ["r2"]), roles(cluster)  # a voter, never r3
    assert roles(cluster)["p1"] == "redundant"
    new = new[0]
    assert cluster.admin(new)["role"] == "primary"
    assert [r["node_id"] for r in cluster.status() if r["primary_lease"]] == [new]

    # The cluster keeps working: the new primary places PUTs, every node reads them.
    n3 = cluster[new].client()
    for i in range(6):
        n3.put_object(Bucket=BUCKET, Key=f"after/{i}", Body=b"after")
    for node in ("r1", "r2", "r3"):
        client = cluster[node].client()
        for i in range(6):
            assert client.get_object(Bucket=BUCKET, Key=f"after/{i}")["Body"].read() == b"after"
    if on_p1:  # objects only the dead node has: 503, not 404
        with pytest.raises(ClientError) as info:
            cluster["r3"].client().get_object(Bucket=BUCKET, Key=on_p1[0])
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503

    # p1 comes back with its old settings (--role primary) and joins as redundant.
    cluster.restart("p1")
    assert cluster.admin("p1")["role"] == "redundant"
    wait_for(lambda: roles(cluster)["p1"] == "redundant", 10, "p1 listed as redundant")
    assert [n for n, r in roles(cluster).items() if r == "primary"] == [new]
    assert "joins as redundant" in cluster["p1"].log()
    for i in range(8):
        assert cluster["r3"].client().get_object(Bucket=BUCKET, Key=f"before/{i}")["Body"].read() == \
            f"object {i}".encode()


def test_no_failover_when_a_voter_is_down_too(cluster):
    cluster["r2"].kill()
    cluster["p1"].kill()
    # r1 sees the dead primary, and declines because the other voter is down too.
    wait_for(lambda: "no failover without both voting redundant nodes" in cluster["r1"].log(), 20,
             "r1's vote on the dead primary")
    time.sleep(1)  # two more heartbeats of r1 and r3
    listed = roles(cluster)
    assert listed["p1"] == "primary" and listed["r1"] == "redundant" and listed["r3"] == "redundant", listed
    assert cluster.admin("r1")["role"] == "redundant" and cluster.admin("r3")["role"] == "redundant"


def test_a_paused_primary_steps_down_when_it_runs_again(cluster):
    cluster["p1"].pause()  # SIGSTOP: it keeps its sockets, answers nothing, sends no heartbeat
    try:
        new = wait_for(lambda: [n for n, r in roles(cluster).items() if r == "primary" and n != "p1"], 20,
                       "a failover")
    finally:
        cluster["p1"].resume()
    assert new in (["r1"], ["r2"]), roles(cluster)
    wait_for(lambda: cluster.admin("p1")["role"] == "redundant", 10, "p1 stepping down")
    wait_for(lambda: roles(cluster)["p1"] == "redundant", 10, "p1 listed as redundant")
    assert [n for n, r in roles(cluster).items() if r == "primary"] == new
    assert "steps down to redundant" in cluster["p1"].log()
    s3 = cluster["p1"].client()  # p1 still serves, now as a redundant node
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="after-pause", Body=b"x")
    assert cluster["r3"].client().get_object(Bucket=BUCKET, Key="after-pause")["Body"].read() == b"x"


def promote(cluster, node: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", "cluster", "promote", node, "--registry",
                           cluster.registry, "--wait", "20"], capture_output=True, text=True, timeout=60)


def test_promote_moves_the_primary_role_without_downtime(cluster):
    s3 = cluster["p1"].client()
    s3.create_bucket(Bucket=BUCKET)
    done = promote(cluster, "r3")  # any running redundant node, not only a voter
    assert done.returncode == 0 and "r3 is the primary now" in done.stdout, done.stderr
    assert cluster.admin("r3")["role"] == "primary"
    wait_for(lambda: cluster.admin("p1")["role"] == "redundant", 10, "p1 stepping down")
    assert [n for n, r in roles(cluster).items() if r == "primary"] == ["r3"]
    for node in ("p1", "r1", "r3"):  # every node keeps serving
        cluster[node].client().put_object(Bucket=BUCKET, Key=f"from-{node}", Body=node.encode())
    for node in ("p1", "r1", "r3"):
        assert cluster["r2"].client().get_object(Bucket=BUCKET, Key=f"from-{node}")["Body"].read() == node.encode()

    again = promote(cluster, "r3")
    assert again.returncode == 0 and "primary already" in again.stdout
    back = promote(cluster, "p1")
    assert back.returncode == 0 and "p1 is the primary now" in back.stdout, back.stderr
    wait_for(lambda: [n for n, r in roles(cluster).items() if r == "primary"] == ["p1"], 10, "one primary, p1")


def test_promote_refuses_what_cannot_be_primary(cluster):
    unknown = promote(cluster, "nope")
    assert unknown.returncode == 1 and "there is no node 'nope'" in unknown.stderr
    cluster["r3"].kill()
    wait_for(lambda: not next(r for r in cluster.status() if r["node_id"] == "r3")["heartbeat_fresh"], 10,
             "r3 shown down")
    down = promote(cluster, "r3")
    assert down.returncode == 1 and "r3 is down" in down.stderr
    assert cluster.admin("p1")["role"] == "primary"
