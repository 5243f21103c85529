"""Recurring conditions are said once a minute per subject (gateway/cluster/sometimes.py): a node down
made every read that asked it log a line, hundreds a second under load."""

from __future__ import annotations

from botocore.exceptions import ClientError

from gateway.cluster.sometimes import Sometimes, since
from gateway.testing.clock import ManualClock

from .conftest import primary_and_redundant


def test_a_subject_is_said_once_a_period_with_the_count_of_what_was_not_said():
    clock = ManualClock(1000.0)
    said = Sometimes(period=60, clock=clock)
    assert said.due("r1") == 0
    assert [said.due("r1") for _ in range(5)] == [None] * 5
    assert said.due("r2") == 0  # each subject on its own
    clock.now += 59.9
    assert said.due("r1") is None
    clock.now += 0.2
    assert said.due("r1") == 6
    assert since(6) == " (and 6 more times since it was last said)" and since(0) == ""


def test_reads_of_a_node_that_is_down_do_not_log_a_line_each(tmp_path):
    with primary_and_redundant(tmp_path) as nodes:
        nodes["r1"].client().create_bucket(Bucket="down")
        nodes["r1"].client().put_object(Bucket="down", Key="on-r1", Body=b"x")
        nodes["r1"].kill()
        p1 = nodes["p1"].client()
        before = nodes["p1"].log().count("relay: peer r1")
        for _ in range(100):
            try:
                p1.head_object(Bucket="down", Key="on-r1")
            except ClientError as exc:
                assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        lines = nodes["p1"].log().count("relay: peer r1") - before
        assert 1 <= lines <= 2, nodes["p1"].log()[-3000:]


def test_a_peer_that_dies_while_nothing_asks_it_shows_unhealthy(tmp_path):
    """A peer killed while idle stayed gateway_cluster_peer_healthy 1 on every node for minutes: only
    traffic to it found out. Peers asked nothing for three heartbeats are pinged."""
    import re
    import time
    import urllib.request

    def healthy(node, peer) -> float:
        with urllib.request.urlopen(node.endpoint + "/metrics", timeout=10) as response:
            text = response.read().decode()
        return float(re.search(rf'^gateway_cluster_peer_healthy\{{peer="{peer}"\}} (\S+)$', text, re.M).group(1))

    with primary_and_redundant(tmp_path) as nodes:
        assert healthy(nodes["p1"], "r1") == 1
        nodes["r1"].kill()
        deadline = time.monotonic() + 30  # three heartbeats (0.5 s) and a ping's timeout (3 s), with room
        while healthy(nodes["p1"], "r1") == 1 and time.monotonic() < deadline:
            time.sleep(0.25)
        assert healthy(nodes["p1"], "r1") == 0
