"""The address a node gives its peers: derived for IPv6, refused when it names no machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .conftest import SECRET


def gateway(*args: str, tmp_path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                          env={**env, "GATEWAY_CLUSTER_SECRET": SECRET}, cwd=tmp_path, timeout=60)


def test_a_node_on_an_ipv6_address_advertises_it_in_brackets(tmp_path):
    out = gateway("serve", "--print-config", "--host", "::1", "--port", "8086", "--access-key", "a",
                  "--secret-key", "b" * 16, "--data-dir", str(tmp_path / "cv"),
                  "--registry", f"sqlite:///{tmp_path}/r.db", "--insecure-peers", tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr  # was: "advertise 'http://::1:8086' must be an http:// URL"
    from gateway.cluster.settings_check import advertised_url
    from gateway.config import load_settings

    settings = load_settings(None, host="::1", port=8086, data_dir=str(tmp_path / "cv"), allow_anonymous=True)
    assert advertised_url(settings) == "http://[::1]:8086"
    assert json.loads(out.stdout)["host"] == "::1"


def test_cluster_join_refuses_an_address_that_names_no_machine(tmp_path):
    for address in ("http://0.0.0.0:8086", "http://[::]:8086"):
        out = gateway("cluster", "join", "--registry", f"sqlite:///{tmp_path}/r.db", "--advertise", address,
                      "--role", "redundant", tmp_path=tmp_path)
        assert out.returncode == 2, out.stderr
        assert "names no machine" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / "r.db").exists()  # nothing registered
