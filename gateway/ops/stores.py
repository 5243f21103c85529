"""The stores of a node: the backends whose objects are files in the cv-storage layout."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

# Backend types whose root holds the fslayout tree (plugins/local.py, plugins/sharedfs.py).
FILE_TYPES = {"local": False, "sharedfs": True}  # type -> shared between servers


class OpsError(Exception):
    """An operation cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class Store:
    name: str  # the backend instance's name in the settings ([backends.NAME])
    type: str
    root: str
    shared: bool
    require_mount: bool = False  # sharedfs: the root must be a mount point (the share is mounted)
    host_id: str | None = None  # sharedfs: this server's name on the share (its .gateway/tmp/<host_id>/)


def file_stores(settings) -> tuple[list[Store], list[str]]:
    """The file stores of ``settings``, and the names of backends that are not files (s3, smb, ...),
    which these tools cannot copy: their data lives in a system with its own backups."""
    stores, others = [], []
    for name, cfg in sorted(settings.backend_configs().items()):
        kind = cfg.get("type", "local")
        if kind in FILE_TYPES:
            shared = FILE_TYPES[kind]
            stores.append(Store(name, kind, os.path.abspath(str(cfg.get("root", "./cv-storage"))), shared,
                                bool(shared and cfg.get("require_mount", False)),
                                str(cfg["host_id"]) if shared and cfg.get("host_id") else None))
        else:
            others.append(f"{name} ({kind})")
    return stores, others


def check_share_mounted(store: Store) -> None:
    """OpsError when a shared store's root is not the share, as the sharedfs backend refuses to start.

    A missing root, or a bare mount-point directory under ``require_mount``, means the share is not
    mounted: a backup of it would pass for a backup of no objects, and a restore into it would put
    the objects on this server's own disk, hidden under the share once it is mounted again."""
    if not store.shared:
        return
    from gateway_plugins.sharedfs import share_not_mounted

    problem = share_not_mounted(store.root, store.require_mount)
    if problem:
        raise OpsError(f"backend {store.name!r}: {problem}. Mount the share there (docs/shared-storage.md), "
                       "then run again")


def node_name(settings) -> str:
    """This node's name in the cluster, or the host name of a stand-alone gateway."""
    if settings.role or settings.registry or settings.node_id:
        from gateway.cluster.settings_check import node_id_of

        try:
            return node_id_of(settings)
        except ValueError:
            pass
    return settings.node_id or socket.gethostname() or "localhost"


def sqlite_registry_path(settings) -> str | None:
    """The file of an SQLite registry, None for no registry or another kind."""
    url = settings.registry or ""
    if not url.startswith("sqlite://"):
        return None
    from gateway.cluster.registry_sqlite import SqliteRegistry

    return SqliteRegistry(url).path
