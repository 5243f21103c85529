"""Versions of one key on several nodes: which one is newer, and dropping an outdated local copy.

See docs/cluster.md, "Overwrites": after a PUT, the node that took it asks
every other storing node to drop an older copy of the key (the peer route
``DELETE ...?if-older-than=``), so reads through any node return the newest
version.
"""

from __future__ import annotations

from .. import errors
from ..backend import Backend, ObjectInfo
from .superseded import RecentlySuperseded
from .wire import is_older


async def supersede_local(local: Backend, bucket: str, key: str, last_modified: float,
                          etag: str, own_storage: bool = False,
                          superseded: RecentlySuperseded | None = None, size: int | None = None) -> ObjectInfo | None:
    """Another node stored the version (last_modified, etag) of the key: delete this node's copy if older.

    Return this node's copy when it is the *newer* one (kept; two overwrites
    raced), else None. Not on shared storage when the new version is there
    too: every node sees the same file, and a node that still sees the old
    version (the visibility window) would delete the new one by its path.
    With ``own_storage`` the new version is on the disk of a node that has not
    moved to the share yet (a cluster in the middle of docs/migration.md): the
    share's copy is another file, and is dropped when older, by a backend that
    can drop just the file it compared (``drop_if_older``, sharedfs). When a copy on a disk of this
    node's own is dropped, the newer version (``size`` bytes) is in this node's listings a moment
    (``superseded``, superseded.py): the other node's page may have been taken before it landed.
    """
    if local.capabilities.shared:
        drop_if_older = getattr(local, "drop_if_older", None)
        if not own_storage or drop_if_older is None:
            return None
        return await drop_if_older(bucket, key, last_modified, etag)
    try:
        copy = await local.head(bucket, key)
    except (errors.NoSuchKey, errors.NoSuchBucket):
        return None
    if is_older(copy, last_modified, etag):
        await local.delete(bucket, key)
        if superseded is not None and size is not None:
            superseded.add(bucket, ObjectInfo(key, size, etag, last_modified))
        return None
    return None if (copy.last_modified, copy.etag) == (last_modified, etag) else copy
