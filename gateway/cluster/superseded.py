"""Copies this node dropped for a newer version on another node, still listed for a few seconds.

A merged listing (ClusterNode.list) takes each node's page at a slightly
different moment. An overwrite through another node stores the new copy
there and then drops the older one here (versions.supersede_local): a
listing that took that node's page just before the new copy landed, and
this node's just after the old one went, had the key on neither page,
though the key existed throughout. `rclone sync` from the cluster then
deleted its copy of an object that was only being overwritten.

So for ``listed_for`` seconds after dropping it, this node's own page (for
itself and for a peer's merge) lists the dropped copy too. The merge keeps
the newest copy of a key, so the dropped one shows only when no page has
the new one, that is, when the listing began before the overwrite ended:
the key in its old version, as a listing that ran a moment earlier gives.
A DELETE of the key here forgets it (a listing never brings a deleted key
back). The entries are named in the page (``ListPage.superseded``) so
that repair (services/cluster_nodes/repair.py) does not take them for an
older copy an overwrite failed to retire.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from ..backend import ListPage, ObjectInfo, paginate
from .listing import merge_pages

# Seconds a dropped copy stays listed: longer than the pages of one merged listing can be apart (each
# peer is waited for at most its timeout, 2 s by default) with room to spare. Nothing is served from it.
LISTED_FOR = 10.0


class RecentlySuperseded:
    """At most ``max_entries`` dropped copies, the oldest forgotten first."""

    def __init__(self, listed_for: float = LISTED_FOR, max_entries: int = 100_000,
                 clock: Callable[[], float] = time.monotonic):
        self.listed_for = listed_for
        self.max_entries = max_entries
        self.clock = clock
        self._dropped: OrderedDict[tuple[str, str], tuple[ObjectInfo, float]] = OrderedDict()

    def add(self, bucket: str, dropped: ObjectInfo) -> None:
        """This node dropped its copy ``dropped`` of a key: another node holds a newer version."""
        entry = (bucket, dropped.key)
        self._dropped.pop(entry, None)
        self._dropped[entry] = (dropped, self.clock() + self.listed_for)
        while len(self._dropped) > self.max_entries:
            self._dropped.popitem(last=False)

    def forget(self, bucket: str, key: str) -> None:
        """The key was deleted here: it is not listed from a dropped copy any more."""
        self._dropped.pop((bucket, key), None)

    def add_to(self, bucket: str, page: ListPage, prefix: str, delimiter: str, start_after: str,
               max_keys: int) -> ListPage:
        """This node's ``page`` of a listing with the dropped copies that fall in it (the page itself
        when there are none, the usual case)."""
        if not self._dropped:
            return page
        now = self.clock()
        while self._dropped and next(iter(self._dropped.values()))[1] <= now:
            self._dropped.popitem(last=False)  # entries are in the order they expire
        dropped = sorted((info for (b, _), (info, _) in self._dropped.items() if b == bucket),
                         key=lambda info: info.key.encode())
        if not dropped:
            return page
        merged = merge_pages([page, paginate(dropped, prefix, delimiter, start_after, max_keys)], max_keys)
        merged.metadata = page.metadata
        listed = {info.key: info for info in page.objects}
        merged.superseded = frozenset(info.key for info in merged.objects if listed.get(info.key) is not info)
        return merged

    def __len__(self) -> int:
        return len(self._dropped)
