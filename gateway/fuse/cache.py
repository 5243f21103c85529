"""Attribute, directory and first-bytes caches, with TTLs and an injected clock.

A TTL of 0 disables a cache: every lookup then asks the gateway.

Entries written while a directory is being listed share one ``Stamp`` whose
deadline is set when the listing ends, so a 10,000-entry ``ls -l`` finds the
first entries still fresh when it stats them after the last page arrived.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

FILE, DIR, LINK = "file", "dir", "link"


@dataclass
class Attr:
    """One path's attributes as the filesystem knows them (stat() is built from this)."""

    kind: str  # FILE, DIR or LINK
    size: int = 0
    mtime: float = 0.0
    mode: int | None = None  # permission bits from object metadata; None: the mount's default
    uid: int | None = None
    gid: int | None = None
    etag: str = ""
    marker: bool = False  # directories: a "dir/" marker object exists (it survives its last child)
    from_listing: bool = False  # a listing carries no metadata: mode/uid/gid/mtime may be incomplete
    target: str | None = None  # symlinks: where they point
    meta: dict[str, str] | None = None  # the stored x-amz-meta-* values, when known
    # ``mtime`` to the nanosecond, when the stored metadata gives it (a float of seconds since 1970
    # holds only about a quarter of a microsecond): shown while it agrees with ``mtime``.
    mtime_ns: int | None = None
    # What a HEAD or GET said of the object's Content-Type and stored headers (cache-control, ...); None
    # when not known (a listing): a copy that replaces its metadata must send them again.
    content_type: str | None = None
    stored: dict[str, str] | None = None


class Stamp:
    """A deadline shared by the entries of one listing (or owned by one entry)."""

    __slots__ = ("deadline",)

    def __init__(self, deadline: float):
        self.deadline = deadline


MISSING = Attr(kind="missing")  # a cached "does not exist"


class AttrCache:
    """path -> Attr (or MISSING), each fresh until its stamp's deadline; LRU-bounded."""

    def __init__(self, ttl: float, max_entries: int = 200_000, clock=time.monotonic):
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[str, tuple[Attr, Stamp]] = OrderedDict()
        self._lock = threading.Lock()

    def stamp(self) -> Stamp:
        return Stamp(self.clock() + self.ttl)

    def renew(self, stamp: Stamp) -> None:
        stamp.deadline = self.clock() + self.ttl

    def get(self, path: str) -> Attr | None:
        """The cached Attr, MISSING, or None when unknown or stale."""
        with self._lock:
            entry = self._entries.get(path)
            if entry is None:
                return None
            if entry[1].deadline <= self.clock():
                del self._entries[path]
                return None
            return entry[0]

    def put(self, path: str, attr: Attr, stamp: Stamp | None = None) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            self._entries[path] = (attr, stamp or self.stamp())
            self._entries.move_to_end(path)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def put_missing(self, path: str) -> None:
        self.put(path, MISSING)

    def invalidate(self, path: str) -> None:
        with self._lock:
            self._entries.pop(path, None)

    def invalidate_tree(self, path: str) -> None:
        """Forget ``path`` and everything below it (after a directory rename or removal)."""
        prefix = path.rstrip("/") + "/"
        with self._lock:
            for name in [name for name in self._entries if name == path or name.startswith(prefix)]:
                del self._entries[name]


@dataclass
class Listing:
    entries: dict[str, Attr]
    stamp: Stamp


class DirCache:
    """directory path -> its complete listing, for directories up to ``max_entries`` entries.

    A fresh listing answers readdir again and says "no such entry" without a
    request. Changes made through this mount edit the cached listing.
    """

    def __init__(self, ttl: float, max_entries: int = 10_000, max_dirs: int = 256, clock=time.monotonic):
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_dirs = max_dirs
        self.clock = clock
        self._listings: OrderedDict[str, Listing] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str) -> Listing | None:
        with self._lock:
            listing = self._listings.get(path)
            if listing is None:
                return None
            if listing.stamp.deadline <= self.clock():
                del self._listings[path]
                return None
            return listing

    def put(self, path: str, entries: dict[str, Attr]) -> None:
        if self.ttl <= 0 or len(entries) > self.max_entries:
            return
        with self._lock:
            self._listings[path] = Listing(entries, Stamp(self.clock() + self.ttl))
            self._listings.move_to_end(path)
            while len(self._listings) > self.max_dirs:
                self._listings.popitem(last=False)

    def add(self, directory: str, name: str, attr: Attr) -> None:
        with self._lock:
            listing = self._listings.get(directory)
            if listing is not None:
                listing.entries[name] = attr

    def discard(self, directory: str, name: str) -> None:
        with self._lock:
            listing = self._listings.get(directory)
            if listing is not None:
                listing.entries.pop(name, None)

    def invalidate(self, path: str) -> None:
        with self._lock:
            self._listings.pop(path, None)

    def invalidate_tree(self, path: str) -> None:
        prefix = path.rstrip("/") + "/"
        with self._lock:
            for name in [name for name in self._listings if name == path or name.startswith(prefix)]:
                del self._listings[name]


class FirstBytes:
    """The first bytes of recently looked-up files (fetched with their attributes), LRU-bounded by size.

    A small file's open+read+close then needs no request after the lookup.
    """

    def __init__(self, max_bytes: int = 64 * 1024 * 1024):
        self.max_bytes = max_bytes
        self._data: OrderedDict[str, tuple[str, bytes]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def put(self, path: str, etag: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._data.pop(path, None)
            if old is not None:
                self._size -= len(old[1])
            self._data[path] = (etag, data)
            self._size += len(data)
            while self._size > self.max_bytes:
                _, (_, dropped) = self._data.popitem(last=False)
                self._size -= len(dropped)

    def get(self, path: str, etag: str) -> bytes | None:
        with self._lock:
            entry = self._data.get(path)
            if entry is None or entry[0] != etag:
                return None
            return entry[1]

    def invalidate(self, path: str) -> None:
        with self._lock:
            old = self._data.pop(path, None)
            if old is not None:
                self._size -= len(old[1])
