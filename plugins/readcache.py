"""What the local backend's GET path would otherwise read or recompute on every request.

The first two caches are keyed by exactly what they are computed from, so they can never be stale:

- object paths by (backend, bucket, key): escaping a key into a path is a pure function;
- parsed object headers by the header's bytes as read from the file: the same bytes always
  parse to the same ObjectInfo. A rewritten object has new bytes (etag, time) and misses.

Each saves a few microseconds per GET (json.loads of the header is the larger part), which
matters when a whole small GET costs about 50. See docs/performance.md.

The third, ``SmallObjects``, keeps recently read objects (their ObjectInfo, and their bytes or,
for objects beyond the first read of a file, their open file) per backend, each with the identity of the file it was
read from. Every use compares that identity with a fresh ``stat()`` of the path, so a replaced,
rewritten or deleted file is never served from it; what it saves is the open, read and close of
the file and the copies of its bytes.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from functools import lru_cache

from gateway.backend import OpenFile

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


# A file whose status changed this recently is not cached: file times have a coarse clock (a
# kernel tick, 1-10 ms), so a file written again within the same tick could keep the times (and,
# with a recycled inode, the whole identity) of the one read. Older than this, a replacement must
# differ in its change time (see SmallObjects).
SETTLE_SECONDS = 0.1
ENTRY_OVERHEAD = 256  # bytes per entry beyond the data: the path, the identity, the ObjectInfo


def file_identity(st: os.stat_result) -> tuple:
    """What tells one version of an object file from another: the gateway never writes into a
    published file (it renames a new one over it), so a new version is a new inode, and its change
    time is the time of that rename."""
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class SmallObjects:
    """Recently read objects: path -> (file identity, ObjectInfo, what to send); least recently
    used go first once ``limit`` bytes or ``max_files`` open files are held.

    What to send is the object's bytes (objects that came whole with the first read of their file,
    up to about 64 KiB) or the open file itself (``OpenFile``, for larger objects up to the size
    the backend reads in one piece), which the HTTP front end sends with ``sendfile``: no copy of
    the bytes through Python or into the socket, and no second copy of them in memory beside the
    page cache. sendfile needs a second system call (head, then file) where bytes go out with one
    write: at 32 KiB the two measured the same CPU per GET or a little more for sendfile, at 1 MiB
    sendfile is much cheaper (docs/performance.md, "sendfile").

    An entry is used only while ``file_identity(os.stat(path))`` equals the one recorded when the
    file was read (``lookup``), so what a client gets is what the file holds at that moment:
    an overwrite (a new inode), a delete (no file) or any change of the file's status (its ctime)
    misses. Files changed within ``SETTLE_SECONDS`` are not recorded (``offer``). An open file
    stays valid for the version it was opened on; a file deleted by another process keeps its
    disk space until its entry goes (a miss, eviction, or ``clear()`` when the backend closes).

    Used from the event loop thread only, like the backend's read path.
    """

    def __init__(self, limit: int, max_files: int = 0, clock=time.time):
        self.limit = limit
        self.max_files = max_files
        self.size = 0
        self.files = 0  # entries that hold an open file
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, tuple] = OrderedDict()
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, path: str):
        """(ObjectInfo, bytes or OpenFile) if ``path`` was recorded and its file is unchanged, else
        None. An OpenFile returned is only borrowed: acquire() it to keep it past this call.

        Raises what ``os.stat`` raises for a recorded path (FileNotFoundError: deleted since).
        """
        entry = self._entries.get(path)
        if entry is None:
            self.misses += 1
            return None
        try:
            identity = file_identity(os.stat(path))
        except OSError:
            self.discard(path)
            raise
        if identity != entry[0]:
            self.discard(path)
            self.misses += 1
            return None
        self._entries.move_to_end(path)
        self.hits += 1
        return entry[1], entry[2]

    def offer(self, path: str, st: os.stat_result, info, data: bytes | OpenFile) -> None:
        """Record ``data`` (the object's bytes, or its open file, of which the cache then takes a
        reference of its own) and ``info`` as read from the file whose ``fstat`` is ``st``."""
        is_file = type(data) is OpenFile
        if is_file and self.max_files <= 0:
            return
        cost = _cost(data)
        if cost > self.limit or self._clock() - st.st_ctime < SETTLE_SECONDS:
            return
        self.discard(path)
        entries = self._entries
        while (self.size + cost > self.limit or (is_file and self.files >= self.max_files)) and entries:
            self.discard(next(iter(entries)))  # the least recently used
        if is_file:
            data.acquire()
            self.files += 1
        entries[path] = (file_identity(st), info, data)
        self.size += cost

    def discard(self, path: str) -> None:
        entry = self._entries.pop(path, None)
        if entry is not None:
            self.size -= _cost(entry[2])
            if type(entry[2]) is OpenFile:
                self.files -= 1
                entry[2].release()

    def clear(self) -> None:
        """Drop every entry (and close the files no reader holds any more)."""
        for path in list(self._entries):
            self.discard(path)


def _cost(data: bytes | OpenFile) -> int:
    """What an entry counts against the byte limit."""
    return ENTRY_OVERHEAD if type(data) is OpenFile else len(data) + ENTRY_OVERHEAD
