"""Repair: copies of a key that an overwrite could not retire, found by listings and retired then
(docs/cluster.md, "Repair").

In local mode a key lives on one node. An overwrite through another node retires the older copy
before it is answered, or leaves the retirement in the registry for a node it cannot reach; only
when the registry could not take it either, and the writer restarted before the node came back, or
when a node's files are put back by hand (an old disk, a copy of the directory), does an older copy
survive, and reads through that node (local first) return it. Such a copy shows as a key that two
nodes list in different versions: every merged listing (ClusterNode.list) retires what it sees in
the background, and ``gateway cluster repair`` walks every bucket page by page (repair_page).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ... import errors
from ...backend import Backend, ListPage, ObjectInfo
from ...cluster.listing import differing_copies, merge_pages
from ...cluster.membership import Cluster
from ...cluster.relay import PeerUnreachable
from ...cluster.wire import is_older

log = logging.getLogger("gateway.cluster")
# Repairs a node runs in the background at once, at most: a listing that shows many differing keys
# (a whole old disk put back) is repaired over several listings, or by `gateway cluster repair`.
BACKGROUND_REPAIRS = 64


def _version(info: ObjectInfo) -> tuple[float, str]:
    return info.last_modified, info.etag


def _newest(copies: dict[str, ObjectInfo]) -> tuple[str, ObjectInfo, list[str]]:
    """(the node holding the newest of ``copies``, that copy, the nodes whose copy is older): wire.is_older's order."""
    holder, newest = max(copies.items(), key=lambda item: _version(item[1]))
    return holder, newest, sorted(n for n, info in copies.items() if is_older(info, newest.last_modified, newest.etag))


def _up_to(merged: ListPage) -> str | None:
    """The last key a merged page settles: differing_copies looks no further (None: the page is whole)."""
    return merged.objects[-1].key if merged.is_truncated and merged.objects else None


class Repair:
    """Mixed into ClusterNode (node.py), which provides _pages, _retire_older_copies and _in_background."""

    local: Backend | None
    cluster: Cluster
    client: Any
    _background: set[asyncio.Task]
    _repairing: set[tuple[str, str]]  # (bucket, key) being repaired in the background now

    def _repair_in_background(self, bucket: str, pages: dict[str, ListPage], merged: ListPage) -> None:
        """Retire, in the background, the older copies of keys that ``pages`` list in different versions."""
        if len(pages) < 2 or bucket.startswith("."):
            return
        differing = differing_copies(pages, _up_to(merged))
        if not differing:
            return
        repairing = self._repairing
        for key, copies in differing.items():
            if (bucket, key) in repairing or len(repairing) >= BACKGROUND_REPAIRS:
                continue
            repairing.add((bucket, key))
            self._in_background(self._repair_then_forget(repairing, bucket, key, list(copies)))

    async def _repair_then_forget(self, repairing: set, bucket: str, key: str, holders: list[str]) -> None:
        try:
            await self.repair_copies(bucket, key, holders)
        except Exception:  # a background task: say so, never let it end unseen
            log.exception("repairing the copies of %s/%s failed", bucket, key)
        finally:
            repairing.discard((bucket, key))

    async def repair_copies(self, bucket: str, key: str, holders: list[str], settle: bool = True) -> dict | None:
        """Read the copies of the key on ``holders`` again (a listing may be out of date) and retire the
        older ones as an overwrite does (ClusterNode._retire_older_copies: every storing node is told,
        one that cannot be reached through the registry). None when there is nothing to retire, or a
        holder could not be asked (the next listing or repair tries again); else what was done.
        Copies whose newest is younger than an overwrite takes to retire the others are read again
        once it is not (with ``settle``), or left alone (None)."""
        me = self.cluster.node_id
        copies: dict[str, ObjectInfo] = {}
        for node in holders:
            try:
                if node == me:
                    if self.local is None:
                        continue
                    copies[node] = await self.local.head(bucket, key)
                else:
                    copies[node] = await self.client.head(node, self.cluster.peers()[node], bucket, key)
            except (errors.NoSuchKey, errors.NoSuchBucket):
                continue  # gone meanwhile (a DELETE, the overwrite's own retirement)
            except (PeerUnreachable, errors.GatewayError, KeyError) as exc:
                log.info("not repairing %s/%s now: its copy on %s could not be read (%s)", bucket, key, node,
                         getattr(exc, "message", exc))
                return None
        if len({_version(info) for info in copies.values()}) < 2:
            return None
        holder, newest, older = _newest(copies)
        settling = self._settling(newest)
        if settling > 0:
            # Most likely an overwrite that is retiring the older copy right now (it does before it
            # is answered): looked at again once it must have, so that only a copy it could not
            # retire is repaired and logged as such (it was a warning on every busy key). Still so
            # then (a key overwritten all the time), it is left to the next listing or repair.
            if not settle:
                return None
            await asyncio.sleep(settling)
            return await self.repair_copies(bucket, key, holders, settle=False)
        log.warning("%s/%s: an older copy on %s that an overwrite did not retire; dropping it (the newest, "
                    "%s, is on %s)", bucket, key, ", ".join(older), newest.etag, holder)
        await self._retire_older_copies(bucket, key, newest, holder)
        for node in older:
            self.cluster.repaired[node] += 1
        return {"key": key, "newest_on": holder, "older_on": older}

    def _settling(self, newest: ObjectInfo) -> float:
        """Seconds until an overwrite that wrote ``newest`` must have retired the older copies (it waits
        for every peer at most the peer timeout; twice that, and a second for the write's own end)."""
        window = 2 * self.cluster.settings.peer_timeout + 1
        return min(window, newest.last_modified + window - time.time())

    async def repair_page(self, bucket: str, start_after: str = "", max_keys: int = 1000,
                          dry_run: bool = False) -> dict:
        """One page of `gateway cluster repair`: the keys after ``start_after`` that several nodes list in
        different versions, their older copies retired unless ``dry_run``. Listed from every storing
        node even on shared storage, where a node that is still on its own disk (docs/migration.md) may
        hold a copy. The JSON of the peer route /_cluster/v1/repair/<bucket>."""
        # Not whole, even with strict_listings: the nodes that cannot be asked are named in the answer.
        pages, unreachable = await self._pages(bucket, "", "", start_after, max_keys, whole=False)
        merged = merge_pages(list(pages.values()), max_keys)
        found = []
        for key, copies in differing_copies(pages, _up_to(merged)).items():
            if dry_run:
                holder, _, older = _newest(copies)
                found.append({"key": key, "newest_on": holder, "older_on": older})
                continue
            done = await self.repair_copies(bucket, key, list(copies))
            found.append(done or {"key": key, "newest_on": None, "older_on": [], "skipped": True})
        return {"listed": len(merged.objects), "next": merged.next_marker if merged.is_truncated else None,
                "unreachable": unreachable, "copies": found}
