"""Derived data the local backend's GET path would otherwise recompute on every request.

Both caches are keyed by exactly what they are computed from, so they can never be stale:

- object paths by (backend, bucket, key): escaping a key into a path is a pure function;
- parsed object headers by the header's bytes as read from the file: the same bytes always
  parse to the same ObjectInfo. A rewritten object has new bytes (etag, time) and misses.

Each saves a few microseconds per GET (json.loads of the header is the larger part), which
matters when a whole small GET costs about 50. See docs/performance.md.
"""

from __future__ import annotations

from functools import lru_cache

from .fslayout import MAGIC, PREFIX

PATH_CACHE_SIZE = 16384
HEADER_CACHE_SIZE = 16384  # about 1 KB each: header bytes + ObjectInfo


@lru_cache(maxsize=PATH_CACHE_SIZE)
def object_path(backend, bucket: str, key: str) -> str:
    """``backend._object_path(bucket, key)``, remembered (errors are not cached)."""
    return backend._object_path(bucket, key)


def header_bytes(first: bytes) -> bytes | None:
    """The prefix and JSON header at the start of ``first``, or None when it is not all there."""
    if len(first) < PREFIX.size:
        return None
    magic, length = PREFIX.unpack_from(first)
    end = PREFIX.size + length
    if magic != MAGIC or len(first) < end:
        return None
    return first[:end]


class HeaderCache:
    """header bytes -> (ObjectInfo, data offset); oldest entries go first when full.

    The ObjectInfo is shared by every request for that object: callers treat it as read-only
    (it is a frozen dataclass; its meta mappings are only ever read)."""

    def __init__(self, limit: int = HEADER_CACHE_SIZE):
        self._entries: dict[bytes, tuple] = {}
        self._limit = limit

    def get(self, key: bytes | None):
        return self._entries.get(key) if key is not None else None

    def put(self, key: bytes | None, value: tuple) -> None:
        if key is None:
            return
        entries = self._entries
        if len(entries) >= self._limit:
            del entries[next(iter(entries))]  # insertion order: the oldest
        entries[key] = value


headers = HeaderCache()
