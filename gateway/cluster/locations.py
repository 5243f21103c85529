"""A short-lived cache of where objects live, so repeated reads and misses do not fan out every time.

Positive entries (bucket, key) -> node id live ``hit_ttl`` seconds; negative
entries ("on no node") only ``miss_ttl``, because another node may store the
object any moment. The cache is bounded (least recently used entries go
first), and a PUT or DELETE through this node drops the entry, and so does a
write of the key on another node that this node had asked (watchers.py).

A miss is cached only if nothing dropped the entry while this node was asking
the others (``missing(..., asked_at)``): a write that landed during the asking
would otherwise be hidden for ``miss_ttl`` behind a miss that was true only
before it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

NOWHERE = ""  # the negative entry


class LocationCache:
    def __init__(self, hit_ttl: float = 10.0, miss_ttl: float = 1.0, max_entries: int = 100_000,
                 clock: Callable[[], float] = time.monotonic):
        self.hit_ttl = hit_ttl
        self.miss_ttl = miss_ttl
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
        # When each entry was last dropped (forget), kept while a lookup that began before may still
        # be asking: such a lookup's miss is not cached (``missing``). Bounded like the entries.
        self._forgotten: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.forgotten_for = 30.0  # seconds: longer than any lookup (two rounds of peer timeouts)
        # Lookups by outcome, for GET /metrics: a known node, a cached "nowhere", or unknown.
        self.hits = 0
        self.negative_hits = 0
        self.misses = 0

    def peek(self, bucket: str, key: str) -> str | None:
        """What get() answers, not counted in the metrics: for a first look by a caller that counts a
        hit itself when it uses one, and otherwise leaves the lookup to get() (once per read)."""
        entry = self._entries.get((bucket, key))
        if entry is None or self.clock() >= entry[1]:
            return None
        return entry[0]

    def get(self, bucket: str, key: str) -> str | None:
        """The node id holding the object, NOWHERE for a recent miss, None when unknown."""
        entry = self._entries.get((bucket, key))
        if entry is None:
            self.misses += 1
            return None
        node, expires = entry
        if self.clock() >= expires:
            del self._entries[(bucket, key)]
            self.misses += 1
            return None
        self._entries.move_to_end((bucket, key))
        if node == NOWHERE:
            self.negative_hits += 1
        else:
            self.hits += 1
        return node

    def found(self, bucket: str, key: str, node: str) -> None:
        self._put(bucket, key, node, self.hit_ttl)

    def missing(self, bucket: str, key: str, asked_at: float | None = None) -> None:
        """No node has the object, as found by a lookup that began at ``asked_at`` (this cache's
        clock): cached unless the entry was dropped since (a write of the key meanwhile)."""
        if asked_at is not None and self._forgotten.get((bucket, key), float("-inf")) >= asked_at:
            return
        self._put(bucket, key, NOWHERE, self.miss_ttl)

    def drop(self, bucket: str, key: str) -> None:
        """Drop an entry found wrong by the lookup that uses it (the node it named said no)."""
        self._entries.pop((bucket, key), None)

    def forget(self, bucket: str, key: str) -> None:
        """The object was written or deleted (here, or on a node that tells us): drop the entry, and
        let no lookup that began before cache a miss of it."""
        self._entries.pop((bucket, key), None)
        now = self.clock()
        forgotten = self._forgotten
        forgotten[(bucket, key)] = now
        forgotten.move_to_end((bucket, key))
        while forgotten and (len(forgotten) > self.max_entries
                             or next(iter(forgotten.values())) < now - self.forgotten_for):
            forgotten.popitem(last=False)

    def _put(self, bucket: str, key: str, node: str, ttl: float) -> None:
        if ttl <= 0:
            return
        self._entries[(bucket, key)] = (node, self.clock() + ttl)
        self._entries.move_to_end((bucket, key))
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
