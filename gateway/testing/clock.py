"""ManualClock: a clock a test moves by hand, for the classes that take a ``clock`` (no sleeping in tests).

    clock = ManualClock()
    health = PeerHealth(clock)
    clock.now += 30
"""

from __future__ import annotations


class ManualClock:
    """Returns ``now`` when called; the test sets or advances ``now``."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now
