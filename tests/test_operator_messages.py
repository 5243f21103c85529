"""What an operator is told about a wrong --advertise or --registry, and what `serve --help` says about them
(each found by a black-box prober: the message named the wrong thing, or a wrong setup started cleanly)."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import subprocess
import sys
import threading
from contextlib import contextmanager

import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.cluster.registry import RegistryError, open_registry
from gateway.cluster.settings_check import node_id_of
from gateway.config import ConfigError, load_settings

SECRET = "0123456789abcdef0123"
FORMS = ("sqlite:///path/registry.db", "etcd://host:port[,host:port...]", "etcds://host:port[,...]?ca=/path/ca.pem")
UNREACHABLE_HINT = "check that etcd is running there and that --registry / GATEWAY_REGISTRY names its client URLs"
TLS_HINT = "is this etcd serving TLS? use etcd:// for plain HTTP"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in [n for n in os.environ if n.upper().startswith("GATEWAY_")]:
        monkeypatch.delenv(name)


def cluster_node(tmp_path, **settings):
    """A cluster node's settings (plain HTTP between nodes, as in tests), with ``settings`` on top."""
    given = {"access_key": "a", "secret_key": "bbbbbbbb", "data_dir": str(tmp_path / "cv"), "insecure_peers": True,
             "cluster_secret": SECRET, "registry": f"sqlite:///{tmp_path}/registry.db", **settings}
    return load_settings(None, **given)


def refusal(tmp_path, **settings) -> str:
    with pytest.raises(ConfigError) as refused:
        cluster_node(tmp_path, **settings)
    return str(refused.value)


def gateway(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("GATEWAY_")}
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60,
                          env={**clean, "GATEWAY_CLUSTER_SECRET": SECRET, **(env or {})})


@contextmanager
def held_port():
    """A loopback port in 26000-26999 bound but not listening: connections to it are refused."""
    ports = list(range(26000, 27000))
    random.shuffle(ports)
    for port in ports:
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        try:
            yield sock
        finally:
            sock.close()
        return
    raise RuntimeError("no free port in 26000-26999")


@contextmanager
def plain_server(answer: bytes | None):
    """A server that is not TLS on a port of held_port(): it reads what the client sends, then answers
    ``answer`` (an HTTP server's reply to bytes it cannot parse) or, with None, resets the connection,
    as a plain-HTTP etcd does to a TLS ClientHello."""
    with held_port() as sock:
        sock.listen()

        def serve():
            while True:
                try:
                    conn, _ = sock.accept()
                except OSError:  # closed: the test is over
                    return
                with conn:
                    conn.recv(4096)
                    if answer is None:
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
                    else:
                        conn.sendall(answer)

        threading.Thread(target=serve, daemon=True).start()
        yield sock.getsockname()[1]
        sock.shutdown(socket.SHUT_RDWR)


def registry_failure(url: str) -> str:
    """The RegistryError message of reading the node list at ``url``."""
    async def read():
        registry = open_registry(url)
        try:
            await registry.nodes()
        finally:
            await registry.close()

    with pytest.raises(RegistryError) as failed:
        asyncio.run(read())
    return str(failed.value)


# 1. An advertised address without http:// or https://

@pytest.mark.parametrize("value, example", [("127.0.5.15:25105", ", e.g. https://127.0.5.15:25105 "),
                                            ("localhost:25105", ", e.g. https://localhost:25105 "),
                                            ("[::1]:25105", ", e.g. https://[::1]:25105 "),
                                            ("http:127.0.5.15:25105", "the host and the port (")])
def test_an_advertise_without_a_scheme_is_not_a_url(tmp_path, value, example):
    """urlsplit reads "localhost:25105" as scheme "localhost" and path "25105": the message was "has a path
    (25105)", and for 127.0.5.15:25105 "has a path (127.0.5.15:25105)"."""
    message = refusal(tmp_path, advertise=value, port=25105)
    assert f"advertise {value!r} is not a URL like https://10.0.0.2:8086" in message, message
    assert "has a path" not in message and "(--advertise, GATEWAY_ADVERTISE)" in message
    assert example in message, message


def test_serve_says_an_advertise_without_a_scheme_is_not_a_url_as_cluster_join_does(tmp_path):
    registry = f"sqlite:///{tmp_path}/registry.db"
    served = gateway("serve", "--print-config", "--registry", registry, "--insecure-peers", "--access-key", "a",
                     "--secret-key", "bbbbbbbb", "--data-dir", str(tmp_path / "cv"), "--port", "25105",
                     "--advertise", "localhost:25105")
    joined = gateway("cluster", "join", "--registry", registry, "--advertise", "localhost:25105")
    assert served.returncode == 2 and joined.returncode == 2
    for result in (served, joined):
        assert "'localhost:25105' is not a URL like https://10.0.0.2:8086" in result.stderr, result.stderr


# 2. An advertised address without a port

@pytest.mark.parametrize("scheme, default", [("http", 80), ("https", 443)])
def test_an_advertise_without_a_port_is_refused_when_the_node_listens_on_another(tmp_path, scheme, default):
    """`--advertise http://127.0.5.15` on a node listening on 25105 started and registered port 80, where
    nothing listens: every miss anywhere in the cluster was a 503 naming that node."""
    message = refusal(tmp_path, advertise=f"{scheme}://127.0.5.15", port=25105)
    assert (f"advertise '{scheme}://127.0.5.15' has no port, which means port {default} (the {scheme}:// default), "
            "but this node listens on port 25105: write the port, e.g. --advertise "
            f"{scheme}://127.0.5.15:25105 (GATEWAY_ADVERTISE)") in message, message


def test_an_advertise_with_a_port_or_the_default_one_is_accepted(tmp_path):
    """A written port other than the listen port stays allowed (a proxy or NAT in front forwards it), and so
    does no port when the scheme's default is the listen port. The default node id is host:port once the
    port is written."""
    written = cluster_node(tmp_path, advertise="http://127.0.5.15:25105", port=25105)
    assert node_id_of(written) == "127.0.5.15:25105"
    assert cluster_node(tmp_path, advertise="http://127.0.5.15:8080", port=25105).advertise.endswith(":8080")
    assert cluster_node(tmp_path, advertise="http://127.0.5.15", port=80).advertise == "http://127.0.5.15"
    assert cluster_node(tmp_path, advertise="http://[::1]", port=80).advertise == "http://[::1]"
    message = refusal(tmp_path, advertise="http://[::1]/", port=25105)
    assert "e.g. --advertise http://[::1]:25105 " in message, message


# 3. serve --help

def test_serve_help_says_what_a_node_without_a_role_does_and_every_registry_form():
    """--role said "none: a stand-alone node", but a node given --registry and no role joins (as primary
    when it is the first); --registry left out etcds://."""
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split()).replace("stand- alone", "stand-alone")  # click may wrap at the hyphen
    assert "none: a stand-alone node" not in text
    assert ("Without it, a node given --registry keeps the role the registry has for it, else joins as primary when "
            "the cluster has none yet (the first node) and as redundant after; a node with neither --role nor "
            "--registry is stand-alone") in text, text
    assert "sqlite:///path/registry.db" in text and "etcd://host:port[,host:port...]" in text
    assert "etcds://host:port[,...][?ca=/path/ca.pem] for etcd over TLS" in text, text


# 4. Registry URLs and registries that cannot be reached

@pytest.mark.parametrize("value, likely", [("127.0.5.1:25001", "; for etcd at 127.0.5.1:25001: etcd://127.0.5.1:25001"),
                                           ("", ""), ("/var/lib/registry.db", "sqlite:///var/lib/registry.db")])
def test_a_registry_without_a_scheme_is_named_with_the_forms_it_takes(tmp_path, value, likely):
    """`--registry 127.0.5.1:25001` and `--registry ''` said "no registry plugin for this://"."""
    for message in (refusal(tmp_path, registry=value), str(pytest.raises(ValueError, open_registry, value).value)):
        assert f"registry {value!r} is not a registry URL: give " in message, message
        assert all(form in message for form in FORMS), message
        assert "this://" not in message and likely in message


def test_cluster_status_names_a_registry_without_a_scheme():
    result = CliRunner().invoke(main, ["cluster", "status", "--registry", "127.0.5.1:25001"])
    assert result.exit_code == 1
    assert "error: registry '127.0.5.1:25001' is not a registry URL" in result.stderr, result.stderr
    assert all(form in result.stderr for form in FORMS)


def test_an_unknown_registry_scheme_still_names_the_installed_ones_and_the_forms():
    message = str(pytest.raises(ValueError, open_registry, "nosuch://x").value)
    assert "no registry plugin for nosuch:// (installed: " in message and all(form in message for form in FORMS)


@pytest.mark.parametrize("answer", [None, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"],
                         ids=["reset", "http-answer"])
def test_etcds_at_a_plain_http_etcd_says_the_tls_handshake_failed(answer):
    """etcds:// pointed at an etcd serving plain HTTP said "Cannot connect to host ... ssl:default [None]"."""
    with plain_server(answer) as port:
        message = registry_failure(f"etcds://127.0.0.1:{port}")
    assert f"https://127.0.0.1:{port}: the TLS handshake failed (" in message, message
    assert TLS_HINT in message and "[None]" not in message
    assert UNREACHABLE_HINT not in message  # it is there: it answered, in plain HTTP


def test_an_unreachable_etcd_says_what_to_check():
    with held_port() as closed:
        port = closed.getsockname()[1]
        for url in (f"etcd://127.0.0.1:{port}", f"etcds://127.0.0.1:{port}"):
            message = registry_failure(url)
            assert message.startswith(f"etcd registry {url}: no endpoint answered /v3/kv/range: ") and \
                f"127.0.0.1:{port}: Cannot connect" in message, message
            assert message.endswith(f"; {UNREACHABLE_HINT}") and TLS_HINT not in message, message
        status = CliRunner().invoke(main, ["cluster", "status", "--registry", f"etcd://127.0.0.1:{port}"])
        assert status.exit_code == 1 and UNREACHABLE_HINT in status.stderr, status.stderr


def test_serve_with_an_unreachable_etcd_says_what_to_check(tmp_path):
    with held_port() as closed, held_port() as listen:
        port = listen.getsockname()[1]
        listen.close()  # free again for the gateway to listen on
        result = gateway("serve", "--registry", f"etcd://127.0.0.1:{closed.getsockname()[1]}", "--insecure-peers",
                         "--access-key", "a", "--secret-key", "bbbbbbbb", "--data-dir", str(tmp_path / "cv"),
                         "--port", str(port))
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot join the cluster: etcd registry") and UNREACHABLE_HINT in last, last
