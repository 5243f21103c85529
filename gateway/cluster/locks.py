"""Cluster-wide locks, kept in the registry: conditional PUTs of one key, one at a time on every node.

A conditional PUT (``If-None-Match: *``, ``If-Match``) checks the key and then
writes; two of them through two nodes must not both pass the check. Each
node already runs those of one key one at a time (an in-process lock,
gateway/api/s3/objects.py); this adds a lock in the registry that every
node shares, held from the check to the end of the write.

- Taken with a time to live (``TTL``) and refreshed while the write runs,
  so a holder that dies (``kill -9``) frees the key within ``TTL`` seconds,
  and a long upload keeps it.
- Waited for at most ``WAIT`` seconds (the other writer finishes first, and
  this one then usually answers 412); beyond, 503 SlowDown, as S3 answers
  conflicting conditional writes it cannot order (``ConditionalRequestConflict``
  is a 409 that SDKs do not retry; a 503 they do).
- A registry that cannot be reached fails the conditional PUT with 503: a
  create-only write that might overwrite is worse than one retried later.
- A registry plugin without locks: conditional PUTs are ordered per node
  only, as before (logged once).

Unconditional PUTs take no lock: they cost nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

from .. import errors
from .registry import Registry, RegistryError

log = logging.getLogger("gateway.cluster")

TTL = 30.0  # seconds a lock outlives a holder that stopped refreshing it
WAIT = 10.0  # seconds to wait for a lock another writer holds
POLL_FIRST, POLL_MAX = 0.005, 0.1  # backoff between attempts


class ClusterLocks:
    """:param registry: where locks are kept; :param node_id: names the holder in the registry."""

    def __init__(self, registry: Registry, node_id: str, *, ttl: float = TTL, wait: float = WAIT):
        self.registry = registry
        self.node_id = node_id
        self.ttl = ttl
        self.wait = wait
        self.supported = True
        self._releasing: set[asyncio.Task] = set()  # background give-backs (kept referenced until done)

    @contextlib.asynccontextmanager
    async def hold(self, name: str, wait: float | None = None):
        """Hold the lock ``name`` for the duration of the block; yield its ``confirm``, which the
        write runs right before it commits. Raise busy() after ``wait`` seconds (default
        ``self.wait``), errors.ServiceUnavailable when the registry cannot be reached."""
        if not self.supported:
            yield nothing_to_confirm
            return
        owner = f"{self.node_id}/{os.urandom(8).hex()}"
        try:
            taken = await self._acquire(name, owner, self.wait if wait is None else wait)
        except NotImplementedError:
            self.supported = False
            log.warning("the registry plugin keeps no locks: conditional PUTs of one key are ordered per node only")
            yield nothing_to_confirm
            return
        if not taken:
            raise busy()

        async def confirm() -> None:
            """Still ours? Refreshed for another ttl, which covers the commit that follows. A lock
            that expired (this process was stopped, the registry was out of reach for ttl) may be
            another writer's now: the write is refused rather than committed over its check."""
            try:
                held = await self.registry.refresh_lock(name, owner, self.ttl)
            except RegistryError as exc:
                log.warning("conditional write refused: its lock %s could not be confirmed: %s", name, exc)
                held = False
            if not held:
                raise errors.ServiceUnavailable(
                    "This conditional write lost its lock in the cluster registry before it finished "
                    f"(more than {self.ttl:.0f}s without reaching the registry); nothing was written. Retry.")

        refresher = asyncio.create_task(self._refresh(name, owner), name=f"lock-refresh {name}")
        try:
            yield confirm
        finally:
            refresher.cancel()
            try:
                await asyncio.shield(self.registry.release_lock(name, owner))
            except (RegistryError, asyncio.CancelledError) as exc:  # it expires after ttl seconds anyway
                log.warning("could not release the lock %s (it expires within %.0fs): %s", name, self.ttl, exc)

    async def _acquire(self, name: str, owner: str, wait: float) -> bool:
        deadline = time.monotonic() + wait
        delay = POLL_FIRST
        while True:
            try:
                # A registry that hangs (an SQLite file another process keeps locked, a frozen etcd)
                # must not hold the client beyond the wait either.
                async with asyncio.timeout(max(deadline - time.monotonic(), POLL_MAX)):
                    if await self.registry.acquire_lock(name, owner, self.ttl):
                        return True
            except (RegistryError, TimeoutError) as exc:
                reason = exc if isinstance(exc, RegistryError) else f"no answer within {wait:.0f}s"
                log.warning("conditional write refused: the lock %s cannot be taken: %s", name, reason)
                # The call may still succeed after we stopped waiting: give the lock back in case.
                self._release_soon(name, owner)
                raise errors.ServiceUnavailable(
                    "The cluster registry, which orders conditional writes, cannot be reached; retry later.") from None
            if time.monotonic() + delay > deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, POLL_MAX)

    def _release_soon(self, name: str, owner: str) -> None:
        async def release() -> None:
            try:
                await self.registry.release_lock(name, owner)
            except RegistryError as exc:  # it expires after ttl anyway
                log.info("could not give back the lock %s: %s", name, exc)

        task = asyncio.get_running_loop().create_task(release())
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _refresh(self, name: str, owner: str) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                if not await self.registry.refresh_lock(name, owner, self.ttl):
                    log.warning("lost the lock %s during a write (held longer than %.0fs without refresh?)",
                                name, self.ttl)
                    return
            except RegistryError as exc:  # the next refresh retries; the lock lasts ttl
                log.warning("could not refresh the lock %s: %s", name, exc)


def busy() -> errors.GatewayError:
    """The answer to a conditional write that waited too long for another one of its key."""
    return errors.SlowDown("Another conditional write of this key is in progress; retry in a moment.")


async def nothing_to_confirm() -> None:
    """No cluster lock (a stand-alone node, a registry without locks): nothing can be lost."""
