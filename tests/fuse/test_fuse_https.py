"""A mount of a gateway that serves HTTPS with a certificate of a private CA (a cluster's, from
`gateway cluster tls init`): --ca-bundle names the CA. Without it the mount had no way to trust the
gateway: it logged the verify failure, mounted "anyway", and every operation was EIO for good."""

from __future__ import annotations

import ssl
import subprocess
import sys

import pytest

from gateway.fuse.testing import MountProcess
from gateway.testing.server import GatewayProcess


@pytest.fixture
def https_gateway(tmp_path):
    tls = tmp_path / "tls"
    out = subprocess.run([sys.executable, "-m", "gateway", "cluster", "tls", "init", "--dir", str(tls),
                          "--node", "gw=127.0.0.1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    args = ["--tls-cert", str(tls / "gw.pem"), "--tls-key", str(tls / "gw-key.pem")]
    with GatewayProcess(tmp_path / "cv-storage", args=args, scheme="https", ca=tls / "ca.pem") as gw:
        yield gw


def test_a_mount_of_an_https_gateway_trusts_the_ca_it_is_given(https_gateway, tmp_path):
    gw = https_gateway
    gw.client().create_bucket(Bucket="secure")
    gw.client().put_object(Bucket="secure", Key="face.jpg", Body=b"over https")
    untrusted = MountProcess(gw, tmp_path / "untrusted")
    try:
        with pytest.raises(RuntimeError) as refused:
            untrusted.start()
    finally:
        untrusted.stop()  # mounted all the same (the old code): never left behind
    assert "is not trusted by the system's CAs" in str(refused.value) and "--ca-bundle" in str(refused.value), \
        refused.value
    mount = MountProcess(gw, tmp_path / "trusted", ["--ca-bundle", gw.ca])
    mount.start()
    try:
        assert (mount.path / "secure" / "face.jpg").read_bytes() == b"over https"
        (mount.path / "secure" / "written.txt").write_bytes(b"through the mount")
    finally:
        mount.stop()
    assert gw.client().get_object(Bucket="secure", Key="written.txt")["Body"].read() == b"through the mount"
    der = tmp_path / "ca.der"  # a CA in DER, not PEM: loaded by nothing, every operation was EIO
    der.write_bytes(ssl.PEM_cert_to_DER_cert(open(gw.ca).read()))
    mount_env = {"GATEWAY_ACCESS_KEY": gw.access_key, "GATEWAY_SECRET_KEY": gw.secret_key, "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "gateway", "mount", gw.endpoint, str(tmp_path / "d"),
                             "--ca-bundle", str(der)], capture_output=True, text=True, timeout=60, env=mount_env)
    assert result.returncode == 2 and "holds no PEM CA certificate" in result.stderr, result.stderr
    by_name = MountProcess(gw, tmp_path / "by-name", ["--ca-bundle", gw.ca],
                           endpoint=gw.endpoint.replace("127.0.0.1", "localhost"))  # not in the certificate
    try:
        with pytest.raises(RuntimeError) as refused:
            by_name.start()
    finally:
        by_name.stop()
    assert "is not for localhost" in str(refused.value) and "not trusted" not in str(refused.value), refused.value
    plain = subprocess.run([sys.executable, "-m", "gateway", "mount", "http://127.0.0.1:9", str(tmp_path / "p"),
                            "--ca-bundle", gw.ca], capture_output=True, text=True, timeout=60,
                           env={"GATEWAY_ACCESS_KEY": gw.access_key, "GATEWAY_SECRET_KEY": gw.secret_key,
                                "PATH": "/usr/bin:/bin"})
    assert plain.returncode == 2 and "verifies https:// gateways only" in plain.stderr, plain.stderr


def test_fstab_passes_the_ca_bundle():
    from gateway.fuse.fstab import mount_args

    args, _, _ = mount_args(["https://10.0.0.1:8086", "/mnt/cv", "-o", "ca_bundle=/etc/cv-gateway/tls/ca.pem"])
    assert args[args.index("--ca-bundle") + 1] == "/etc/cv-gateway/tls/ca.pem"
