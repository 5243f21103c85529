"""Peer request signing: an HMAC-SHA256 over method, path with query, and time, keyed by the cluster secret.

Client credentials never sign peer requests, and a peer signature never
authenticates an S3 request: the two route sets are separate (see
gateway/api/peer.py). The time bounds replay to ``MAX_SKEW`` seconds; the
transport (HTTPS with the cluster CA) keeps the signature itself private.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time

HEADER = "x-cluster-auth"
NODE_HEADER = "x-cluster-node"
MAX_SKEW = 60.0


class PeerAuthError(Exception):
    """The peer request is not signed with this cluster's secret (or is too old)."""


def _hmac_states(key: bytes) -> tuple:
    """HMAC-SHA256's (RFC 2104) inner and outer hash states for ``key``, computed once: a message
    then costs two state copies and two updates (~0.6 µs, against ~1.4 µs for hmac.HMAC.copy() and
    its Python wrappers; every relayed read is signed on one node and checked on another). The
    digests equal hmac.new(key, message, sha256)'s (tests/cluster/test_units.py)."""
    block = hashlib.sha256().block_size
    if len(key) > block:
        key = hashlib.sha256(key).digest()
    key = key.ljust(block, b"\0")
    return hashlib.sha256(bytes(b ^ 0x36 for b in key)), hashlib.sha256(bytes(b ^ 0x5C for b in key))


class PeerSigner:
    """Signs and checks peer requests for one cluster.

    :param secret: the cluster secret (the same on every node).
    :param node_id: this node's id, sent so the receiver can log who called.
    :param clock: returns epoch seconds (tests pass a fake).
    """

    def __init__(self, secret: str, node_id: str, clock=time.time):
        self._inner, self._outer = _hmac_states(secret.encode())
        self.node_id = node_id
        self.clock = clock

    def headers(self, method: str, target: str) -> dict[str, str]:
        """Headers for a request to ``target`` (path and query exactly as sent)."""
        return {HEADER: self._signature(method, target), NODE_HEADER: self.node_id}

    def header_lines(self, method: str, target: str) -> str:
        """headers() as HTTP header lines, each ending in CRLF (the relay's pass-through writes its
        request as one string: docs/cluster.md "Pass-through reads")."""
        return f"{HEADER}: {self._signature(method, target)}\r\n{NODE_HEADER}: {self.node_id}\r\n"

    def _signature(self, method: str, target: str) -> str:
        stamp = f"{self.clock():.3f}"
        return f"{stamp}:{self._digest(method, target, stamp, self.node_id)}"

    def _digest(self, method: str, target: str, stamp: str, node: str) -> str:
        inner = self._inner.copy()
        inner.update(f"{method.upper()}\n{target}\n{stamp}\n{node}".encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()

    def verify(self, method: str, target: str, value: str | None, node: str | None) -> str:
        """Return the calling node's id; raise PeerAuthError saying what is wrong."""
        if not value or ":" not in value:
            raise PeerAuthError(f"peer routes need the {HEADER} header of a cluster node")
        stamp, signature = value.split(":", 1)
        try:
            age = abs(self.clock() - float(stamp))
        except ValueError:
            raise PeerAuthError(f"malformed {HEADER} header") from None
        if not math.isfinite(age):  # "nan" or "inf" would pass the comparison below
            raise PeerAuthError(f"malformed {HEADER} header")
        if age > MAX_SKEW:
            raise PeerAuthError(f"peer request time is {age:.0f}s away from ours (limit {MAX_SKEW:.0f}s): "
                                "check the clocks")
        expected = self._digest(method, target, stamp, node or "")
        if not hmac.compare_digest(expected, signature):
            raise PeerAuthError("peer signature does not match: the caller has another cluster secret")
        return node or ""
