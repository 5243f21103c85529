"""Where this node sends object requests, and the distribution it produced.

Placement (PUTs on the primary and on proxies): power of two choices on
outstanding requests. Pick two candidates at random and send the request to
the one with fewer requests in flight. It needs no shared state between
nodes, reacts to a slow node within a few requests, and avoids the herd
effect of always picking the single least-loaded node.

Reads on shared storage (the primary only, docs/cluster.md "Read load
balancing"): least outstanding requests, with a margin in favour of serving
locally, because a relayed read costs the primary more CPU than serving it.

The counts (``placed``, ``reads``) are the distribution that `gateway cluster
status` and ``GET /metrics`` show.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import contextmanager

from ..backend import ObjectReader
from .tally import Tally

# Reads on shared storage: the primary hands a GET to a redundant node only when it has more than this
# many GETs in flight beyond that node's. Serving a small object costs the primary 26-85 us, relaying it
# about 108 us (docs/calibration.md): a handoff pays only when the primary's responses queue up.
READ_HANDOFF_MARGIN = 4


class Balancer:
    """:param rng: random source (tests pass a seeded one)."""

    def __init__(self, rng: random.Random | None = None):
        self.rng = rng or random.Random()
        self.outstanding: Tally[str] = Tally()
        self.placed: Tally[str] = Tally()  # PUTs this node sent to each node (itself included)
        self.reads: Tally[str] = Tally()  # GET/HEAD requests through this node answered by each node
        # (node, operation) -> object requests through this node that ``node`` answered: get, head, put,
        # delete (a node that held the object). On a proxy these are its forwards per target.
        self.served: Tally[tuple[str, str]] = Tally()

    def choose(self, candidates: list[str]) -> str:
        """One of ``candidates`` (not empty), the less busy of two random picks."""
        if len(candidates) == 1:
            return candidates[0]
        first, second = self.rng.sample(candidates, 2)
        return first if self.outstanding[first] <= self.outstanding[second] else second

    def least_busy(self, candidates: list[str]) -> str:
        """The candidate (not empty) with the fewest requests in flight; ties go to the first listed."""
        return min(candidates, key=lambda node: self.outstanding[node])

    @contextmanager
    def track(self, node: str, counted: bool = True):
        """A PUT placed on ``node``: outstanding while the block runs, counted as placed there when it
        ends without an error (a refused one, BadDigest, or one that failed and was placed again on
        another node, stored nothing there: the metric is of objects stored). ``counted`` False: the
        write is the gateway's own bookkeeping (a multipart upload's parts and record), outstanding
        like any request but not a placement: one upload through a proxy counted as several PUTs."""
        self.outstanding[node] += 1
        try:
            yield
        finally:
            self.outstanding[node] -= 1
        if counted:  # (not reached when the block raised)
            self.placed[node] += 1
            self.served[node, "put"] += 1

    def begin(self, node: str) -> Callable[[], None]:
        """Count a request to ``node`` as outstanding until the returned function is called (once)."""
        self.outstanding[node] += 1
        done = False

        def end() -> None:
            nonlocal done
            if not done:
                done = True
                self.outstanding[node] -= 1

        return end

    def served_read(self, node: str, operation: str) -> None:
        self.reads[node] += 1
        self.served[node, operation] += 1

    def deleted_on(self, node: str) -> None:
        self.served[node, "delete"] += 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Per node: PUTs placed there and reads it answered (since start), requests in flight now."""
        nodes = sorted(set(self.placed) | set(self.reads) | {n for n, c in self.outstanding.items() if c})
        return {node: {"placed": self.placed[node], "reads": self.reads[node], "outstanding": self.outstanding[node]}
                for node in nodes}


def release_on_close(reader: ObjectReader, callback: Callable[[], None]) -> ObjectReader:
    """Call ``callback`` once the reader is closed (after its own close)."""
    previous = reader._close

    def close() -> None:
        try:
            if previous is not None:
                previous()
        finally:
            callback()

    reader._close = close
    return reader
