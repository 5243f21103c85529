"""Operator errors of the `gateway` command: each one a clear message, the right exit code, no traceback.

Found by probing the CLI the way a newcomer or an operator at 3 a.m. meets it (real processes throughout).
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import sys

import pytest

from cluster.test_cli import gateway as gateway_cli  # in-process `gateway ...` (CliRunner)
from gateway.testing.server import free_port
from test_config import run_cli  # `python -m gateway ...` in a subprocess

CLUSTER_ENV = {"GATEWAY_CLUSTER_SECRET": "probe2-cluster-secret-0123456789"}


def env_with(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return {**env, **extra}


def no_traceback(result) -> None:
    assert "Traceback" not in result.stderr, result.stderr


def as_nobody(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`python -m gateway ...` as an unprivileged user (root reads every file): setpriv when root."""
    command = [sys.executable, "-m", "gateway", *args]
    if os.getuid() == 0:
        nobody = pwd.getpwnam("nobody")
        command = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, cwd="/")


def test_an_unreadable_config_file_is_a_message_not_a_traceback(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text('access_key = "a"\nsecret_key = "b"\n')
    config.chmod(0o600)
    tmp_path.chmod(0o755)
    env = env_with(GATEWAY_CONFIG=str(config))
    for args in (["serve", "--print-config"], ["mount", "http://127.0.0.1:1", str(tmp_path)]):
        result = as_nobody(*args, env=env)
        no_traceback(result)
        assert result.returncode == 2, (args, result.stderr)
        assert f"config file {config} cannot be read: Permission denied" in result.stderr, result.stderr


def test_a_config_path_that_is_a_directory_is_not_called_missing(tmp_path):
    result = run_cli("serve", "--print-config", env=env_with(GATEWAY_CONFIG=str(tmp_path)))
    assert result.returncode == 2
    assert f"config file {tmp_path} is a directory" in result.stderr, result.stderr
    assert "does not exist" not in result.stderr


def test_a_backend_without_a_type_says_the_type_is_missing(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(f'access_key = "a"\nsecret_key = "b"\ndefault_backend = "s"\n[backends.s]\n'
                      f'root = "{tmp_path}/cv"\n')
    result = run_cli("serve", "--config", str(config), "--print-config", env=env_with())
    assert result.returncode == 2
    assert "backends.s has no type" in result.stderr, result.stderr
    assert "None" not in result.stderr


@pytest.mark.parametrize("ca_text", ["not a certificate\n", "key", "node certificate"])
def test_a_tls_ca_that_is_not_a_certificate_is_named(tmp_path, ca_text):
    run_cli("cluster", "tls", "init", "--dir", str(tmp_path), "--node", "n1=127.0.0.1")
    ca = tmp_path / "bogus-ca.pem"
    if ca_text == "key":  # a private key given as the CA: an easy slip with five PEM files side by side
        ca = tmp_path / "n1-key.pem"
    elif ca_text == "node certificate":  # CA:FALSE: OpenSSL loads it, and it verifies no peer
        ca = tmp_path / "n1.pem"
    else:
        ca.write_text(ca_text)
    result = run_cli("serve", "--access-key", "a", "--secret-key", "b", "--data-dir", str(tmp_path / "cv"),
                     "--role", "primary", "--registry", f"sqlite:///{tmp_path}/r.db",
                     "--advertise", "https://127.0.0.1:8086", "--tls-cert", str(tmp_path / "n1.pem"),
                     "--tls-key", str(tmp_path / "n1-key.pem"), "--tls-ca", str(ca), "--print-config",
                     env=env_with(**CLUSTER_ENV))
    no_traceback(result)
    assert result.returncode == 2, result.stderr
    assert f"invalid setting tls_ca (GATEWAY_TLS_CA): {ca} holds no CA certificate" in result.stderr, result.stderr


def test_a_port_in_use_is_named_and_the_node_never_joins(tmp_path):
    """The listening socket used to be opened after start-up: the node registered in the cluster (as its
    primary, being the first) and only then failed with uvicorn's bare errno line."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    registry = f"sqlite:///{tmp_path}/registry.db"
    try:
        result = run_cli("serve", "--access-key", "a", "--secret-key", "b", "--data-dir", str(tmp_path / "cv"),
                         "--port", str(port), "--role", "primary", "--registry", registry, "--insecure-peers",
                         env=env_with(**CLUSTER_ENV))
    finally:
        busy.close()
    assert result.returncode == 2, result.stderr
    assert (f"cannot listen on 127.0.0.1:{port}: the address is in use (another gateway?): stop that process or "
            "choose another --port (GATEWAY_PORT)") in result.stderr, result.stderr
    status = gateway_cli("cluster", "status", "--registry", registry)
    assert status.returncode == 1 and "there is no registry at" in status.stderr, status.stdout
    assert not (tmp_path / "cv").exists()


@pytest.mark.parametrize("host, expected", [
    ("nosuchhost.invalid", "cannot listen on nosuchhost.invalid:{port}: the name does not resolve"),
    ("192.0.2.1", "cannot listen on 192.0.2.1:{port}: the address is not one of this machine's"),
])
def test_a_listen_address_that_cannot_be_used_names_host(tmp_path, host, expected):
    port = free_port()
    result = run_cli("serve", "--access-key", "a", "--secret-key", "b", "--data-dir", str(tmp_path / "cv"),
                     "--host", host, "--port", str(port), env=env_with())
    assert result.returncode == 2, result.stderr
    assert expected.format(port=port) in result.stderr and "--host (GATEWAY_HOST)" in result.stderr, result.stderr


def test_print_config_does_not_care_that_the_port_is_in_use(tmp_path):
    """--print-config checks a config before a restart: the running gateway holds the port then."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        result = run_cli("serve", "--access-key", "a", "--secret-key", "b", "--data-dir", str(tmp_path / "cv"),
                         "--port", str(busy.getsockname()[1]), "--print-config", env=env_with())
    finally:
        busy.close()
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("registry", ["etcd://nohost:99999", "etcd://127.0.0.1:abc", "etcds://10.0.0.1:2379,:2379"])
def test_a_registry_url_with_a_bad_endpoint_is_named(tmp_path, registry):
    result = run_cli("serve", "--access-key", "a", "--secret-key", "b", "--data-dir", str(tmp_path / "cv"),
                     "--role", "primary", "--registry", registry, "--insecure-peers", "--print-config",
                     env=env_with(**CLUSTER_ENV))
    assert result.returncode == 2, result.stdout
    assert f"registry {registry!r}: endpoint" in result.stderr and "host:port" in result.stderr, result.stderr
    status = gateway_cli("cluster", "status", "--registry", registry)
    assert status.returncode == 1
    assert f"registry {registry!r}: endpoint" in status.stderr, status.stderr


def test_cluster_join_help_names_its_environment_variables():
    out = run_cli("cluster", "join", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for variable in ("GATEWAY_REGISTRY", "GATEWAY_ADVERTISE", "GATEWAY_NODE_ID"):
        assert variable in text, variable


def test_a_proxy_says_it_ignores_its_backends(tmp_path):
    """A proxy stores nothing: backends configured for it are not used, which must not be silent."""
    config = tmp_path / "gateway.toml"
    config.write_text(f'access_key = "a"\nsecret_key = "b"\ndefault_backend = "s"\n[backends.s]\ntype = "local"\n'
                      f'root = "{tmp_path}/cv"\n')
    result = run_cli("serve", "--config", str(config), "--role", "proxy", "--registry", f"sqlite:///{tmp_path}/r.db",
                     "--insecure-peers", "--print-config", env=env_with(**CLUSTER_ENV))
    assert result.returncode == 0, result.stderr
    assert "warning: a proxy stores nothing: backend s (local) is not used" in result.stderr, result.stderr


def test_a_node_certificate_another_ca_issued_is_refused(tmp_path):
    """The files of two `cluster tls init` runs mixed: the node trusted its peers (its CA file is the
    cluster's) and joined, but they could not verify its certificate, and every miss through any node
    was a 503 naming it. docs/cluster.md says such a node does not start."""
    run_cli("cluster", "tls", "init", "--dir", str(tmp_path / "one"), "--node", "n1=127.0.0.1")
    run_cli("cluster", "tls", "init", "--dir", str(tmp_path / "two"), "--node", "n1=127.0.0.1")
    result = run_cli("serve", "--access-key", "a", "--secret-key", "bbbbbbbb", "--data-dir", str(tmp_path / "cv"),
                     "--role", "redundant", "--registry", f"sqlite:///{tmp_path}/r.db",
                     "--advertise", "https://127.0.0.1:8086", "--tls-cert", str(tmp_path / "two" / "n1.pem"),
                     "--tls-key", str(tmp_path / "two" / "n1-key.pem"), "--tls-ca", str(tmp_path / "one" / "ca.pem"),
                     "--print-config", env=env_with(**CLUSTER_ENV))
    no_traceback(result)
    assert result.returncode == 2, result.stderr
    assert "was not issued by the CA in tls_ca" in result.stderr, result.stderr
    same = run_cli("serve", "--access-key", "a", "--secret-key", "bbbbbbbb", "--data-dir", str(tmp_path / "cv"),
                   "--role", "redundant", "--registry", f"sqlite:///{tmp_path}/r.db",
                   "--advertise", "https://127.0.0.1:8086", "--tls-cert", str(tmp_path / "one" / "n1.pem"),
                   "--tls-key", str(tmp_path / "one" / "n1-key.pem"), "--tls-ca", str(tmp_path / "one" / "ca.pem"),
                   "--print-config", env=env_with(**CLUSTER_ENV))
    assert same.returncode == 0, same.stderr


def test_a_registry_url_with_a_password_is_refused_without_echoing_it(tmp_path):
    """etcd://root:pass@host was accepted, though the registry never logs in to etcd, and the password
    was printed by --print-config and in every start-up error."""
    registry = "etcd://root:hunter2pass@127.0.0.1:2379"
    result = run_cli("serve", "--access-key", "a", "--secret-key", "bbbbbbbb", "--data-dir", str(tmp_path / "cv"),
                     "--role", "primary", "--registry", registry, "--insecure-peers", "--print-config",
                     env=env_with(**CLUSTER_ENV))
    assert result.returncode == 2, result.stdout
    assert "authentication is not supported" in result.stderr, result.stderr
    assert "hunter2pass" not in result.stderr + result.stdout


def test_weak_keys_and_anonymous_access_beyond_loopback_are_said(tmp_path):
    """Eight spaces passed the 8-character rule beyond loopback, a secret of one space was taken, and
    --allow-anonymous on 0.0.0.0 (anyone may delete everything) started without a word."""
    blank = run_cli("serve", "--host", "0.0.0.0", "--access-key", "a", "--secret-key", " " * 8,
                    "--data-dir", str(tmp_path / "cv"), "--print-config", env=env_with())
    assert blank.returncode == 2, blank.stderr
    config = tmp_path / "gateway.toml"
    config.write_text('[credentials]\nsomeone = " "\n')
    spaces = run_cli("serve", "--config", str(config), "--data-dir", str(tmp_path / "cv"), "--print-config",
                     env=env_with())
    assert spaces.returncode == 2 and "nor only spaces" in spaces.stderr, spaces.stderr
    anonymous = run_cli("serve", "--host", "0.0.0.0", "--allow-anonymous", "--data-dir", str(tmp_path / "cv"),
                        "--print-config", env=env_with())
    assert anonymous.returncode == 0, anonymous.stderr
    assert "warning: allow_anonymous is on" in anonymous.stderr and "reachable from other machines" in anonymous.stderr
