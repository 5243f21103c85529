"""TLS between nodes over its life: what `gateway cluster tls init` refuses to write, node certificates
their peers would refuse (expired, for another host), and etcd over HTTPS with a private CA."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.cluster.registry import RegistryError, open_registry
from gateway.testing.server import free_port

from .conftest import SECRET


def gateway(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run([sys.executable, "-m", "gateway", *map(str, args)], capture_output=True, text=True,
                          timeout=60, env={**clean, **(env or {})})


def tls_init(directory: Path, *specs: str) -> subprocess.CompletedProcess:
    return gateway("cluster", "tls", "init", "--dir", directory, *[a for spec in specs for a in ("--node", spec)])


def test_tls_init_refuses_names_whose_files_are_the_cas_or_a_key(tmp_path):
    """A node named `ca` wrote its certificate and key over ca.pem and ca-key.pem: the CA key was gone and
    no node could start again. One named `n1-key` wrote a certificate into n1's key file."""
    assert tls_init(tmp_path, "n1=127.0.0.1").returncode == 0
    before = {name: (tmp_path / name).read_bytes() for name in ("ca.pem", "ca-key.pem", "n1.pem", "n1-key.pem")}
    for spec in ("ca=127.0.0.1", "CA=127.0.0.1", "n1-key=127.0.0.1", "cluster-secret=127.0.0.1"):
        result = tls_init(tmp_path, spec)
        assert result.returncode == 1 and "name the node otherwise" in result.stderr, (spec, result.stderr)
    result = tls_init(tmp_path, "n2=10.0.0.1", "n2=10.0.0.2")  # the first was silently dropped
    assert result.returncode == 2 and "given twice" in result.stderr, result.stderr
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert not (tmp_path / "n2.pem").exists()


def test_tls_init_takes_ipv6_in_brackets_and_refuses_a_host_with_a_port(tmp_path):
    """`[::1]` became the DNS name "[::1]" and `10.0.0.1:8086` a DNS name too: certificates no peer could
    ever match."""
    for host in ("10.0.0.1:8086", "10.0.0.256", "999.1.1.1"):  # a port; mistyped addresses, no DNS names
        result = tls_init(tmp_path, f"bad={host}")
        assert result.returncode == 1 and "without a scheme or a port" in result.stderr, (host, result.stderr)
    assert tls_init(tmp_path, "v6=[::1],::2,node.lan").returncode == 0
    names = x509.load_pem_x509_certificate((tmp_path / "v6.pem").read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("::1"), ipaddress.ip_address("::2")]
    assert names.get_values_for_type(x509.DNSName) == ["node.lan"]


def test_tls_init_signs_with_the_ca_of_a_bundle_whose_key_it_has(tmp_path):
    """While the CA is replaced, ca.pem holds the new CA and the old one (peers trust both): init said its
    key was not the key of ca.pem."""
    assert tls_init(tmp_path / "old", "n1=127.0.0.1").returncode == 0
    assert tls_init(tmp_path / "new", "n1=127.0.0.1").returncode == 0
    own = (tmp_path / "old" / "ca.pem").read_bytes()
    (tmp_path / "old" / "ca.pem").write_bytes((tmp_path / "new" / "ca.pem").read_bytes() + own)
    result = tls_init(tmp_path / "old", "n2=127.0.0.1")
    assert result.returncode == 0, result.stderr
    issued = x509.load_pem_x509_certificate((tmp_path / "old" / "n2.pem").read_bytes())
    issued.verify_directly_issued_by(x509.load_pem_x509_certificate(own))


def _serve_check(tmp_path: Path, cert: Path, key: Path, ca: Path, advertise: str) -> subprocess.CompletedProcess:
    return gateway("serve", "--access-key", "a", "--secret-key", "bbbbbbbb", "--data-dir", tmp_path / "cv",
                   "--role", "redundant", "--registry", f"sqlite:///{tmp_path}/r.db", "--advertise", advertise,
                   "--tls-cert", cert, "--tls-key", key, "--tls-ca", ca, "--print-config",
                   env={"GATEWAY_CLUSTER_SECRET": SECRET})


def _certificate(directory: Path, name: str, valid_for: datetime.timedelta) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 the cluster CA issued, valid until ``valid_for`` from now."""
    ca_key = serialization.load_pem_private_key((directory / "ca-key.pem").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "old")]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=30)).not_valid_after(now + valid_for)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(ca_key, hashes.SHA256()))
    (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{name}-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return directory / f"{name}.pem", directory / f"{name}-key.pem"


def test_a_node_certificate_its_peers_would_refuse_stops_the_start_and_says_why(tmp_path):
    """A certificate for another host than the one the node advertises was admitted (every miss through any
    node then a 503 naming it); an expired one was called "not issued by the CA"; an http:// advertise of a
    node serving HTTPS was told to set the TLS options it had set."""
    tls = tmp_path / "tls"
    assert tls_init(tls, "local=localhost", "n1=127.0.0.1").returncode == 0
    ca = tls / "ca.pem"
    result = _serve_check(tmp_path, tls / "local.pem", tls / "local-key.pem", ca, "https://127.0.0.1:8086")
    assert result.returncode == 2, result.stdout
    assert "is not valid for 127.0.0.1, the host this node advertises" in result.stderr, result.stderr
    assert "--node NAME=127.0.0.1" in result.stderr and "Traceback" not in result.stderr
    assert _serve_check(tmp_path, tls / "local.pem", tls / "local-key.pem", ca,
                        "https://localhost:8086").returncode == 0  # the name it holds
    cert, key = _certificate(tls, "old", -datetime.timedelta(hours=1))
    result = _serve_check(tmp_path, cert, key, ca, "https://127.0.0.1:8086")
    assert result.returncode == 2 and "expired on" in result.stderr and "not issued" not in result.stderr, \
        result.stderr
    standalone = gateway("serve", "--access-key", "a", "--secret-key", "bbbbbbbb", "--data-dir", tmp_path / "cv",
                         "--tls-cert", cert, "--tls-key", key, "--print-config")
    assert "expired on" in standalone.stderr and "in 0 days" not in standalone.stderr, standalone.stderr
    cert, key = _certificate(tls, "soon", datetime.timedelta(days=10, hours=1))  # no warning before it expired
    result = _serve_check(tmp_path, cert, key, ca, "https://127.0.0.1:8086")
    assert result.returncode == 0 and "expires on" in result.stderr and "in 10 days" in result.stderr, result.stderr
    result = _serve_check(tmp_path, tls / "n1.pem", tls / "n1-key.pem", ca, "http://127.0.0.1:8086")
    assert result.returncode == 2 and "advertise https://" in result.stderr, result.stderr
    result = _serve_check(tmp_path, tls / "n1.pem", tls / "n1-key.pem", ca, "https://127.0.0.1:8086")
    assert result.returncode == 0 and "expires on" not in result.stderr, result.stderr  # ten years


def test_etcd_over_https_with_the_clusters_own_ca(tmp_path):
    """etcds:// verified etcd's certificate against the system's CAs only: one from the cluster CA (or any
    private CA) could not be used at all, and the error did not say what to do. ?ca= names the CA."""
    binary = shutil.which("etcd")
    if binary is None:
        pytest.fail("etcd is not installed: run `make test-deps` (Debian package etcd-server)")
    tls = tmp_path / "tls"
    assert tls_init(tls, "etcd=127.0.0.1").returncode == 0
    client, peer = free_port(), free_port()
    with open(tmp_path / "etcd.log", "wb") as log:
        process = subprocess.Popen([
            binary, "--name", "m0", "--data-dir", str(tmp_path / "m0"),
            "--listen-client-urls", f"https://127.0.0.1:{client}", "--advertise-client-urls", f"https://127.0.0.1:{client}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"m0=http://127.0.0.1:{peer}", "--cert-file", str(tls / "etcd.pem"),
            "--key-file", str(tls / "etcd-key.pem")], stdout=log, stderr=subprocess.STDOUT)
    try:
        context = ssl.create_default_context(cafile=str(tls / "ca.pem"))
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{client}/health", timeout=1, context=context):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError((tmp_path / "etcd.log").read_text()[-2000:]) from None
                time.sleep(0.2)

        async def nodes(url):
            registry = open_registry(url)
            try:
                await registry.register("n1", "primary", "https://127.0.0.1:9")
                return [n.node_id for n in await registry.nodes()]
            finally:
                await registry.close()

        with pytest.raises(RegistryError, match=r"not trusted .*etcds://host:2379\?ca=/path/ca.pem"):
            asyncio.run(nodes(f"etcds://127.0.0.1:{client}"))
        assert asyncio.run(nodes(f"etcds://127.0.0.1:{client}?ca={tls / 'ca.pem'}")) == ["n1"]
        status = gateway("cluster", "status", "--json", "--registry", f"etcds://127.0.0.1:{client}?ca={tls / 'ca.pem'}")
        assert status.returncode == 0 and '"n1"' in status.stdout, status.stderr
        for bad, says in ((f"etcd://127.0.0.1:{client}?ca={tls / 'ca.pem'}", "?ca= is for etcds://"),
                          (f"etcds://127.0.0.1:{client}?ca={tmp_path / 'none.pem'}", "is not a readable PEM CA file"),
                          (f"etcds://127.0.0.1:{client}?user=x", "unknown parameter 'user'")):
            with pytest.raises(ValueError, match=says.replace("?", r"\?")):
                open_registry(bad)
    finally:
        process.kill()
        process.wait(timeout=10)
