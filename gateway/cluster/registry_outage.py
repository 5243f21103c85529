"""The registry not answering a node's heartbeat rounds: said once, again now and then, and when it ends.

A round that cannot reach the registry (etcd down, quorum lost, the SQLite file
unreadable) was a long warning on every heartbeat (one a second), with a
"retrying in" that was not the real wait, nothing when the registry came back,
and nothing in /metrics to alert on: objects are still served meanwhile, but
no node joins or leaves, conditional writes are 503s and no failover can run.
Now the first failure is a warning, a reminder follows every REMIND_EVERY
seconds while it lasts, its end is logged with how long it lasted, and
/metrics has ``gateway_cluster_registry_up`` and the failed rounds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("gateway.cluster")
REMIND_EVERY = 60.0  # seconds between warnings while the registry stays unreachable


class RegistryOutage:
    def __init__(self, url: str, clock: Callable[[], float] = time.monotonic):
        self.url = url
        self.clock = clock
        self.since: float | None = None  # when the current outage began (None: the registry answers)
        self.failed_rounds = 0  # heartbeat rounds the registry failed, ever (a counter for /metrics)
        self._reminded = 0.0

    @property
    def up(self) -> bool:
        return self.since is None

    def failed(self, error: Exception) -> None:
        now = self.clock()
        self.failed_rounds += 1
        if self.since is None:
            self.since = self._reminded = now
            log.warning("cluster registry %s cannot be reached: %s. Objects are still served; until it answers, no "
                        "node joins or leaves, conditional writes are 503s and no failover can run. Check that the "
                        "registry runs and that --registry names it; each heartbeat tries again", self.url, error)
        elif now - self._reminded >= REMIND_EVERY:
            self._reminded = now
            log.warning("cluster registry %s still cannot be reached, for %.0f s now: %s", self.url, now - self.since,
                        error)

    def answered(self) -> None:
        if self.since is not None:
            log.warning("cluster registry %s answers again, after %.0f s", self.url, self.clock() - self.since)
            self.since = None
