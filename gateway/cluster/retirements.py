"""Older copies that a node must still drop: kept in the registry until that node drops them.

After a PUT the writing node asks every other storing node to drop an older
copy of the key (docs/cluster.md, "Overwrites"). A node that cannot be asked
then (down, cut off) gets a *retirement* instead: "drop your copy of
bucket/key if it is older than (last_modified, etag)". It is written to the
registry, so neither the writer's restart nor the time the node takes to
come back loses it, and the node itself applies what is addressed to it:

- at start-up, after its storage is ready and before it serves a request
  (a node that was down never serves the old version);
- on every heartbeat round (a node that was only cut off drops it within one
  interval of the registry answering again).

Only when the registry cannot take it (down, or a registry plugin without
retirements) does the writer keep it in memory and send it to the peer
itself on the first heartbeat round after the peer answers: the behaviour
before, which a restart of the writer loses (logged then).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from .. import errors
from ..backend import ObjectInfo
from .registry import Registry, RegistryError, Retirement
from .relay import PeerUnreachable
from .sometimes import Sometimes

log = logging.getLogger("gateway.cluster")

# Retirements waiting for one node, in the registry and in memory: beyond, the newest write is not
# recorded (logged; that node may keep an outdated copy of that key).
STORED_LIMIT = 100_000
MEMORY_LIMIT = 10_000
PER_ROUND = 1_000  # applied or sent per heartbeat round, which must stay short
# Seconds a PUT waits for the registry to take a retirement before keeping it in memory: the PUT has
# already waited for the unreachable peer, and a registry that hangs must not add its own timeouts.
REGISTRY_WAIT = 2.0
# Seconds after the registry failed to take one during which the next go to memory at once: with the
# registry down, every write or delete that has a node to tell would otherwise wait REGISTRY_WAIT.
REGISTRY_RETRY = 10.0


# What a node runs to apply one retirement to its own storage: drop the local copy if older.
DropOlder = Callable[[Retirement], Awaitable[None]]
# What the writer runs to send one retirement to a peer that answers again (the memory fallback).
SendTo = Callable[[str, Retirement], Awaitable[None]]


class Retirements:
    """This node's side of retirements: recording them for others, and applying its own.

    :param registry: where retirements are kept; :param node_id: this node.
    """

    def __init__(self, registry: Registry, node_id: str, clock: Callable[[], float] = time.monotonic):
        self.registry = registry
        self.node_id = node_id
        self.clock = clock
        self._registry_failed_at = float("-inf")  # when the registry last failed to take one
        self._memory: dict[str, OrderedDict[tuple[str, str], Retirement]] = {}
        self._storage_down_said = Sometimes()  # apply_own says so once a minute
        self._stored: dict[str, int] = {}  # peer -> retirements in the registry (refreshed each round)

    async def add(self, peer: str, bucket: str, key: str, newer: ObjectInfo) -> bool:
        """``peer`` could not be told that ``newer`` replaced its copy of the key: record that it must
        drop it. In the registry; in memory only when the registry cannot take it. True when the
        registry took it (it survives this node: the peer applies it before it serves again)."""
        item = Retirement(bucket, key, newer.last_modified, newer.etag)
        failed_ago = self.clock() - self._registry_failed_at
        if failed_ago < REGISTRY_RETRY:
            return self._keep_in_memory(peer, item, f"it failed {failed_ago:.0f}s ago; tried again after "
                                                    f"{REGISTRY_RETRY:g}s")
        try:
            async with asyncio.timeout(REGISTRY_WAIT):
                stored = await self.registry.add_retirement(peer, item, STORED_LIMIT)
            if stored:
                self._stored[peer] = self._stored.get(peer, 0) + 1
                return True
            log.warning("node %s may keep an outdated copy of %s/%s: %d retirements already wait for it",
                        peer, bucket, key, STORED_LIMIT)
            return False
        except NotImplementedError:
            reason = "the registry plugin does not keep retirements"
        except RegistryError as exc:
            reason = str(exc)
            self._registry_failed_at = self.clock()
        except TimeoutError:
            reason = f"no answer within {REGISTRY_WAIT:g}s"
            self._registry_failed_at = self.clock()
        return self._keep_in_memory(peer, item, reason)

    def _keep_in_memory(self, peer: str, item: Retirement, reason: str) -> bool:
        """The registry cannot take ``item``: kept in memory, sent to ``peer`` when it answers. False."""
        log.warning("node %s must drop its older copy of %s/%s; kept in memory until it answers, since the "
                    "registry cannot take it (%s): a restart of this node before then loses it",
                    peer, item.bucket, item.key, reason)
        self._remember(peer, item)
        return False

    def _remember(self, peer: str, item: Retirement) -> None:
        pending = self._memory.setdefault(peer, OrderedDict())
        pending[(item.bucket, item.key)] = item
        pending.move_to_end((item.bucket, item.key))
        while len(pending) > MEMORY_LIMIT:
            (bucket, key), _ = pending.popitem(last=False)
            log.warning("node %s may keep an outdated copy of %s/%s: too many retirements wait in memory",
                        peer, bucket, key)

    async def apply_own(self, drop_older: DropOlder, *, everything: bool = False) -> int:
        """Apply the retirements addressed to this node; return how many. ``everything``: until none
        is left (start-up), else at most PER_ROUND. One that fails (the copy cannot be read or deleted)
        is logged and kept for the next round. Raise RegistryError when the registry cannot be read."""
        done = 0
        started = time.monotonic()
        while True:
            try:
                batch = await self.registry.retirements(self.node_id, PER_ROUND)
            except NotImplementedError:
                return done
            failed = 0
            for item in batch:
                try:
                    await drop_older(item)
                except errors.ServiceUnavailable as exc:
                    # The storage itself does not answer: said once a minute, not once per item (1,000 lines
                    # per heartbeat round). A store that has not started (services/pending.py) fails at once,
                    # so the items of the node's other backends are still applied; one that was asked and
                    # failed (a NAS down or hung, each call a timeout) ends the round.
                    if self._storage_down_said.due("own storage") is not None:
                        log.warning("could not drop older copies of objects replaced while this node was away: "
                                    "its storage does not answer (%s); they are dropped once it does", exc.message)
                    if not getattr(exc, "not_started", False):
                        return done
                    failed += 1
                    continue
                except Exception as exc:  # noqa: BLE001 - a disk error on one object must not stop the others
                    failed += 1
                    log.warning("could not drop the older copy of %s/%s (retried on the next round): %s",
                                item.bucket, item.key, exc)
                    continue
                await self.registry.drop_retirement(self.node_id, item)
                done += 1
            if not everything or len(batch) < PER_ROUND or failed == len(batch):
                break
            log.info("dropping older copies that other nodes replaced while this one was away: %d so far (%.0fs)",
                     done, time.monotonic() - started)
        if done:
            # The count is of retirements applied, not of copies found: a key written or deleted elsewhere
            # that this node never held needs nothing, and "dropped N copies" overstated it.
            log.info("applied %d retirements of objects replaced or deleted on other nodes while this node was "
                     "away: its older copies of them, where it had any, are gone", done)
        return done

    async def send_remembered(self, peers: dict[str, str], reachable: Callable[[str], bool], send: SendTo) -> None:
        """The memory fallback: hand remembered retirements to the registry if it takes them now, else
        send them to their peers that answer again (``send`` raises PeerUnreachable when one does not)."""
        for peer, pending in self._memory.items():  # also peers that left: they may rejoin with their data
            for _ in range(min(len(pending), PER_ROUND)):
                item = next(iter(pending.values()))
                try:
                    stored = await self.registry.add_retirement(peer, item, STORED_LIMIT)
                except (NotImplementedError, RegistryError):
                    stored = False
                if stored:
                    self._stored[peer] = self._stored.get(peer, 0) + 1
                else:
                    if peer not in peers or not reachable(peer):
                        break
                    try:
                        await send(peer, item)
                    except PeerUnreachable:
                        break  # still down: the next round retries
                    except Exception as exc:  # noqa: BLE001 - e.g. the bucket is gone there: nothing to drop
                        log.info("retiring %s/%s on %s: %s", item.bucket, item.key, peer, exc)
                pending.pop((item.bucket, item.key), None)

    async def refresh_counts(self, peers: list[str]) -> None:
        """Re-read how many retirements wait in the registry for each peer (for status and metrics)."""
        try:
            self._stored = await self.registry.retirement_counts(peers)
        except NotImplementedError:
            self._stored = {}

    def pending(self) -> dict[str, int]:
        """peer -> retirements waiting for it (registry and memory)."""
        counts = {peer: n for peer, n in self._stored.items() if n}
        for peer, pending in self._memory.items():
            if pending:
                counts[peer] = counts.get(peer, 0) + len(pending)
        return counts
