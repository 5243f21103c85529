"""One asyncio lock per key (an object key, an upload ID), kept only while it is held or waited for.

Requests of one key that must not interleave (two conditional PUTs, a Complete and
an Abort of one upload) take turns in this process; every other key goes on
at once. A lock of a key nobody holds costs nothing: the table forgets it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Hashable


class KeyedLocks:
    def __init__(self):
        self._locks: dict[Hashable, list] = {}  # key -> [lock, holders and waiters]

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable, wait: float, busy: Callable[[], Exception]):
        """Hold ``key``'s lock for the block; raise ``busy()`` after ``wait`` seconds of waiting
        (only then: an error the block raises passes unchanged)."""
        entry = self._locks.setdefault(key, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            try:
                await asyncio.wait_for(entry[0].acquire(), wait)
            except TimeoutError:
                raise busy() from None
            try:
                yield
            finally:
                entry[0].release()
        finally:
            entry[1] -= 1
            if not entry[1]:
                del self._locks[key]

    def __len__(self) -> int:
        return len(self._locks)
