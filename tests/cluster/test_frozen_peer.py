"""A frozen peer (SIGSTOP: its sockets stay open, nothing answers) is waited for once, not on every read.

The first miss waits the peer timeout and marks it limited (tried last); after that a GET or HEAD
waits for it only limited_timeout (a tenth of the peer timeout, at least 0.2 s) before answering
503, where it waited the whole timeout every time (3 s per miss with the tests' timeout), and so do
the listings, which ask every storing node. A DELETE does not wait for it at all: the deletion waits
for it in the registry.
"""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError

from .conftest import NODE_ENV, start_cluster

PEER_TIMEOUT = float(NODE_ENV["GATEWAY_PEER_TIMEOUT"])


def _status_of(call) -> int:
    with pytest.raises(ClientError) as info:
        call()
    return info.value.response["ResponseMetadata"]["HTTPStatusCode"]


def test_a_frozen_peer_is_waited_for_once_then_only_briefly(tmp_path):
    cluster = start_cluster(tmp_path / "c", f"sqlite:///{tmp_path}/registry.db")
    try:
        # One attempt per call (botocore's legacy mode retries a 503 once more).
        p1 = cluster["p1"].client(retries={"total_max_attempts": 1, "mode": "standard"})
        r1 = cluster["r1"].client()
        p1.create_bucket(Bucket="frozen")
        r1.put_object(Bucket="frozen", Key="on-r1", Body=b"r1 answers")
        cluster["r2"].client().put_object(Bucket="frozen", Key="on-r2", Body=b"r2 is frozen")
        cluster["r2"].client().put_object(Bucket="frozen", Key="deleted-on-r2", Body=b"deleted while frozen")
        cluster["r2"].pause()
        try:
            assert _status_of(lambda: p1.head_object(Bucket="frozen", Key="nowhere-0")) == 503  # waits once
            view = cluster.admin("p1")["peers"]["r2"]
            assert not view["healthy"] and "timed out" in view["last_error"], view
            started = time.monotonic()
            for n in range(1, 4):  # misses and r2's own object: 503 each, without the whole timeout
                assert _status_of(lambda: p1.get_object(Bucket="frozen", Key=f"nowhere-{n}")) == 503
            assert _status_of(lambda: p1.get_object(Bucket="frozen", Key="on-r2")) == 503
            assert time.monotonic() - started < PEER_TIMEOUT, "a read waited the whole peer timeout again"
            assert "it failed before, so it is not waited for" in cluster.admin("p1")["peers"]["r2"]["last_error"]
            assert p1.get_object(Bucket="frozen", Key="on-r1")["Body"].read() == b"r1 answers"
            # The listings ask every storing node: r2 too, briefly, and leave it out (no strict_listings).
            started = time.monotonic()
            assert [o["Key"] for o in p1.list_objects_v2(Bucket="frozen")["Contents"]] == ["on-r1"]
            assert "frozen" in [b["Name"] for b in p1.list_buckets()["Buckets"]]
            assert p1.list_multipart_uploads(Bucket="frozen").get("Uploads", []) == []
            assert time.monotonic() - started < PEER_TIMEOUT, "a listing waited the whole peer timeout again"
            # A DELETE does not wait for it either: the deletion waits for r2 in the registry.
            started = time.monotonic()
            p1.delete_object(Bucket="frozen", Key="deleted-on-r2")
            assert time.monotonic() - started < PEER_TIMEOUT, "a DELETE waited the whole peer timeout again"
        finally:
            cluster["r2"].resume()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not cluster.admin("p1")["peers"]["r2"]["healthy"]:
            time.sleep(0.2)  # the heartbeat's ping, with the whole timeout, finds it alive
        assert p1.get_object(Bucket="frozen", Key="on-r2")["Body"].read() == b"r2 is frozen"
        for node in ("p1", "r1", "r2"):  # r2 dropped the deleted object before it served again
            assert _status_of(lambda: cluster[node].client().get_object(Bucket="frozen", Key="deleted-on-r2")) == 404
    finally:
        cluster.stop()


def test_writes_right_after_a_frozen_node_resumes_go_to_another_node(tmp_path):
    """A node that has just run again after standing still refuses peer writes for a moment (their
    senders gave up on the ones sent meanwhile): a fresh write placed on it then goes to another
    node, as for a node that cannot be reached. It reached the client as a 503 ("This node has just
    run again ...")."""
    cluster = start_cluster(tmp_path / "c", f"sqlite:///{tmp_path}/registry.db")
    try:
        p1 = cluster["p1"].client(retries={"total_max_attempts": 1, "mode": "standard"})
        p1.create_bucket(Bucket="resumed")
        refused = []
        for cycle in range(3):
            key = f"on-r2-{cycle}"
            cluster["r2"].client().put_object(Bucket="resumed", Key=key, Body=b"first")
            assert p1.get_object(Bucket="resumed", Key=key)["Body"].read() == b"first"  # p1 learns it is on r2
            cluster["r2"].pause()
            time.sleep(PEER_TIMEOUT + 1)  # longer than the stall limit: r2 notices it stood still
            cluster["r2"].resume(settle=False)
            try:  # an overwrite goes where the key is: to r2, which has just run again
                p1.put_object(Bucket="resumed", Key=key, Body=b"second")
            except ClientError as exc:
                refused.append((cycle, exc.response["Error"].get("Message", "")[:160]))
                continue
            for via in ("p1", "r1", "x1"):
                assert cluster[via].client().get_object(Bucket="resumed", Key=key)["Body"].read() == b"second", via
            time.sleep(1)  # r2 serves its own copies again once it applied the overwrites made meanwhile
            assert cluster["r2"].client().get_object(Bucket="resumed", Key=key)["Body"].read() == b"second"
        assert not refused, refused
    finally:
        cluster.stop()


def test_a_frozen_peer_does_not_make_the_live_nodes_look_down(tmp_path):
    """Every node pings a peer nothing was asked of lately; a frozen one's ping waits the peer timeout
    (3 s here). It ran in the heartbeat's round: with heartbeats every 0.5 s, the live nodes' own
    heartbeats came late enough (3 missed) for `cluster status` to show them down, and a voter to
    refuse a failover because the other voter was "down"."""
    from .conftest import ClusterNodes

    cluster = ClusterNodes(tmp_path / "c", f"sqlite:///{tmp_path}/registry.db")
    try:
        cluster.add("p1", "primary")
        cluster.add_many([("r1", "redundant"), ("r2", "redundant")])
        cluster.wait_known(3)
        cluster["r2"].pause()
        try:
            seen = []
            deadline = time.monotonic() + 3 * PEER_TIMEOUT
            while time.monotonic() < deadline and len(seen) < 40:
                rows = {row["node_id"]: row["healthy"] for row in cluster.status()}
                seen.append((rows["p1"], rows["r1"]))
                time.sleep(0.2)
        finally:
            cluster["r2"].resume()
        assert len(seen) >= 5 and all(p1 and r1 for p1, r1 in seen), seen
        assert "no failover without both voting redundant nodes" not in cluster["r1"].log()
    finally:
        cluster.stop()
