"""Newer versions this node dropped its copy for, still in its listings for a few seconds.

A merged listing (ClusterNode.list) takes each node's page at a slightly
different moment. An overwrite through another node stores the new copy
there and then drops the older one here (versions.supersede_local): a
listing that took that node's page just before the new copy landed, and
this node's just after the old one went, had the key on neither page,
though the key existed throughout. `rclone sync` from the cluster then
deleted its copy of an object that was only being overwritten.

So for ``listed_for`` seconds after dropping its copy, this node's own page
(for itself and for a peer's merge) lists the key in the version that
replaced it, as the overwrite told it (ETag, time, size; not its meta). A
listing then shows the key as it is since that overwrite whichever moment
the other node's page was taken; never the dropped version itself (listing
that, the key reappeared in its old version while a DELETE of the new one
ran, or while the new one's node could not be reached). A DELETE of the key
here forgets it, and so does this node standing still (its listings may be
out of date: it forgets them all). The entries are named in the page
(``ListPage.superseded``): the merge prefers a copy a node holds, and repair
(services/cluster_nodes/repair.py) does not take them for copies.
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

    def add(self, bucket: str, newer: ObjectInfo) -> None:
        """This node dropped its copy of ``newer.key``: another node holds the version ``newer``."""
        entry = (bucket, newer.key)
        self._dropped.pop(entry, None)
        self._dropped[entry] = (newer, self.clock() + self.listed_for)
        while len(self._dropped) > self.max_entries:
            self._dropped.popitem(last=False)

    def forget(self, bucket: str, key: str) -> None:
        """The key was deleted here: it is not listed from what this node knew any more."""
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
        known = paginate(dropped, prefix, delimiter, start_after, max_keys)
        known.superseded = frozenset(info.key for info in known.objects)
        known.metadata = False  # the overwrite told the version, not its meta
        return merge_pages([page, known], max_keys)

    def clear(self) -> None:
        """This node stood still (a paused VM, SIGSTOP): what it knew may be out of date."""
        self._dropped.clear()

    def __len__(self) -> int:
        return len(self._dropped)
