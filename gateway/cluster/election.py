"""Failover: who is the primary, and when a redundant node takes over.

The rule (docs/cluster.md, "Failover"): with at least two redundant
secondaries, the primary and the first two redundant servers (by install
order) vote. When the primary dies and **both** of those are up, one of them
becomes primary. Extra redundant servers hold data but do not vote.

How the vote is taken, through the registry (SQLite or etcd):

- The primary holds the registry lock ``primary`` (a lease of
  ``failover_after`` seconds, 15 by default) and refreshes it every heartbeat.
- A voting redundant node, on its heartbeat, sees a failed primary when the
  lease has lapsed *and* the primary's last heartbeat is older than that *and*
  it has read that same heartbeat for ``failover_after`` of its own rounds,
  counted from the first round that found the lease lapsed (so a failover
  takes 2x to 2x + two heartbeats of ``failover_after``; why the watch does not
  start at the primary's last heartbeat: docs/cluster.md, "Failover"). It stands only if
  the other voting redundant node's heartbeat is fresh: two of the three
  votes. One node alone never takes over, so a node cut off from the others
  cannot make a second primary. Taking the lease is a compare-and-swap, so
  of two candidates exactly one wins.
- The winner marks itself primary and the old primary redundant in the
  registry. An old primary that comes back (or was only cut off) finds the
  lease held by another node and steps down to redundant, once that node is
  listed primary (killed before that, it leaves the old primary in place).

Being primary decides where new objects are placed and who balances reads
(gateway/services/cluster_nodes/); every object stays where it is, so a
moment with two primaries (a cut-off primary that has not yet seen the
registry) costs balance, never data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .registry import NodeRecord, Registry
from .sometimes import Sometimes, since

log = logging.getLogger("gateway.cluster")
LEASE = "primary"  # the registry lock the primary holds
HANDOVER = "handover"  # held in the name of the node `gateway cluster promote` chose
VOTING_REDUNDANT = 2  # the first two redundant nodes vote with the primary


def voters(nodes: list[NodeRecord], primary: str | None) -> list[str]:
    """The voting redundant nodes: the first two redundant ones by install order, none when fewer
    than two redundant nodes exist (no failover then)."""
    redundant = sorted((n for n in nodes if n.role == "redundant" and n.node_id != primary),
                       key=lambda n: n.install_order)
    if len(redundant) < VOTING_REDUNDANT:
        return []
    return [n.node_id for n in redundant[:VOTING_REDUNDANT]]


class Election:
    """One node's part in the vote. ``round`` runs on every heartbeat and returns the role the
    node should have now (the one it has when nothing changes). The clock is injected for tests."""

    def __init__(self, registry: Registry, node_id: str, lease_seconds: float,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic):
        self.registry = registry
        self.node_id = node_id
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.monotonic = monotonic
        self.took_over_from: str | None = None  # the primary this node replaced, for the log and status
        # (primary, its last heartbeat as read, when this node first read it): the primary's silence
        # as this node saw it, so that a registry outage, which silences everyone, does not count.
        self._watch: tuple[str, float, float] | None = None
        self._stalled_said = Sometimes(clock=monotonic)  # "no failover without both voters", once a minute

    async def give_up(self) -> None:
        """Release the lease (this node left the cluster)."""
        await self.registry.release_lock(LEASE, self.node_id)

    def registry_failed(self) -> None:
        """This node could not reach the registry: what it saw of the primary's silence before
        does not count (the primary may have been shut out just the same)."""
        self._watch = None

    async def start_role(self, configured: str, listed: str | None = None) -> str:
        """The role to join with: a node configured as primary joins as redundant while another
        node holds the primary lease (it took over while this one was down). ``listed``: this node's
        role in the registry before this start (None: not listed)."""
        if configured == "proxy":
            return configured
        holder = await self.registry.lock_holder(LEASE)
        if configured == "redundant":
            if holder == self.node_id:
                # It took over in a failover and was restarted with its unit's --role redundant: the
                # lease is still its own, and giving it up would leave the cluster without a primary.
                log.warning("this node holds the primary lease (it took over in a failover): it stays primary, "
                            "whatever --role says. `gateway cluster promote` hands the role to another node")
                await self._hold()
                return "primary"
            if holder is None and listed == "primary" and await self._hold():
                # The same, down longer than its lease: it is still the listed primary, and joining as
                # redundant would list none, which no vote replaces (the voters vote on a listed
                # primary): the cluster had no primary for good.
                log.warning("this node is the listed primary (it took over in a failover) and the primary lease "
                            "is free: it stays primary, whatever --role says. `gateway cluster promote` hands the "
                            "role to another node")
                return "primary"
            return "redundant"
        if holder not in (None, self.node_id):
            log.warning("node %s holds the primary role (it took over while this node was down): this node joins "
                        "as redundant. See docs/cluster.md, \"Failover\", to make it primary again", holder)
            return "redundant"
        await self._hold()
        return "primary"

    async def round(self, role: str) -> str:
        if role == "primary":
            if await self._handing_over():
                return "primary"  # until the chosen node holds the lease; then _hold() says step down
            return "primary" if await self._hold() else "redundant"
        if role != "redundant":
            return role
        holder = await self.registry.lock_holder(LEASE)
        if holder == self.node_id:
            # This node took the lease but did not become primary (a registry error right after): a
            # lease nobody acts on would make every other node wait for it to lapse, then find no
            # primary listed to replace.
            return "primary" if await self._hold() else "redundant"
        if holder is not None:
            return "redundant"  # a primary holds the lease: nothing to vote on
        handover = await self.registry.lock_holder(HANDOVER)
        if handover == self.node_id:
            return await self._take_handover()
        if handover is not None:
            return "redundant"  # the primary is handing over to another node: not a failure
        nodes = await self.registry.nodes()  # fresh heartbeats, not the minute-old snapshot
        by_id = {n.node_id: n for n in nodes}
        primary = next((n for n in nodes if n.role == "primary"), None)
        if primary is None or primary.node_id == self.node_id:
            return "redundant"  # no primary to replace (a cluster still forming, or after `leave`)
        voting = voters(nodes, primary.node_id)
        if self.node_id not in voting:
            return "redundant"
        now = self.clock()
        if primary.age(now) < self.lease_seconds or not self._silent_long_enough(primary):
            return "redundant"  # the lease lapsed but the primary still beats: give it time
        other = by_id[next(v for v in voting if v != self.node_id)]
        if not other.heartbeat_fresh(now):
            repeats = self._stalled_said.due((primary.node_id, other.node_id))
            if repeats is not None:  # once a minute, not on every heartbeat for as long as it lasts
                log.info("primary %s is down, and so is voter %s: no failover without both voting redundant "
                         "nodes%s", primary.node_id, other.node_id, since(repeats))
            return "redundant"
        if not await self.registry.acquire_lock(LEASE, self.node_id, self.lease_seconds):
            return "redundant"  # the other voter won
        self.took_over_from = primary.node_id
        log.warning("failover: primary %s is down (last seen %.0f s ago), voters %s and %s are up: node %s is the "
                    "primary now", primary.node_id, primary.age(now), *voting, self.node_id)
        await self._took_lease()
        return "primary"

    def _silent_long_enough(self, primary: NodeRecord) -> bool:
        """Whether this node has read the same last heartbeat of the primary for ``lease_seconds``
        of its own successful rounds. The record's age alone is not enough: while the registry
        is down nobody can beat, and right after it comes back every record looks old."""
        seen = self._watch
        if seen is None or seen[0] != primary.node_id or seen[1] != primary.last_seen:
            self._watch = (primary.node_id, primary.last_seen, self.monotonic())
            return False
        return self.monotonic() - seen[2] >= self.lease_seconds

    async def _handing_over(self) -> bool:
        """Whether `gateway cluster promote` chose another node that is up. The lease is given up
        for it, and this node stays primary until that node holds the lease (then ``_hold`` steps
        down): should the chosen node never take it, the handover lock lapses and this node takes
        its lease again, so the cluster is never left without a primary."""
        chosen = await self.registry.lock_holder(HANDOVER)
        if chosen in (None, self.node_id):
            return False
        node = await self.registry.get(chosen)
        if node is None or node.role == "proxy" or not node.heartbeat_fresh(self.clock()):
            return False  # the promote command checked it, but it went away: stay primary
        holder = await self.registry.lock_holder(LEASE)
        if holder == self.node_id:
            await self.registry.release_lock(LEASE, self.node_id)
            log.warning("handing the primary role over to %s (gateway cluster promote)", chosen)
            return True
        return holder is None  # waiting for it to take the lease; once it has, step down

    async def _take_handover(self) -> str:
        if not await self.registry.acquire_lock(LEASE, self.node_id, self.lease_seconds):
            return "redundant"
        await self._took_lease()
        await self.registry.release_lock(HANDOVER, self.node_id)
        log.warning("this node is the primary now, handed over by `gateway cluster promote`")
        return "primary"

    async def _took_lease(self) -> None:
        """Having just taken the lease: list this node primary at once, then the others redundant.
        In this order because the old primary steps down only once the lease holder is listed
        primary (``_hold``): killed in between, this node leaves the old primary in place rather
        than a cluster with no primary listed, which no voter would ever replace."""
        await self.registry.set_role(self.node_id, "primary")
        await self._demote_others()

    async def _demote_others(self) -> None:
        """Any other node still listed primary (one that died as primary, and is down now) is
        redundant, so that one primary is listed and the voters are counted right."""
        for node in await self.registry.nodes():
            if node.role == "primary" and node.node_id != self.node_id:
                await self.registry.set_role(node.node_id, "redundant")

    async def _hold(self) -> bool:
        """Keep (or take) the lease; False only when another node holds it."""
        if await self.registry.refresh_lock(LEASE, self.node_id, self.lease_seconds):
            return True
        if await self.registry.acquire_lock(LEASE, self.node_id, self.lease_seconds):
            await self._took_lease()
            return True
        holder = await self.registry.lock_holder(LEASE)
        if holder in (None, self.node_id):
            # Our own lease from before a restart (etcd keeps it until it lapses): still ours.
            return True
        taker = await self.registry.get(holder)
        if taker is None or taker.role != "primary":
            # It took the lease a moment ago and lists itself primary next (``_took_lease``), or it
            # died in between: stepping down now would leave no primary listed, and nobody would
            # replace one. Stay until it is listed, or until its lease lapses and this node takes it back.
            log.info("node %s holds the primary lease but is not listed primary (yet): this node stays "
                     "primary until it is", holder)
            return True
        log.warning("node %s holds the primary lease: this node steps down to redundant", holder)
        return False
