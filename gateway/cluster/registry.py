"""The cluster registry: where the node list lives (interface, record type, lookup by URL scheme).

Implementations are plugins, registered with the ``register_registries``
hook exactly like backends: ``sqlite`` (embedded, one host) and ``etcd``
(several hosts) are built in (gateway/cluster/builtin.py, loaded through the
``registries`` entry point in the ``gateway.backends`` group like any plugin).
"""

from __future__ import annotations

import abc
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .wire import is_older

ROLES = ("primary", "redundant", "proxy")
STORING_ROLES = ("primary", "redundant")


@dataclass
class NodeRecord:
    """One node as the registry knows it.

    ``install_order`` is given by the registry on first registration and kept
    on re-registration (the first installed node is the primary).
    ``info`` is what the node publishes with each heartbeat: object count,
    free space, its view of peer health, its request distribution.
    """

    node_id: str
    role: str
    address: str
    install_order: int = 0
    last_seen: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def stores_objects(self) -> bool:
        return self.role in STORING_ROLES

    def age(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.last_seen

    @property
    def ever_seen(self) -> bool:
        """Whether the node's gateway ever heartbeated (False: only `cluster join` registered it)."""
        return self.last_seen > 0

    def heartbeat_fresh(self, now: float | None = None) -> bool:
        """Seen within three heartbeat intervals (the interval the node itself published)."""
        interval = float(self.info.get("heartbeat_interval", 5.0))
        return self.last_seen > 0 and self.age(now) < 3 * interval

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NodeRecord:
        return cls(data["node_id"], data["role"], data["address"], int(data.get("install_order", 0)),
                   float(data.get("last_seen", 0.0)), dict(data.get("info") or {}))


@dataclass(frozen=True)
class Retirement:
    """Drop the copy of ``bucket/key`` if it is older than (``last_modified``, ``etag``) (wire.is_older).

    ``token`` is the registry's handle of the stored entry (etcd's mod revision), so that dropping it
    after it was applied leaves a newer retirement of the same key written meanwhile in place.
    """

    bucket: str
    key: str
    last_modified: float
    etag: str
    token: str = ""

    def to_json(self) -> dict:
        return {"bucket": self.bucket, "key": self.key, "last_modified": self.last_modified, "etag": self.etag}

    @classmethod
    def from_json(cls, data: dict, token: str = "") -> Retirement:
        return cls(str(data["bucket"]), str(data["key"]), float(data["last_modified"]), str(data["etag"]), token)

    def newer_than(self, other: Retirement) -> bool:
        """The order every node agrees on (wire.is_older: time, then ETag)."""
        return is_older(other, self.last_modified, self.etag)


class RegistryError(Exception):
    """The registry could not be read or written; the message says which one and why."""


class NotRegistered(RegistryError):
    """A heartbeat of a node the registry does not list (removed by ``cluster leave``, or a registry
    that was reset)."""


class Registry(abc.ABC):
    """The node list, shared by every node of a cluster.

    :param url: the registry URL (``sqlite:///path``, ``etcd://host:port,...``).
    """

    def __init__(self, url: str):
        self.url = url

    @abc.abstractmethod
    async def register(self, node_id: str, role: str, address: str) -> NodeRecord:
        """Add or update a node (keeping its install order); return the stored record.

        A registration is not a heartbeat: a new record has ``last_seen`` 0 (never heard from,
        shown as "joined, not seen yet" until the node's gateway heartbeats), and an updated one
        keeps its last heartbeat and published info. ``gateway cluster join`` registers nodes that
        may never have run; a running node heartbeats right after it registers."""

    @abc.abstractmethod
    async def heartbeat(self, node_id: str, info: dict[str, Any]) -> None:
        """Record that the node is alive now, with its published ``info``. Raise RegistryError."""

    @abc.abstractmethod
    async def nodes(self) -> list[NodeRecord]:
        """Every registered node, by install order. Raise RegistryError."""

    @abc.abstractmethod
    async def remove(self, node_id: str) -> bool:
        """Forget a node (``cluster leave``); return whether it was registered."""

    async def close(self) -> None:
        """Release connections."""

    # Retirements (gateway/cluster/retirements.py): older copies a node must still drop. A registry
    # plugin that does not keep them may leave these out; writers then keep them in memory.

    async def add_retirement(self, node_id: str, item: Retirement, limit: int) -> bool:
        """Record that ``node_id`` must drop its copy of item.bucket/item.key if older than the item.

        One entry per (node, bucket, key): of two, the newer version is kept. Return False (nothing
        written) when ``limit`` entries wait for that node already. Raise RegistryError.
        """
        raise NotImplementedError

    async def retirements(self, node_id: str, limit: int) -> list[Retirement]:
        """Up to ``limit`` retirements waiting for ``node_id``, each with its ``token``. Raise RegistryError."""
        raise NotImplementedError

    async def drop_retirement(self, node_id: str, item: Retirement) -> None:
        """Remove ``item`` (as returned by retirements()) unless a newer one replaced it meanwhile."""
        raise NotImplementedError

    async def retirement_counts(self, node_ids: list[str]) -> dict[str, int]:
        """How many retirements wait for each of ``node_ids``."""
        raise NotImplementedError

    # Locks (gateway/cluster/locks.py): conditional PUTs of one key through any node, one at a time.
    # A registry plugin may leave these out; conditional PUTs are then ordered per node only.

    async def acquire_lock(self, name: str, owner: str, ttl: float) -> bool:
        """Take the lock ``name`` for ``owner`` for ``ttl`` seconds, unless someone else holds it
        (an expired lock is free). Return whether ``owner`` holds it now. Raise RegistryError."""
        raise NotImplementedError

    async def refresh_lock(self, name: str, owner: str, ttl: float) -> bool:
        """Extend ``owner``'s hold on ``name`` to ``ttl`` seconds from now; False when it was lost."""
        raise NotImplementedError

    async def release_lock(self, name: str, owner: str) -> None:
        """Give the lock up (nothing happens when ``owner`` does not hold it)."""
        raise NotImplementedError

    async def lock_holder(self, name: str) -> str | None:
        """Who holds the lock ``name`` now (None: nobody, or it expired). Raise RegistryError."""
        raise NotImplementedError

    async def set_role(self, node_id: str, role: str) -> bool:
        """Change another node's role in its record, leaving its heartbeat as it is (a failover
        demotes the dead primary this way). Return False when the node is not registered."""
        raise NotImplementedError

    async def restore(self, records: list[NodeRecord]) -> list[str]:
        """Add each of ``records`` that the registry does not list, as it was (role, address,
        install order where the registry can keep it, last heartbeat and published info); a node
        listed already is left alone. Return the ids added. Called, with its last snapshot, by a
        node that found the registry replaced (deleted, restored, a new etcd): without it the
        nodes that run register again one by one, and a node that is down never, so its peers
        lose it and answer 404 for its objects. Raise RegistryError; a plugin may leave it out."""
        raise NotImplementedError

    async def identity(self) -> str | None:
        """An id this registry keeps for as long as it lives (None: not known). A node whose
        registry no longer lists it compares it with the id it registered in: a new id means the
        registry was reset, and the node registers again; the same id, that `cluster leave` removed it."""
        return None

    def absent(self) -> str | None:
        """Why there is no registry at this URL yet (a file that does not exist), or None.
        Commands that only read or remove (``cluster status``, ``leave``) refuse to create one: a
        typo in the URL would otherwise show an empty, new cluster."""
        return None

    def cannot_create(self) -> str | None:
        """Why ``cluster join`` must not create the registry at this URL (a file whose directory does
        not exist: a typo, most likely), or None. Only asked while absent() says there is none."""
        return None

    async def get(self, node_id: str) -> NodeRecord | None:
        for node in await self.nodes():
            if node.node_id == node_id:
                return node
        return None


def registry_classes() -> dict[str, type[Registry]]:
    """URL scheme -> Registry class, from every plugin's register_registries hook."""
    from ..plugins import get_plugin_manager

    # The built-in registries come through the same entry-point group as every plugin
    # (``registries = "gateway.cluster.builtin"`` in pyproject.toml).
    pm = get_plugin_manager()
    found: dict[str, type[Registry]] = {}

    def register(scheme: str, cls: type[Registry]) -> None:
        if scheme in found and found[scheme] is not cls:
            raise ValueError(f"two plugins register a registry for {scheme}://: {found[scheme]} and {cls}")
        found[scheme] = cls

    for impl in pm.hook.register_registries.get_hookimpls():
        returned = impl.function(*({"register": register}[arg] for arg in impl.argnames))
        if returned is not None:  # thrown away by pluggy: its scheme would be "no registry plugin" for every URL
            text = repr(returned)
            raise ValueError(f"plugin {impl.plugin_name!r} returns {text[:117] + '...' if len(text) > 120 else text} "
                             "from its register_registries hook, which registers nothing: call "
                             "register(scheme, RegistryClass) for each registry instead")
    return found


# The URLs the built-in registries take, for every message about a registry URL that is not one of them.
REGISTRY_URL_FORMS = ("sqlite:///path/registry.db, etcd://host:port[,host:port...] or "
                      "etcds://host:port[,...]?ca=/path/ca.pem")


def not_a_registry_url(url: str) -> str:
    """The message for a registry value without a scheme ("", "10.0.0.1:2379", a bare path): it names the
    value and the forms a registry URL takes (looking a plugin up by its scheme said "no registry plugin for
    this://", which told neither), and the URL the value most likely meant."""
    from ..config import HOST_AND_PORT

    value = url.strip()
    if value and all(HOST_AND_PORT.fullmatch(part.strip()) for part in value.split(",")):
        hint = f"; for etcd at {value}: etcd://{value}"
    elif value.endswith(".db"):
        hint = f"; for a SQLite file: sqlite://{value}"
    else:
        hint = ""
    return f"registry {url!r} is not a registry URL: give {REGISTRY_URL_FORMS} (--registry, GATEWAY_REGISTRY){hint}"


def open_registry(url: str) -> Registry:
    """Create the registry for ``url``; raise ValueError naming the URL when no plugin handles it."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if not scheme:
        raise ValueError(not_a_registry_url(url))
    classes = registry_classes()
    if scheme not in classes:
        known = ", ".join(f"{s}://" for s in sorted(classes))
        hint = "" if classes else "; the built-in ones are missing: reinstall cv-gateway (pip install -e .)"
        raise ValueError(f"registry {url!r}: no registry plugin for {scheme}:// "
                         f"(installed: {known or 'none'}{hint}); give {REGISTRY_URL_FORMS}, or install the plugin "
                         f"that provides {scheme}://")
    return classes[scheme](url)
