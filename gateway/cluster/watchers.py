"""Who cached a miss of which key, so that a write of that key tells them first.

A node whose read of an object misses on every storing node caches the miss
(locations.py, ``miss_ttl``: 1 s), so that a client polling for an object that
does not exist yet (a reply message) does not make every read ask every node.
Alone, that broke read-after-write across nodes: a PUT through one node left
another node that had just missed the key answering 404 for up to
``miss_ttl`` after the PUT was acknowledged, and a client writing through one
node and reading through another (a proxy, a load balancer) did not find what
it had written.

So a storing node notes which nodes asked it for a key it does not have
(``note``; every storing node is asked before a miss is cached), and a node
that stores that key tells them to forget the miss before the write is
answered (``take``, then Cluster.tell_watchers). A write of a key nobody
missed lately costs one dictionary lookup; the notes are bounded in number
and kept only as long as a miss can be cached.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class MissWatchers:
    """``keep``: seconds a note is kept (the time a miss stays cached, plus the time the asking
    node may take to finish asking the others); at most ``max_entries`` keys, the oldest dropped."""

    def __init__(self, keep: float, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic):
        self.keep = keep
        self.max_entries = max_entries
        self.clock = clock
        self._notes: OrderedDict[tuple[str, str], dict[str, float]] = OrderedDict()

    def note(self, bucket: str, key: str, node: str) -> None:
        """``node`` asked for the object and was told this node does not have it."""
        if bucket.startswith("."):
            return  # the gateway's internal records are looked up, never polled for by clients
        expires = self.clock() + self.keep
        entry = self._notes.get((bucket, key))
        if entry is None:
            self._notes[(bucket, key)] = {node: expires}
            while len(self._notes) > self.max_entries:
                self._notes.popitem(last=False)
        else:
            entry[node] = expires
            self._notes.move_to_end((bucket, key))

    def take(self, bucket: str, key: str) -> list[str]:
        """The nodes that asked for the object lately (and may have cached its miss); forgotten here."""
        entry = self._notes.pop((bucket, key), None)
        if not entry:
            return []
        now = self.clock()
        return sorted(node for node, expires in entry.items() if expires > now)

    def __len__(self) -> int:
        return len(self._notes)
