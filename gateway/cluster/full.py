"""FullStores: the nodes whose store ran out of space, so that writes are placed elsewhere for a while.

A storing node whose disk (or quota) is full answers every write with 507
InsufficientStorage, which S3 clients do not retry. The primary and the
proxies place writes on the less busy nodes: without this, a full node would
keep getting its share of them while the others have room. A full store is
noted where it is seen, for ``retry_after`` seconds (setting
``full_store_retry``):

- by the node itself (a write it stored failed with ENOSPC or EDQUOT),
  which publishes it with its heartbeat (``storage_full``, also in
  ``cluster status --json``), so that every node learns of it;
- by the node that placed a write there and got the 507 back, at once,
  before that node's next heartbeat.

Then the placed write is tried there again, as space may have been freed.
The write that found the store full is answered 507 (its body was streamed
on and cannot be sent again); the writes after it go to other nodes.
docs/cluster.md, "A full node".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .. import errors


class FullStores:
    """(node, backend name) pairs seen full, each until ``retry_after`` seconds after it was last seen."""

    def __init__(self, retry_after: float, clock: Callable[[], float] = time.monotonic):
        self.retry_after = retry_after
        self.clock = clock
        self._until: dict[tuple[str, str], float] = {}

    def note(self, node: str, backend: str) -> None:
        self._until[(node, backend)] = self.clock() + self.retry_after

    def is_full(self, node: str, backend: str) -> bool:
        until = self._until.get((node, backend))
        if until is None:
            return False
        if until <= self.clock():
            del self._until[(node, backend)]
            return False
        return True

    def noted(self) -> list[tuple[str, str]]:
        """Every (node, backend) noted full now."""
        return sorted(pair for pair in list(self._until) if self.is_full(*pair))

    def of(self, node: str) -> list[str]:
        """The backends of ``node`` noted full now (what a node publishes of itself)."""
        return sorted(backend for (who, backend) in list(self._until) if who == node and self.is_full(who, backend))

    @contextmanager
    def noting(self, node: str, backend: str) -> Iterator[None]:
        """Note (node, backend) full when the block raises a full-storage error (raised on)."""
        try:
            yield
        except errors.InsufficientStorage:
            self.note(node, backend)
            raise
        except OSError as exc:
            if exc.errno in errors.FULL_ERRNOS:
                self.note(node, backend)
            raise
