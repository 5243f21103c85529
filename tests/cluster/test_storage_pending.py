"""A storing node whose remote store does not answer at start (services/pending.py) in a cluster.

The node starts without that backend. Before it published so, the primary and the proxies went on
placing new objects on it, and each of those writes was a 503 while another node could take it.
"""

from __future__ import annotations

import subprocess
import sys

from gateway.testing.samba import Smbd

from .conftest import ClusterNodes, wait_for


def test_writes_go_around_a_node_whose_store_has_not_answered_and_reach_it_once_it_does(tmp_path):
    smbd = Smbd(tmp_path / "smbd")  # r1's NAS: its port is chosen, nothing listens yet
    nodes = ClusterNodes(tmp_path, f"sqlite:///{tmp_path}/registry.db")
    try:
        nodes.add("p1", "primary")
        # r1 keeps its objects on SMB, in a backend of the same name as the others' ("local").
        nodes.add("r1", "redundant", config=smbd.toml("local", timeout=3, connect_timeout=2))
        nodes.add("x1", "proxy")
        nodes.wait_known(3)
        log = nodes["r1"].log_path.read_text()
        assert "is not answering" in log and "starting without it" in log, log

        def pending_seen_by(node: str) -> list:
            return next(n for n in nodes.admin(node)["nodes"] if n["node_id"] == "r1")["info"].get("storage_pending")

        for node in ("p1", "x1"):
            wait_for(lambda node=node: pending_seen_by(node) == ["local"], 15, f"{node} seeing r1's store pending")
        assert {row["node_id"]: row["storage_pending"] for row in nodes.status()}["r1"] == ["local"]  # cluster status
        table = subprocess.run([sys.executable, "-m", "gateway", "cluster", "status", "--registry", nodes.registry],
                               capture_output=True, text=True, timeout=30)
        assert "store down: local" in table.stdout, table.stdout
        primary, proxy = nodes["p1"].client(), nodes["x1"].client()
        primary.create_bucket(Bucket="frames")
        # Every write succeeds: none is placed on r1 (half of them were, each a 503).
        for i in range(20):
            primary.put_object(Bucket="frames", Key=f"p/{i}", Body=b"via the primary %d" % i)
            proxy.put_object(Bucket="frames", Key=f"x/{i}", Body=b"via the proxy %d" % i)
        # r1 serves them all, by relay (its own store is not there).
        r1 = nodes["r1"].client()
        for i in range(20):
            assert r1.get_object(Bucket="frames", Key=f"p/{i}")["Body"].read() == b"via the primary %d" % i
            assert r1.get_object(Bucket="frames", Key=f"x/{i}")["Body"].read() == b"via the proxy %d" % i

        smbd.start()
        for node in ("p1", "x1"):
            wait_for(lambda node=node: pending_seen_by(node) == [], 60, f"{node} seeing r1's store started")
        assert "answers now; its buckets are served again" in nodes["r1"].log_path.read_text()
        # r1 stores again: a write through it lands on its share (the bucket made there on the way).
        r1.put_object(Bucket="frames", Key="on-r1", Body=b"stored on the NAS")
        assert primary.get_object(Bucket="frames", Key="on-r1")["Body"].read() == b"stored on the NAS"
        assert any(smbd.share_dir.rglob("*")), "nothing was written to r1's share"
    finally:
        nodes.stop()
        smbd.stop()
