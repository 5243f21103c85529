"""Say a recurring condition in the log once a period per subject, not once per request or heartbeat.

A node down made every read that asked it log a line (hundreds a second under load), and a stalled
failover said the same sentence on every heartbeat (17,000 lines a day): the log an operator reads
at 3 a.m. was the same line over and over. Each subject (a peer, a pair of nodes) is said at most
once per period, with how many times it happened since it was last said."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable


class Sometimes:
    def __init__(self, period: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.period = period
        self.clock = clock
        self._said: dict[Hashable, list] = {}  # subject -> [when last said, times since]

    def due(self, subject: Hashable) -> int | None:
        """None when ``subject`` was said less than a period ago (counted); else how many times it came
        up since it was last said (0 the first time), and it is said now."""
        now = self.clock()
        said = self._said.get(subject)
        if said is not None and now - said[0] < self.period:
            said[1] += 1
            return None
        if len(self._said) > 1000:  # subjects are peers and node pairs: a few; bounded all the same
            self._said.clear()
        self._said[subject] = [now, 0]
        return said[1] if said is not None else 0


def since(count: int) -> str:
    """" (and 41 more times since)" for a line said again after ``count`` quiet repeats."""
    return f" (and {count:,} more times since it was last said)" if count else ""
