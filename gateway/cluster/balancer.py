"""Where the primary places new objects: power of two choices on outstanding requests.

Pick two candidates at random and send the request to the one with fewer
requests in flight. It needs no shared state between nodes, reacts to a
slow node within a few requests, and avoids the herd effect of always
picking the single least-loaded node.
"""

from __future__ import annotations

import random
from collections import Counter
from contextlib import contextmanager


class Balancer:
    """:param rng: random source (tests pass a seeded one)."""

    def __init__(self, rng: random.Random | None = None):
        self.rng = rng or random.Random()
        self.outstanding: Counter[str] = Counter()
        self.placed: Counter[str] = Counter()

    def choose(self, candidates: list[str]) -> str:
        """One of ``candidates`` (not empty), the less busy of two random picks."""
        if len(candidates) == 1:
            return candidates[0]
        first, second = self.rng.sample(candidates, 2)
        return first if self.outstanding[first] <= self.outstanding[second] else second

    @contextmanager
    def track(self, node: str):
        """Count a request to ``node`` as outstanding while the block runs."""
        self.outstanding[node] += 1
        self.placed[node] += 1
        try:
            yield
        finally:
            self.outstanding[node] -= 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Per node: requests placed there since start, and in flight now."""
        return {node: {"placed": self.placed[node], "outstanding": self.outstanding[node]}
                for node in sorted(self.placed)}
