"""Stores that take no placed writes for a while: full ones and failed ones.

A storing node whose disk (or quota) is full answers every write with 507
InsufficientStorage, which S3 clients do not retry; one whose filesystem
failed (EIO, remounted read-only, a stale NFS handle; or a backend that
cannot reach its store) answers 503. The primary and the proxies place
writes on the less busy nodes: without this, such a node would keep getting
its share of them while the others can store them. A store is noted where
it is seen, for ``retry_after`` seconds (settings ``full_store_retry`` and
``failed_store_retry``):

- by the node itself (a write to its store failed that way), which
  publishes it with its heartbeat (``storage_full``, ``storage_failed``,
  also in ``cluster status --json``), so that every node learns of it;
- by the node that placed a write there and got the 507 or 503 back, at
  once, before that node's next heartbeat.

Then the placed write is tried there again, as space may have been freed or
the disk mounted again. The write that found the store that way is placed
again on another node with the body kept while it was written (up to 1 MiB,
services/cluster_nodes/node.py ``_put_placed``; a longer body is answered with the
store's 507 or 503); the writes after it go to other nodes. Nothing is
refused because of a note: when every node is noted, writes are placed as
before and each answers for itself.
docs/cluster.md, "A full or failed store".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .. import errors


class LeftOutStores:
    """(node, backend name) pairs left out of write placement, each until ``retry_after`` seconds after
    it was last seen so. Subclasses say which failures note a store (``caused_by``) and under which
    name a node publishes its own (``published_as``)."""

    published_as = ""

    def __init__(self, retry_after: float, clock: Callable[[], float] = time.monotonic):
        self.retry_after = retry_after
        self.clock = clock
        self._until: dict[tuple[str, str], float] = {}

    @staticmethod
    def caused_by(exc: BaseException) -> bool:
        raise NotImplementedError

    def note(self, node: str, backend: str) -> None:
        self._until[(node, backend)] = self.clock() + self.retry_after

    def left_out(self, node: str, backend: str) -> bool:
        until = self._until.get((node, backend))
        if until is None:
            return False
        if until <= self.clock():
            del self._until[(node, backend)]
            return False
        return True

    def noted(self) -> list[tuple[str, str]]:
        """Every (node, backend) noted now."""
        return sorted(pair for pair in list(self._until) if self.left_out(*pair))

    def of(self, node: str) -> list[str]:
        """The backends of ``node`` noted now (what a node publishes of itself)."""
        return sorted(backend for (who, backend) in list(self._until) if who == node and self.left_out(who, backend))

    @contextmanager
    def noting(self, node: str, backend: str) -> Iterator[None]:
        """Note (node, backend) when the block raises one of this kind's failures (raised on)."""
        try:
            yield
        except Exception as exc:
            if self.caused_by(exc):
                self.note(node, backend)
            raise


class FullStores(LeftOutStores):
    """Stores out of space: a 507 from a node, ENOSPC or EDQUOT here."""

    published_as = "storage_full"

    @staticmethod
    def caused_by(exc: BaseException) -> bool:
        return isinstance(exc, errors.InsufficientStorage) or (
            isinstance(exc, OSError) and exc.errno in errors.FULL_ERRNOS)


class FailedStores(LeftOutStores):
    """Stores whose filesystem or backend failed: BackendUnavailable (a node's store, not the node, did
    not answer), EIO, EROFS or ESTALE here. Not a peer that does not answer: that is PeerHealth's."""

    published_as = "storage_failed"

    @staticmethod
    def caused_by(exc: BaseException) -> bool:
        return isinstance(exc, errors.BackendUnavailable) or (
            isinstance(exc, OSError) and exc.errno in errors.FAILED_ERRNOS)
