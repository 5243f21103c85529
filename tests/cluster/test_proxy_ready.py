"""A proxy's /readyz says whether a storing node answers it: with every one down it said ready while
it answered every object request 503, and a load balancer checking /readyz kept it in rotation."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from .conftest import start_cluster


def _readyz(node) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(node.endpoint + "/readyz", timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_proxy_is_not_ready_while_no_storing_node_answers_it(tmp_path):
    cluster = start_cluster(tmp_path / "c", f"sqlite:///{tmp_path}/registry.db")
    try:
        status, body = _readyz(cluster["x1"])
        assert status == 200 and body["ready"] is True, body
        cluster["p1"].stop()
        cluster["r1"].stop()
        status, body = _readyz(cluster["x1"])
        assert status == 200, body  # r2 answers: the proxy serves through it
        cluster["r2"].stop()
        status, body = _readyz(cluster["x1"])
        assert status == 503 and body["ready"] is False, body
        reason = " ".join(body["backends"].values())
        assert "no storing node answers this proxy now" in reason and "r2" in reason and "p1" in reason, body
        cluster.restart("r1")
        status, body = _readyz(cluster["x1"])
        assert status == 200 and body["ready"] is True, body
    finally:
        cluster.stop()
