"""`gateway cluster tls init` and relaying over HTTPS with certificates checked against the cluster CA."""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import sys
import time
import urllib.request

from cryptography import x509

from gateway.testing.server import GatewayProcess

from .conftest import NODE_ENV


def tls_init(directory, *nodes: str) -> None:
    out = subprocess.run([sys.executable, "-m", "gateway", "cluster", "tls", "init", "--dir", str(directory),
                          *[arg for n in nodes for arg in ("--node", f"{n}=127.0.0.1,localhost")]],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_tls_init_writes_a_ca_node_certificates_and_a_secret(tmp_path):
    tls_init(tmp_path, "n1", "n2")
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    for node in ("n1", "n2"):
        cert = x509.load_pem_x509_certificate((tmp_path / f"{node}.pem").read_bytes())
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "localhost" in names.get_values_for_type(x509.DNSName)
        assert (tmp_path / f"{node}-key.pem").stat().st_mode & 0o077 == 0
    assert len((tmp_path / "cluster-secret").read_text().strip()) == 64
    before = (tmp_path / "ca.pem").read_bytes()
    tls_init(tmp_path, "n3")  # a later node joins: the CA is kept
    assert (tmp_path / "ca.pem").read_bytes() == before


def test_tls_init_reissued_key_is_private_whatever_the_old_file_allowed(tmp_path):
    """A node certificate issued again writes a new key over the old file: that file's mode used to
    stay, so a key once copied with 0644 got its successor world-readable too."""
    tls_init(tmp_path, "n1")
    os.chmod(tmp_path / "n1-key.pem", 0o644)
    before = (tmp_path / "n1-key.pem").read_bytes()
    tls_init(tmp_path, "n1")
    assert (tmp_path / "n1-key.pem").read_bytes() != before
    assert (tmp_path / "n1-key.pem").stat().st_mode & 0o777 == 0o600


def test_tls_init_refuses_what_would_break_the_cluster_and_says_why(tmp_path):
    def run(directory, *specs):
        return subprocess.run([sys.executable, "-m", "gateway", "cluster", "tls", "init", "--dir", str(directory),
                               *[arg for spec in specs for arg in ("--node", spec)]],
                              capture_output=True, text=True, timeout=60)

    for spec, says in (("../evil=127.0.0.1", "node name '../evil'"), ("n1=,,", "at least one host"),
                       ("n1=not a host!", "neither an IP address nor a DNS name")):
        out = run(tmp_path / "new", spec)
        assert out.returncode == 1 and says in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / "evil.pem").exists() and not (tmp_path / "new").exists()
    tls_init(tmp_path / "ca", "n1")
    before = (tmp_path / "ca" / "ca.pem").read_bytes()
    (tmp_path / "ca" / "ca-key.pem").rename(tmp_path / "ca-key.saved")
    out = run(tmp_path / "ca", "n2=127.0.0.1")  # the CA key is missing: no new CA over the old one
    assert out.returncode == 1 and "ca-key.pem is not" in out.stderr, out.stderr
    assert (tmp_path / "ca" / "ca.pem").read_bytes() == before and not (tmp_path / "ca" / "n2.pem").exists()
    (tmp_path / "ca" / "ca-key.pem").write_text("garbage")
    out = run(tmp_path / "ca", "n2=127.0.0.1")
    assert out.returncode == 1 and "not an unencrypted PEM private key" in out.stderr, out.stderr
    (tmp_path / "ca-key.saved").rename(tmp_path / "ca" / "ca-key.pem")
    tls_init(tmp_path / "ca", "n2")
    (tmp_path / "file").write_text("x")
    out = run(tmp_path / "file" / "sub", "n1=127.0.0.1")
    assert out.returncode == 1 and "cannot write to" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_plain_http_between_nodes_needs_the_insecure_flag(tmp_path):
    out = subprocess.run([sys.executable, "-m", "gateway", "serve", "--role", "primary", "--registry",
                          f"sqlite:///{tmp_path}/r.db", "--access-key", "a", "--secret-key", "b", "--print-config"],
                         capture_output=True, text=True, timeout=60, env={**NODE_ENV, "PATH": "/usr/bin:/bin"})
    assert out.returncode != 0 and "--insecure-peers" in out.stderr


def test_relay_over_https(tmp_path):
    tls_init(tmp_path / "tls", "p1", "r1")
    registry = f"sqlite:///{tmp_path}/registry.db"
    secret = (tmp_path / "tls" / "cluster-secret").read_text().strip()
    nodes = {}
    try:
        # r1 first, so p1 finds it in the registry at start (no wait for a reload).
        for name, role in (("r1", "redundant"), ("p1", "primary")):
            args = ["--role", role, "--registry", registry, "--tls-cert", str(tmp_path / "tls" / f"{name}.pem"),
                    "--tls-key", str(tmp_path / "tls" / f"{name}-key.pem"), "--tls-ca", str(tmp_path / "tls" / "ca.pem")]
            env = {**NODE_ENV, "GATEWAY_CLUSTER_SECRET": secret, "GATEWAY_NODE_ID": name}
            nodes[name] = GatewayProcess(tmp_path / name, args=args, env=env, scheme="https",
                                         ca=tmp_path / "tls" / "ca.pem")
            nodes[name].start()
        p1, r1 = nodes["p1"].client(), nodes["r1"].client()
        p1.create_bucket(Bucket="tls")
        r1.head_bucket(Bucket="tls")
        r1.put_object(Bucket="tls", Key="secret.jpg", Body=b"over https")
        assert p1.get_object(Bucket="tls", Key="secret.jpg")["Body"].read() == b"over https"
        # Objects the local backend keeps as open files (64 KiB to 1 MiB) go through the TLS layer,
        # not sendfile: read directly from r1 and relayed by p1, after they settled into the cache.
        bodies = {"face.jpg": os.urandom(40_000), "event.jpg": os.urandom(300_000)}
        for key, body in bodies.items():
            r1.put_object(Bucket="tls", Key=key, Body=body)
        time.sleep(0.2)
        for _ in range(3):
            for key, body in bodies.items():
                assert r1.get_object(Bucket="tls", Key=key)["Body"].read() == body
                assert p1.get_object(Bucket="tls", Key=key)["Body"].read() == body
        part = r1.get_object(Bucket="tls", Key="event.jpg", Range="bytes=1000-1999")["Body"].read()
        assert part == bodies["event.jpg"][1000:2000]
        # The later reads through p1 were passed through over the TLS connections (one of them, over
        # 256 KiB, streamed): docs/cluster.md "Pass-through reads".
        context = ssl.create_default_context(cafile=str(tmp_path / "tls" / "ca.pem"))
        with urllib.request.urlopen(nodes["p1"].endpoint + "/metrics", context=context, timeout=10) as response:
            metrics = response.read().decode()
        assert 'gateway_cluster_pass_through_reads_total{outcome="passed"} 4' in metrics, metrics
        # Once its pipelined connection to r1 is up (opened by the first pass-through), reads go on it,
        # over TLS too: docs/cluster.md "Pipelined pass-through".
        time.sleep(0.5)
        for _ in range(3):
            assert p1.get_object(Bucket="tls", Key="face.jpg")["Body"].read() == bodies["face.jpg"]
        with urllib.request.urlopen(nodes["p1"].endpoint + "/metrics", context=context, timeout=10) as response:
            metrics = response.read().decode()
        pipelined = re.search(r"^gateway_cluster_pass_through_pipelined_total (\S+)$", metrics, re.MULTILINE)
        assert pipelined and float(pipelined.group(1)) >= 3, metrics
        # `gateway cluster repair` speaks HTTPS to its node too, with the node's certificate and CA.
        repair = subprocess.run([sys.executable, "-m", "gateway", "cluster", "repair", "--port", str(nodes["p1"].port),
                                 "--data-dir", str(nodes["p1"].data_dir), *nodes["p1"].args],
                                env={**os.environ, **nodes["p1"].env}, capture_output=True, text=True, timeout=60)
        assert repair.returncode == 0, repair.stderr
        assert "3 keys in 1 bucket checked; 0 keys with an older copy repaired" in repair.stderr
        # uvicorn waits for open TLS keep-alive connections at shutdown: close them first.
        p1.close()
        r1.close()
    finally:
        for node in reversed(nodes.values()):  # p1 first: its relay connections to r1 close with it
            node.stop()


def test_a_node_with_another_clusters_ca_refuses_to_start_and_does_not_join(tmp_path):
    """A node given another CA (and a certificate of it) registered and heartbeated: the others could
    not verify it nor it them, so every miss through any node was a 503 naming it, and `cluster status`
    showed it ok and the healthy nodes slow. Like a wrong cluster secret, it refuses to start."""
    from botocore.exceptions import ClientError

    tls_init(tmp_path / "tls", "p1", "r1")
    tls_init(tmp_path / "other", "r5")
    registry = f"sqlite:///{tmp_path}/registry.db"
    secret = (tmp_path / "tls" / "cluster-secret").read_text().strip()

    def node(name: str, role: str, tls_dir) -> GatewayProcess:
        args = ["--role", role, "--registry", registry, "--tls-cert", str(tls_dir / f"{name}.pem"),
                "--tls-key", str(tls_dir / f"{name}-key.pem"), "--tls-ca", str(tls_dir / "ca.pem")]
        env = {**NODE_ENV, "GATEWAY_CLUSTER_SECRET": secret, "GATEWAY_NODE_ID": name}
        return GatewayProcess(tmp_path / name, args=args, env=env, scheme="https", ca=tls_dir / "ca.pem")

    nodes = [node("r1", "redundant", tmp_path / "tls"), node("p1", "primary", tmp_path / "tls")]
    try:
        for gateway in nodes:
            gateway.start()
        wrong = node("r5", "redundant", tmp_path / "other")
        try:
            wrong.start()
        except RuntimeError as exc:
            message = str(exc)
        else:
            nodes.append(wrong)
            raise AssertionError("a node with another cluster's CA started")
        assert "gateway exited with 2" in message, message[-3000:]
        assert "could not verify" in message and "--tls-ca" in message, message[-3000:]
        assert "did not join the cluster" in message, message[-3000:]
        listed = subprocess.run([sys.executable, "-m", "gateway", "cluster", "status", "--json", "--registry", registry],
                                capture_output=True, text=True, timeout=60)
        assert "r5" not in listed.stdout and "p1" in listed.stdout, listed.stdout + listed.stderr
        p1 = nodes[1].client()
        p1.create_bucket(Bucket="cas")
        try:
            p1.head_object(Bucket="cas", Key="never-written")
        except ClientError as exc:
            assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        else:
            raise AssertionError("a missing key was found")
        p1.close()
    finally:
        for gateway in nodes:
            gateway.stop()


def test_a_plain_http_node_is_refused_by_a_cluster_of_https_nodes(tmp_path):
    """A node started on plain HTTP (--insecure-peers) next to nodes that take only HTTPS peers joined,
    and `cluster status` showed it ok, while every other node left it out of its node list: what it
    stored was 200 to its client and 404 through every other node. It refuses to start, saying why."""
    tls_init(tmp_path / "tls", "p1")
    registry = f"sqlite:///{tmp_path}/registry.db"
    tls = tmp_path / "tls"
    env = {**NODE_ENV, "GATEWAY_CLUSTER_SECRET": (tls / "cluster-secret").read_text().strip()}
    p1 = GatewayProcess(tmp_path / "p1", scheme="https", ca=tls / "ca.pem", env={**env, "GATEWAY_NODE_ID": "p1"},
                        args=["--role", "primary", "--registry", registry, "--tls-cert", str(tls / "p1.pem"),
                              "--tls-key", str(tls / "p1-key.pem"), "--tls-ca", str(tls / "ca.pem")])
    plain = GatewayProcess(tmp_path / "t1", env={**env, "GATEWAY_NODE_ID": "t1"},
                           args=["--role", "redundant", "--registry", registry, "--insecure-peers",
                                 "--tls-ca", str(tls / "ca.pem")])
    try:
        p1.start()
        try:
            plain.start()
        except RuntimeError as exc:
            message = str(exc)
        else:
            raise AssertionError("a plain-HTTP node joined a cluster of HTTPS nodes")
        assert "gateway exited with 2" in message, message[-3000:]
        assert "advertises plain HTTP" in message and "p1" in message and "--insecure-peers" in message, \
            message[-3000:]
        listed = subprocess.run([sys.executable, "-m", "gateway", "cluster", "status", "--json", "--registry",
                                 registry], capture_output=True, text=True, timeout=60)
        assert "t1" not in listed.stdout and "p1" in listed.stdout, listed.stdout + listed.stderr
    finally:
        plain.stop()
        p1.stop()
