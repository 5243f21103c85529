"""`gateway cluster tls init`: a cluster CA and one certificate per node (cryptography library).

Node certificates carry both serverAuth and clientAuth, so the same pair
serves HTTPS and presents the node when it calls a peer (mutual TLS when the
server asks). Keys are EC P-256: small, fast handshakes, supported by every
TLS stack the gateway meets.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 3650


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, private: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    if private:  # the mode of open() applies to a new file only: a key written over an old file has its mode
        os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


_DNS_NAME = re.compile(r"[A-Za-z0-9_*-]+(\.[A-Za-z0-9_*-]+)*\.?")  # wildcards too; no port, no scheme


def subject_name(host: str) -> x509.GeneralName | None:
    """A node's host as a certificate names it: an IP address (an IPv6 one in brackets or not) or a
    DNS name; None for anything else (``10.0.0.1:8086``, a URL), which no peer could ever match."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return x509.IPAddress(ipaddress.ip_address(bare))
    except ValueError:
        pass
    # A name whose last label is all digits is no DNS name (RFC 1123): 10.0.0.256 is a mistyped address.
    if not _DNS_NAME.fullmatch(host) or host.rstrip(".").rsplit(".", 1)[-1].isdigit():
        return None
    return x509.DNSName(host)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cv-gateway cluster"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


def create_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Load the CA from ``directory`` (ca.pem, ca-key.pem), creating it when absent."""
    cert_path, key_path = directory / "ca.pem", directory / "ca-key.pem"
    if cert_path.exists() != key_path.exists():
        # A new CA over the old ca.pem would make every node's certificate fail to verify.
        present, missing = (cert_path, key_path) if cert_path.exists() else (key_path, cert_path)
        raise ValueError(f"{present} is there but {missing} is not: restore it from a backup, or move "
                         f"{present} away to create a new CA (then every node needs a new certificate)")
    if cert_path.exists():
        try:
            certs = x509.load_pem_x509_certificates(cert_path.read_bytes())
        except ValueError as exc:
            raise ValueError(f"{cert_path} is not a PEM certificate: {exc}") from None
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{key_path} is not an unencrypted PEM private key: {exc}") from None
        # ca.pem may be a bundle while the CA is replaced (the new CA and the old, trusted both): the
        # certificates are signed by the one whose key ca-key.pem is.
        for cert in certs:
            if key.public_key() == cert.public_key():
                return cert, key
        raise ValueError(f"{key_path} is the key of no certificate in {cert_path}: restore the pair from a backup")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = _name("cv-gateway cluster CA")
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def issue_node_cert(directory: Path, ca_cert, ca_key, node: str, hosts: list[str]) -> tuple[Path, Path]:
    """Write <node>.pem and <node>-key.pem valid for ``hosts`` (DNS names or IP addresses; tls_init has
    checked the name and the hosts before anything was written)."""
    key = ec.generate_private_key(ec.SECP256R1())
    names = [name for name in map(subject_name, hosts) if name is not None]
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(_name(node)).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{node}.pem", directory / f"{node}-key.pem"
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def ensure_secret(directory: Path) -> Path:
    """Write a random cluster secret to ``cluster-secret`` unless one is there."""
    path = directory / "cluster-secret"
    if not path.exists():
        _write(path, secrets.token_hex(32).encode() + b"\n", private=True)
    return path


NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")  # also a file name: no "/", no ".." first
# Names whose files are the CA's (ca.pem, ca-key.pem) or another node's key (<node>-key.pem): such a node
# overwrote the CA and its key, and no node could start again.
RESERVED_NODE_NAMES = ("ca", "cluster-secret")


def tls_init(directory: Path, nodes: dict[str, list[str]]) -> dict[str, tuple[Path, Path]]:
    """Raise ValueError (bad node name or host, unusable CA) or OSError (the directory) saying what is wrong."""
    for node, hosts in nodes.items():
        if not NODE_NAME.fullmatch(node):
            raise ValueError(f"node name {node!r}: use letters, digits, '.', '_' and '-' (it names the files "
                             f"{node}.pem and {node}-key.pem)")
        if node.lower() in RESERVED_NODE_NAMES or node.lower().endswith("-key"):
            raise ValueError(f"node name {node!r}: its files would be "
                             f"{'the CA' if node.lower() == 'ca' else 'another file'}'s ({node}.pem, "
                             f"{node}-key.pem): name the node otherwise (ca, cluster-secret and names ending "
                             "in -key are taken)")
        if not hosts:
            raise ValueError(f"node {node}: name at least one host or IP address it is reached at")
        for host in hosts:
            if subject_name(host) is None:
                raise ValueError(f"node {node}: {host!r} is neither an IP address nor a DNS name (give the host "
                                 "alone, without a scheme or a port: 10.0.0.1, ::1, node1.example.com)")
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = create_ca(directory)
    ensure_secret(directory)
    return {node: issue_node_cert(directory, ca_cert, ca_key, node, hosts) for node, hosts in nodes.items()}
