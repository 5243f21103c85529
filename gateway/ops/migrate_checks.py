"""What ``gateway migrate`` refuses before it touches a file: the source store it would copy, and
the target directory (each refusal says what to do instead; the command exits with 2)."""

from __future__ import annotations

import os

from .stores import OpsError, Store, file_stores


def choose_source(settings, backend: str | None) -> Store:
    stores, others = file_stores(settings)
    if backend:
        store = next((s for s in stores if s.name == backend), None)
        if store is None:
            other = next((o for o in others if o.split(" ", 1)[0] == backend), None)
            if other:
                raise OpsError(f"backend {other} keeps no files this tool can copy; migrate moves a "
                               "\"local\" store onto shared storage")
            names = ", ".join(f"{s.name} ({s.type})" for s in stores) or "none"
            raise OpsError(f"no backend named {backend!r} in the settings (file stores: {names}); "
                           "check --backend and --config")
    else:
        local = [s for s in stores if not s.shared]
        if len(local) > 1:
            raise OpsError(f"this node has several local stores ({', '.join(s.name for s in local)}): "
                           "choose one with --backend NAME, and migrate each in turn")
        store = local[0] if local else next(iter(stores), None)
        if store is None:
            raise OpsError(f"this node has no file store to migrate (backends: {', '.join(others) or 'none'})")
    if store.shared:
        raise OpsError(f"backend {store.name!r} is already on shared storage (type \"sharedfs\", root "
                       f"{store.root}); migrate copies a store of type \"local\" onto a share: give the "
                       "config of the server that still stores locally, or --backend with a local one")
    if not os.path.isdir(store.root):
        raise OpsError(f"the store {store.name!r} has no directory at {store.root}: check --data-dir or "
                       f"[backends.{store.name}].root")
    return store


def _inside(path: str, directory: str) -> bool:
    return path.startswith(directory.rstrip(os.sep) + os.sep)


def check_target(source_root: str, target: str) -> str:
    """The target's real path, or OpsError saying what is wrong with it and what to do."""
    real = os.path.realpath(target)
    source = os.path.realpath(source_root)
    if not os.path.exists(real):
        raise OpsError(f"the target {target} does not exist: mount the shared storage there (or give its "
                       "mount point) and run again")
    if not os.path.isdir(real):
        raise OpsError(f"the target {target} is not a directory: give the mount point of the shared storage")
    if real == source:
        raise OpsError(f"the target {target} is this store's own directory ({source_root}): give the shared "
                       "storage's mount point, mounted somewhere else for the copy (e.g. /mnt/cv-share)")
    if _inside(real, source):
        raise OpsError(f"the target {target} is inside the store {source_root}: the copy would copy itself; "
                       "mount the share outside cv-storage (e.g. /mnt/cv-share)")
    if _inside(source, real):
        raise OpsError(f"the store {source_root} is inside the target {target}: the copy would copy itself; "
                       "mount the share elsewhere (e.g. /mnt/cv-share) or give the share's own directory")
    if os.statvfs(real).f_flag & os.ST_RDONLY:
        # os.access() says "not writable" here too, and the advice about owners would send the
        # operator after permissions while the share is mounted (or was remounted) read-only.
        raise OpsError(f"the target {target} is on a read-only filesystem: mount the share read-write "
                       "(check the mount options and the export; a client remounts read-only after I/O errors)")
    if not os.access(real, os.W_OK | os.X_OK):
        raise OpsError(f"the target {target} is not writable by this user: run as the gateway's user, or fix "
                       "the mount's owner (uid=/gid= for SMB, the export's permissions for NFS)")
    return real
