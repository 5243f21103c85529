"""Checks of the cluster settings, run when the settings are built (so a bad cluster setup fails at start-up)."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from ..config import is_http_url


def advertised_url(settings) -> str:
    """The URL peers use for this node: --advertise, or derived from host, port and TLS."""
    if settings.advertise:
        return settings.advertise.rstrip("/")
    scheme = "https" if settings.tls_cert else "http"
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if ":" in host:  # an IPv6 address: in brackets in a URL (http://[::1]:8086), or the port is not found
        host = f"[{host.strip('[]')}]"
    return f"{scheme}://{host}:{settings.port}"


def node_id_of(settings) -> str:
    """--node-id; else the id this node's storage remembers (node_id_file); else host:port of the
    advertised URL."""
    if settings.node_id:
        return settings.node_id
    return remembered_node_id(settings) or urlsplit(advertised_url(settings)).netloc


def node_id_file(settings) -> str | None:
    """Where a storing node keeps the id it runs under: ``.gateway/node-id`` in its own local storage.

    Without it, a node whose address changed (a new IP, another --advertise) came back under a new
    default id, and its old record stayed behind, down for good: every miss anywhere answered 503
    ("may be on a server that cannot be reached") instead of 404, and a ghost could hold one of the
    two failover votes. None when the default backend is not local storage: shared storage is every
    node's (sharedfs is another type), and other backends have no directory here.
    """
    config = settings.backend_configs().get(settings.default_backend) or {}
    if config.get("type") != "local" or not config.get("root"):
        return None
    return os.path.join(str(config["root"]), ".gateway", "node-id")


def remembered_node_id(settings) -> str | None:
    path = node_id_file(settings)
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as file:
            return file.read().strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None


def remember_node_id(settings, node_id: str) -> None:
    """Keep ``node_id`` in node_id_file (written whole: a temp file renamed over it); raise OSError."""
    path = node_id_file(settings)
    if path is None or remembered_node_id(settings) == node_id:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temp = f"{path}.{os.getpid()}.tmp"
    with open(temp, "w", encoding="utf-8") as file:
        file.write(node_id + "\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(temp, path)


def check_registry_url(url: str) -> None:
    """Raise ValueError naming the endpoint when an etcd:// or etcds:// URL names one that is not host:port
    (a port out of range would otherwise surface at the first request as an obscure client error)."""
    scheme, _, rest = url.partition("://")
    if scheme not in ("etcd", "etcds"):
        return  # sqlite:// takes any path; other schemes are plugins', which check their own URLs
    from .registry_etcd import registry_ca

    registry_ca(url)  # ?ca=/path/ca.pem
    rest = rest.partition("?")[0]
    for endpoint in (e.strip() for e in rest.strip("/").split(",")):
        if not endpoint:
            continue
        try:
            parts = urlsplit(f"http://{endpoint}")
            port = parts.port  # raises for a port that is no number or out of range
        except ValueError:
            port = None
            parts = None
        if parts is not None and (parts.username or parts.password):
            # Never echoed back: the URL is printed by --print-config and in errors.
            raise ValueError(f"registry {scheme}://...: endpoint {endpoint.rpartition('@')[2]!r} carries a user and "
                             "password, and the etcd registry does not log in to etcd (its authentication is not "
                             "supported): remove them, and keep etcd on a network only the nodes reach")
        if parts is None or not parts.hostname or port in (None, 0) or parts.path or parts.query:
            raise ValueError(f"registry {url!r}: endpoint {endpoint!r} is not host:port with a port from 1 to "
                             "65535, e.g. etcd://10.0.0.1:2379,10.0.0.2:2379")


DEFAULT_PORTS = {"http": 80, "https": 443}


def check_advertised_port(url: str, listen_port: int) -> None:
    """Raise ValueError when ``url`` has no port and its scheme's default port is not ``listen_port``.

    Peers call a URL without a port at 80 or 443: `--advertise http://10.0.0.1` on a node listening on 8086
    started cleanly and registered port 80, where nothing answers, and every miss anywhere in the cluster was
    then a 503 naming that node. A port that is written stays allowed even when it is not the listen port: a
    proxy or NAT in front of the node may forward it."""
    parts = urlsplit(url)
    default = DEFAULT_PORTS[parts.scheme]
    if parts.port is not None or default == listen_port:
        return
    raise ValueError(f"advertise {url!r} has no port, which means port {default} (the {parts.scheme}:// default), "
                     f"but this node listens on port {listen_port}: write the port, e.g. --advertise "
                     f"{parts.scheme}://{parts.netloc.rstrip(':')}:{listen_port} (GATEWAY_ADVERTISE); a port other "
                     "than the listen port is fine when written (a proxy or NAT in front forwards it)")


def check_cluster_settings(settings) -> None:
    """Raise ValueError naming the setting when a cluster node could not work."""
    if settings.registry is None:
        raise ValueError(
            "a cluster node needs a registry: set --registry (GATEWAY_REGISTRY), e.g. "
            "sqlite:///var/lib/cv-gateway/registry.db or etcd://10.0.0.1:2379,10.0.0.2:2379"
        )
    scheme, separator, _ = settings.registry.partition("://")
    if not scheme or not separator:  # "", "10.0.0.1:2379", a bare path
        from .registry import not_a_registry_url

        raise ValueError(not_a_registry_url(settings.registry))
    check_registry_url(settings.registry)
    if not settings.cluster_secret or len(settings.cluster_secret) < 16:
        raise ValueError(
            "a cluster node needs a cluster secret of at least 16 characters to sign peer requests: set "
            "GATEWAY_CLUSTER_SECRET (the same on every node; `gateway cluster tls init` writes one)"
        )
    url = advertised_url(settings)
    parts = urlsplit(url)
    if not is_http_url(url):
        raise ValueError(f"advertise {url!r} must be an http:// or https:// URL with a host (and a port from 1 "
                         "to 65535, if given)")
    check_advertised_port(url, settings.port)
    if parts.scheme == "http" and not settings.insecure_peers:
        raise ValueError(
            f"advertise {url!r} is plain HTTP: nodes talk HTTPS ("
            + ("this node serves HTTPS: advertise https://" if settings.tls_cert is not None else
               "set --tls-cert/--tls-key/--tls-ca, see `gateway cluster tls init`")
            + "), or pass --insecure-peers (GATEWAY_INSECURE_PEERS) for a test setup"
        )
    if parts.scheme == "https" and settings.tls_cert is None:
        raise ValueError(f"advertise {url!r} is HTTPS but this node serves plain HTTP: set --tls-cert and "
                         "--tls-key (GATEWAY_TLS_CERT, GATEWAY_TLS_KEY)")
    if parts.scheme == "https" and settings.tls_ca is None:
        raise ValueError("HTTPS between nodes needs the cluster CA to verify peers: set --tls-ca (GATEWAY_TLS_CA)")
    if parts.scheme == "https":
        from ..config import check_node_certificate

        check_node_certificate(settings.tls_cert, settings.tls_key, settings.tls_ca, parts.hostname)
    if settings.failover and settings.failover_after < 2 * settings.heartbeat_interval:
        raise ValueError(f"failover_after ({settings.failover_after:g} s) must be at least two heartbeat intervals "
                         f"({2 * settings.heartbeat_interval:g} s): a primary would lose its role between two "
                         "heartbeats")
