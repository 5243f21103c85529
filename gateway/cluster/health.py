"""Peer health as this node sees it: which peers to ask first, which last.

A peer that failed (refused, reset, timed out) is *limited*: it is tried
after every healthy peer until it answers again. Among healthy peers the
faster one (smoothed latency) goes first. The clock is injected so tests
drive time by hand instead of sleeping (swift's error_limiter has to patch
``time``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# Weight of the newest sample in the smoothed latency.
LATENCY_WEIGHT = 0.3


@dataclass
class PeerState:
    latency: float = 0.0  # smoothed seconds per answered call
    failures: int = 0  # consecutive failures
    limited_since: float | None = None  # clock time of the first failure of the current streak
    last_error: str = ""
    answered: int = 0
    failed: int = 0
    last_answer: float = float("-inf")  # clock time of the last answer


class PeerHealth:
    """:param clock: returns seconds (monotonic); tests pass a fake."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._peers: dict[str, PeerState] = {}

    def _state(self, peer: str) -> PeerState:
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = PeerState()
        return state

    def succeeded(self, peer: str, seconds: float) -> None:
        """The peer answered (any HTTP answer counts, a 404 too) in ``seconds``."""
        state = self._state(peer)
        state.latency = seconds if state.answered == 0 else (
            LATENCY_WEIGHT * seconds + (1 - LATENCY_WEIGHT) * state.latency)
        state.answered += 1
        state.last_answer = self.clock()
        state.failures = 0
        state.limited_since = None
        state.last_error = ""

    def failed(self, peer: str, reason: str) -> None:
        """The peer did not answer in time or the connection failed."""
        state = self._state(peer)
        state.failures += 1
        state.failed += 1
        state.last_error = reason
        if state.limited_since is None:
            state.limited_since = self.clock()

    def quiet(self, peer: str, seconds: float) -> bool:
        """Whether the peer has not answered anything for ``seconds`` (or ever): without traffic to it,
        nothing would find out that it is gone, and the health (and its metric) would say healthy."""
        state = self._peers.get(peer)
        return state is None or self.clock() - state.last_answer >= seconds

    def limited(self, peer: str) -> bool:
        state = self._peers.get(peer)
        return state is not None and state.limited_since is not None

    def order(self, peers: Iterable[str]) -> list[str]:
        """Healthy peers fastest first, then limited ones, longest-failing last."""
        peers = list(peers)
        healthy = [p for p in peers if not self.limited(p)]
        limited = [p for p in peers if self.limited(p)]
        healthy.sort(key=lambda p: self._peers[p].latency if p in self._peers else 0.0)
        limited.sort(key=lambda p: -self._peers[p].limited_since)
        return healthy + limited

    def split(self, peers: Iterable[str]) -> tuple[list[str], list[str]]:
        """(healthy in order, limited in order)."""
        ordered = self.order(peers)
        return [p for p in ordered if not self.limited(p)], [p for p in ordered if self.limited(p)]

    def forget(self, peer: str) -> None:
        self._peers.pop(peer, None)

    def snapshot(self) -> dict[str, dict]:
        """Per peer: healthy, limited for how long, last error, counts (for cluster status and /_admin/cluster)."""
        now = self.clock()
        return {
            peer: {
                "healthy": state.limited_since is None,
                "limited_for": 0.0 if state.limited_since is None else round(now - state.limited_since, 3),
                "latency_ms": round(state.latency * 1000, 3),
                "failures": state.failures,
                "answered": state.answered,
                "failed": state.failed,
                "last_error": state.last_error,
            }
            for peer, state in sorted(self._peers.items())
        }
