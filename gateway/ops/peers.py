"""What the tools need from the cluster when they run on a cluster node (docs/operations.md).

- **This node's role now.** A failover or ``gateway cluster promote`` moves the primary role to
  another node without changing its settings (``--role redundant`` stays in its unit file), so the
  registry, not the settings, says which node is the primary today.
- **Newer versions elsewhere.** In local mode an overwrite through another node retires this
  node's copy of the key. A restore that put the backup's older copy back would make reads through
  this node (local first) and through relays that hear from it first return the old version, while
  others return the new one. So before a restored object is put in place, every other storing node
  is asked for its version of the key (a signed HEAD on the peer route, as the relay does), and a
  newer one there wins: the backup's copy is left out and listed.

Nothing here writes to the registry or to a peer; a registry or peer that cannot be reached is said
so and the tool goes on with what it knows.
"""

from __future__ import annotations

import asyncio
import http.client
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

from .stores import OpsError, node_name

STORING = ("primary", "redundant")


@dataclass
class ClusterView:
    here: str  # this node's id
    role: str | None  # its role in the registry; None when the registry does not list it
    peers: dict[str, str] = field(default_factory=dict)  # the other storing nodes: id -> address
    lease: str | None = None  # the holder of the primary lease, when the registry has locks
    primary: str | None = None  # the primary today: the lease's holder, else the node listed primary
    # Whether the primary keeps its objects on shared storage, as it publishes with its heartbeat
    # (None: not known, e.g. it never ran). False: its full backup does not hold a share.
    primary_on_share: bool | None = None


class RegistryUnreadable(Exception):
    pass


def read_cluster(settings, timeout: float = 10.0) -> ClusterView | None:
    """The registry's view of this node; None when this is no cluster node (no registry).
    RegistryUnreadable (saying why) when the registry does not exist or does not answer; never
    creates a registry (a restore may be about to put one back)."""
    if not settings.registry:
        return None
    nodes, lease = registry_snapshot(settings.registry, timeout)
    here = node_name(settings)
    mine = next((n for n in nodes if n.node_id == here), None)
    primary = lease or next((n.node_id for n in nodes if n.role == "primary"), None)
    record = next((n for n in nodes if n.node_id == primary), None)
    on_share = record.info.get("shared_storage") if record is not None else None
    return ClusterView(here, mine.role if mine else None,
                       {n.node_id: n.address for n in nodes if n.node_id != here and n.role in STORING}, lease,
                       primary, on_share if isinstance(on_share, bool) else None)


def registry_snapshot(url: str, timeout: float = 10.0) -> tuple[list, str | None]:
    """(the nodes, the primary lease's holder) of the registry at ``url``. RegistryUnreadable (saying
    why) when it does not exist or does not answer within ``timeout``; never creates a registry."""
    from gateway.cluster.registry import RegistryError, open_registry

    try:
        registry = open_registry(url)
    except (ValueError, RegistryError) as exc:
        raise RegistryUnreadable(str(exc)) from None
    absent = registry.absent()
    if absent:
        raise RegistryUnreadable(absent)

    async def read():
        try:
            nodes = await registry.nodes()
            try:
                lease = await registry.lock_holder("primary")
            except (NotImplementedError, AttributeError):
                lease = None
            return nodes, lease
        finally:
            await registry.close()

    async def bounded():
        return await asyncio.wait_for(read(), timeout)

    try:
        return asyncio.run(bounded())
    except asyncio.TimeoutError:
        raise RegistryUnreadable(f"the registry {url} did not answer within {timeout:.0f}s") from None
    except RegistryError as exc:
        raise RegistryUnreadable(str(exc)) from None


def with_registry_role(settings):
    """The settings of a cluster node started without --role (`gateway serve` then takes the role the
    registry has for it) with that role: the tools took such a node for a stand-alone gateway (a full
    backup on a redundant node, labelled with the host name; repair refused). Unchanged with a role
    or without a registry; OpsError when the registry cannot say (unreadable, or the node is not in it)."""
    if settings.role or not settings.registry:
        return settings
    try:
        view = read_cluster(settings)
    except RegistryUnreadable as exc:
        raise OpsError(f"this node has a registry but no --role, and the registry could not be read to learn its "
                       f"role ({exc}): give --role as the node's `gateway serve` runs with") from None
    if view is None or view.role is None:
        raise OpsError(f"the registry {settings.registry} does not list this node ({node_name(settings)}), and no "
                       "--role was given: give the settings the node's `gateway serve` runs with (--role, "
                       "GATEWAY_NODE_ID when its id is not host:port)")
    return settings.model_copy(update={"role": view.role})


def current_role(settings, notes: list[str]) -> str | None:
    """This node's role today: the registry's when it lists this node (a failover or `cluster
    promote` changes it there, not in the settings), else the configured one; a difference or an
    unreadable registry is added to ``notes``."""
    try:
        view = read_cluster(settings)
    except RegistryUnreadable as exc:
        notes.append(f"could not read the cluster registry ({exc}); going by the configured role "
                     f"{settings.role}")
        return settings.role
    if view is None or view.role is None or view.role == settings.role:
        return settings.role
    notes.append(f"the registry lists this node ({view.here}) as {view.role}, its settings say {settings.role}: "
                 "a failover or `gateway cluster promote` moved the primary role; going by the registry")
    return view.role


def node_connection(address: str, context, timeout: float) -> http.client.HTTPConnection:
    """A connection to the cluster node at ``address`` (its advertised URL): HTTPS verified with
    ``context`` (membership.client_ssl_context), or plain HTTP."""
    parts = urlsplit(address)
    if parts.scheme == "https":
        return http.client.HTTPSConnection(parts.hostname, parts.port or 443, timeout=timeout, context=context)
    return http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)


@dataclass
class PeerVersion:
    node: str
    last_modified: float
    etag: str


class PeerVersions:
    """Asks every other storing node for its version of a key (signed HEAD on the peer route).

    ``newer(bucket, key, time, etag)`` returns the newest version another node holds that is newer
    than the given one, or None. Peers that cannot be asked are remembered (``unreachable``,
    id -> reason) and not asked again: the restore goes on, and says so at the end."""

    def __init__(self, settings, view: ClusterView):
        from gateway.cluster.membership import client_ssl_context
        from gateway.cluster.peer_auth import PeerSigner

        self.signer = PeerSigner(settings.cluster_secret or "", view.here)
        self.ssl = client_ssl_context(settings)
        self.timeout = max(float(settings.peer_timeout), 5.0)
        self.peers = dict(view.peers)
        self.unreachable: dict[str, str] = {}
        self.asked = 0
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.peers)), thread_name_prefix="ops-peer")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def newer(self, bucket: str, key: str, last_modified: float, etag: str) -> PeerVersion | None:
        from gateway.cluster import wire

        target = f"{wire.PREFIX}/objects/{quote(bucket, safe='')}/{quote(key, safe='/')}"
        asking = [(peer, address) for peer, address in self.peers.items() if peer not in self.unreachable]
        if not asking:
            return None
        self.asked += 1
        found = [v for v in self._pool.map(lambda pa: self._head(pa[0], pa[1], target), asking) if v is not None]
        newer = [v for v in found if (last_modified, etag) < (v.last_modified, v.etag)]  # wire.is_older's order
        return max(newer, key=lambda v: (v.last_modified, v.etag)) if newer else None

    def _connection(self, peer: str, address: str) -> http.client.HTTPConnection:
        pool = self._local.__dict__.setdefault("connections", {})
        conn = pool.get(peer)
        if conn is None:
            conn = pool[peer] = node_connection(address, self.ssl, self.timeout)
        return conn

    def _head(self, peer: str, address: str, target: str) -> PeerVersion | None:
        from gateway.cluster import wire

        for attempt in (1, 2):  # a kept-alive connection the peer closed meanwhile: once more on a fresh one
            conn = self._connection(peer, address)
            try:
                conn.request("HEAD", target, headers=self.signer.headers("HEAD", target))
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self._local.connections.pop(peer, None)
                if attempt == 2:
                    self.unreachable[peer] = f"{address}: {exc}"
                continue
            if response.status == 404:
                return None
            if response.status >= 300 or not response.getheader(wire.INFO_HEADER):
                self.unreachable[peer] = f"{address}: answered {response.status} {response.reason}"
                return None
            try:
                info = wire.info_from_header(response.getheader(wire.INFO_HEADER))
            except (ValueError, KeyError) as exc:
                self.unreachable[peer] = f"{address}: an answer that does not parse ({exc})"
                return None
            return PeerVersion(peer, info.last_modified, info.etag)
        return None
