"""Notice that this process stood still (SIGSTOP, a paused VM, a swap storm), without trusting clocks.

Why: a node that was frozen finds, when it runs again, the peer writes sent to it meanwhile still in
its sockets. Their senders gave up after ``peer_timeout`` and answered their clients 503; a client
may since have written the key again through another node. Stored now, the old write would get a
newer modification time than that acknowledged one and replace it (last writer wins, docs/cluster.md
"Overwrites"). The peer route therefore refuses writes for a while after a stall (gateway/api/peer.py).

A timer ticks every ``interval`` seconds on the event loop; a tick that comes more than ``limit``
seconds after the previous one means the loop did not run in between. Only the monotonic clock of
this process is read, so it works whatever the nodes' wall clocks say. (The sender's signature time
would tell a request's age too, but only as well as the two hosts' clocks agree, and peer_timeout
is 2 s.)
"""

from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger("gateway.cluster")
GRACE = 0.5  # seconds after a stall during which peer writes are refused


class StallWatch:
    """:param limit: a gap between ticks longer than this is a stall (the peer timeout).
    :param clock: a monotonic clock (injected by tests)."""

    def __init__(self, limit: float, clock=time.monotonic, interval: float | None = None):
        self.limit = limit
        self.clock = clock
        self.interval = interval if interval is not None else min(0.25, limit / 4)
        self.grace = min(limit, GRACE)
        self._last = clock()
        self._resumed_at: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.on_stall = None  # called (no arguments) when a stall is noticed: the cluster catches up

    def start(self) -> None:
        self._last = self.clock()
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self.tick()
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def tick(self) -> None:
        now = self.clock()
        gap = now - self._last
        if gap > self.limit:
            self._resumed_at = now
            log.warning("this node did not run for %.1f s (stopped, paused or starved of CPU): peer writes are "
                        "refused for %.1f s, their senders have given up on those sent meanwhile", gap, self.grace)
            if self.on_stall is not None:
                self.on_stall()
        self._last = now

    def stalled_recently(self) -> bool:
        """Whether a stall ended less than ``grace`` seconds ago: what was sent during it is still
        being read. The requests that waited in the sockets are read in the first loop iterations
        after the process runs again; a short window keeps fresh requests that come just after
        (a stall can also be a loaded machine's, not a frozen node's) mostly out of it."""
        if self._timer is not None and self.clock() - self._last > self.limit:
            self.tick()  # running again, and the overdue tick has not come yet: the stall is now
        return self._resumed_at is not None and self.clock() - self._resumed_at < self.grace
