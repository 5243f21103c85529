"""Cluster membership: this node's registration, heartbeat, and its snapshot of the node list.

The snapshot is re-read every ``registry_reload_interval`` seconds (60 by
default) and at once (at most once a second) after a peer call failed, in
case the peer moved or left. Peers that failed are probed with a ping on
every heartbeat, so a restarted node is back in front as soon as it answers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .. import errors
from ..backend import ObjectInfo
from .balancer import Balancer
from .election import Election
from .health import PeerHealth
from .locations import LocationCache
from .locks import ClusterLocks
from .peer_auth import PeerSigner
from .registry import STORING_ROLES, NodeRecord, NotRegistered, Registry, RegistryError, Retirement, open_registry
from .registry_outage import RegistryOutage
from .relay import PeerClient, PeerUnreachable
from .retirements import DropOlder, Retirements
from .settings_check import advertised_url, node_id_file, node_id_of, remember_node_id
from .stall import StallWatch
from .superseded import LISTED_FOR, RecentlySuperseded
from .tally import Tally
from .unwritable import FailedStores, FullStores
from .watchers import MissWatchers

log = logging.getLogger("gateway.cluster")
# Walking storage to count objects is bounded (a status figure, not an inventory).
COUNT_LIMIT = 1_000_000
# ... and repeated at most this often (seconds): it reads every directory of the store.
STATS_EVERY = 300.0
RELOAD_AT_MOST_EVERY = 1.0


def client_ssl_context(settings) -> ssl.SSLContext | None:
    """Verify peers against the cluster CA; present this node's certificate (mutual TLS when asked)."""
    if settings.tls_ca is None:
        return None
    context = ssl.create_default_context(cafile=str(settings.tls_ca))
    if settings.tls_cert and settings.tls_key:
        context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    return context


# What a TLS handshake failure on a certificate says (ssl / OpenSSL): the peer's certificate was not
# issued by our CA, or ours not by its.
_TLS_TRUST_FAILURES = ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed", "UNKNOWN_CA", "BAD_CERTIFICATE",
                       "CERTIFICATE_UNKNOWN")


class Cluster:
    """This node's part in the cluster: identity, role, peers and their health.

    :param settings: the node's Settings (role, registry, advertise, secrets, timeouts).
    :param storage_roots: directories of local storage, for the object count and free space in status.
    :param shared_storage: every backend of this node is shared storage (sharedfs): the storing peers
        on it see this node's files as their own (published with the heartbeat, see on_shared_storage).
    """

    def __init__(self, settings, storage_roots: list[str] | None = None, registry: Registry | None = None,
                 shared_storage: bool = False):
        self.settings = settings
        self.node_id = node_id_of(settings)
        self.address = advertised_url(settings)
        self.role: str | None = settings.role
        self.registry = registry or open_registry(settings.registry)
        self.health = PeerHealth()
        self.balancer = Balancer()
        self.locations = LocationCache()
        # Nodes that asked this one for a key it lacked (they may cache the miss): a write of the key
        # here tells them first (watchers.py). Kept while such a miss may be cached, and while the
        # asking node may still be asking the others (two rounds of peer timeouts).
        self.watchers = MissWatchers(self.locations.miss_ttl + 2 * settings.peer_timeout + 1)
        # Copies this node dropped for a newer version elsewhere, still in its listings a moment
        # (superseded.py: a listing taken while a key moved between nodes had it on neither).
        self.superseded = RecentlySuperseded(max(LISTED_FOR, 3 * settings.peer_timeout))
        # Older copies that listings or `gateway cluster repair` found and retired, by the node that held
        # them (services/cluster_nodes/repair.py).
        self.repaired: Tally[str] = Tally()
        # Stores out of space, or whose filesystem or backend failed: no writes placed there a while.
        self.full = FullStores(settings.full_store_retry)
        self.failed = FailedStores(settings.failed_store_retry)
        self.signer = PeerSigner(settings.cluster_secret, self.node_id)
        self.client = PeerClient(self.signer, self.health, settings.peer_timeout, client_ssl_context(settings),
                                 on_failure=self.request_reload)
        self.storage_roots = storage_roots or []
        self.shared_storage = shared_storage
        self.nodes: dict[str, NodeRecord] = {}
        self._task: asyncio.Task | None = None
        self._probing: asyncio.Future | None = None  # the pings of _probe_limited still waiting for answers
        self._reload_wanted = asyncio.Event()
        self._last_reload = 0.0
        self._storage_stats: dict[str, Any] = {}
        self._stats_at = 0.0
        self.started = time.time()
        self.retirements = Retirements(self.registry, self.node_id)
        self.locks = ClusterLocks(self.registry, self.node_id)
        self.drop_older: DropOlder | None = None  # applies a retirement to this node's storage
        # check_writable of this node's store by backend name (_recheck_own_stores)
        self.check_own_store: Callable[[str], Awaitable[None]] | None = None
        # The names of this node's backends whose store has not answered since the start (set by the
        # object service; services/pending.py): published, so that no node places writes for them here.
        self.pending_backends: Callable[[], list[str]] | None = None
        self.registry_id: str | None = None  # the registry this node registered in (Registry.identity)
        # Failover (cluster/election.py): the primary's lease, and how long it may be silent.
        self.election = (Election(self.registry, self.node_id, settings.failover_after)
                         if settings.failover else None)
        self.role_listeners: list = []  # called with (old role, new role) after a failover changed it
        self.registry_outage = RegistryOutage(self.registry.url)  # said once, and when it ends; in /metrics
        self.stalls = StallWatch(settings.peer_timeout)  # this process stood still: refuse stale peer writes
        self.stalls.on_stall = self._after_stall  # ... and hold reads of its own copies until it caught up
        self._catching_up: asyncio.Task | None = None
        self._applying = asyncio.Lock()  # one application of the registry's retirements at a time
        # Removed from the registry by `cluster leave` while running: outside the cluster, no node asks
        # it for anything, so it takes no writes (removed_error) and is not ready until joined again.
        self.removed = False
        self._untrusted_list = False  # the last reload found this node unlisted (said once)
        self._nodes_read_at = 0.0  # time.time() of the last read of the node list (heard_from)

    # Life cycle -------------------------------------------------------------

    async def start(self) -> None:
        """Register (choosing the role when none was given) and load the node list; raise ValueError."""
        try:
            # This node's record as it is before the start touches anything of it (None: not registered).
            existing = await self.registry.get(self.node_id)
            await self._refuse_a_taken_id(existing)
            await self._refuse_a_second_record_here(existing)
            await self._check_secret()  # a node that would be refused by every peer does not join
            if self.role is None:
                self.role = await self._default_role(existing)
            elif self.role == "proxy":
                self._refuse_hiding_objects(existing)
            if self.role == "proxy":
                self.storage_roots = []  # a proxy stores nothing, whatever data_dir says
            if self.election is not None:
                try:
                    self.role = await self.election.start_role(self.role, existing.role if existing else None)
                except NotImplementedError:
                    log.info("registry %s has no locks: failover is off", self.registry.url)
                    self.election = None
            record = await self.registry.register(self.node_id, self.role, self.address)
            self._remember_id()
            self.registry_id = await self.registry.identity()
            await self.reload()
            await self.registry.heartbeat(self.node_id, await self.info())
        except RegistryError as exc:
            raise ValueError(f"cannot join the cluster: {exc}") from None
        log.info("node %s joined as %s (install order %d) at %s; %d nodes known", self.node_id, self.role,
                 record.install_order, self.address, len(self.nodes))
        self._task = asyncio.create_task(self._run(), name="cluster-membership")
        self.stalls.start()

    def _remember_id(self) -> None:
        """A storing node keeps its id in its storage, so that it keeps it when its address changes."""
        if self.role == "proxy":
            return  # stores nothing: its data_dir may not even be its own
        try:
            remember_node_id(self.settings, self.node_id)
        except OSError as exc:
            log.warning("could not keep this node's id in %s: %s; a restart at another address would register "
                        "it under a new id (set GATEWAY_NODE_ID to keep it)", node_id_file(self.settings), exc)

    async def _refuse_a_taken_id(self, existing: NodeRecord | None) -> None:
        """Raise ValueError when another running node goes by this node's id (a copied unit file, a
        GATEWAY_NODE_ID set twice). Registering would move that node's record to this address: its
        peers would ask this node for its objects, answered 404 by a node that never had them.

        The record's address is asked who it is: a node restarted at another address (its old one
        refuses, or now answers under another id) takes its record over as before.
        """
        if existing is None or existing.address == self.address:
            return
        try:
            answer = await self.client.ping(self.node_id, existing.address)
        except Exception:  # noqa: BLE001 - gone, or something else listens there: the id is free
            return
        finally:
            self.health.forget(self.node_id)  # not a peer: no health to keep for it
        if answer.get("node_id") == self.node_id:
            raise ValueError(f"node id {self.node_id} is in use by a running node at {existing.address}: give this "
                             "node its own id (GATEWAY_NODE_ID, default host:port of --advertise), or stop that "
                             "node first if this one replaces it")

    async def _refuse_a_second_record_here(self, existing: NodeRecord | None) -> None:
        """Raise ValueError when this node has no record yet and another node id's record has this
        node's address: that is almost always this node under a new id, its storage (which remembered
        the id) replaced: switched to shared storage after `gateway migrate`, or a disk restored
        without .gateway/. A second record would stay behind, down for good: every miss anywhere a 503
        ("may be on a server that cannot be reached"), and a ghost may hold a failover vote.
        `cluster join` refuses the same."""
        if existing is not None:
            return
        other = next((n for n in await self.registry.nodes()
                      if n.node_id != self.node_id and n.address == self.address), None)
        if other is None:
            return
        raise ValueError(
            f"node {other.node_id} is registered at {self.address}, the address this node advertises, and this "
            f"node would register beside it as {self.node_id}: it is most likely node {other.node_id} under a new "
            "id (its storage, which remembers the id, changed: switched to shared storage, or restored without "
            f".gateway/). Start it with GATEWAY_NODE_ID={other.node_id}; if {other.node_id} is another server "
            f"that is gone for good, remove it first (`gateway cluster leave --node-id {other.node_id}`)")

    def _check_plain_http_taken(self, answered: dict[str, dict | None]) -> None:
        """Raise ValueError when this node advertises plain HTTP and running peers do not take plain-HTTP
        peers (no --insecure-peers, their ping says): they would leave it out of their node list, and
        what it stored would be found through no other node, while `cluster status` listed it as ok."""
        if not self.address.startswith("http://"):
            return
        refusing = sorted(peer for peer, answer in answered.items()
                          if answer is not None and answer.get("plain_http_peers") is False)
        if refusing:
            raise ValueError(
                f"this node advertises plain HTTP ({self.address}) and the running nodes {', '.join(refusing)} "
                "take only HTTPS peers (they run without --insecure-peers): they would leave it out, and what it "
                "stores would be found through no other node. Give it the cluster's TLS files (--tls-cert, "
                "--tls-key, --tls-ca; `gateway cluster tls init --dir DIR --node NAME=HOST` with the cluster's CA "
                "in DIR) so that it advertises https://; plain HTTP between nodes is for clusters whose every "
                "node runs with --insecure-peers")

    async def _check_secret(self) -> None:
        """Raise ValueError when the running peers refuse this node's peer signature (another
        GATEWAY_CLUSTER_SECRET, or a clock too far off): admitted, it would be asked for every
        miss and refuse, so every miss through any node would be a 503 naming it, and it could
        ask nobody. Checked before registering, with a signed ping to every node whose heartbeat
        is fresh, at once: one that answers is enough (the refusing ones are then the odd ones
        out, and the health of peers says so). No node to ask (the first node, all down, only
        nodes that do not answer): the node starts as before."""
        now = time.time()
        peers = {n.node_id: n.address for n in await self.registry.nodes()
                 if n.node_id != self.node_id and n.heartbeat_fresh(now)
                 and (self.settings.insecure_peers or not n.address.startswith("http://"))}
        if not peers:
            return
        refusals: dict[str, str] = {}
        untrusted: dict[str, str] = {}  # the TLS handshake failed on a certificate: another CA on one side

        async def ask(peer: str) -> dict | None:
            try:
                return await self.client.ping(peer, peers[peer])
            except PeerUnreachable as exc:
                if exc.reason.startswith("refused our peer signature"):
                    # relay's _refused keeps the peer's own words in the health record: "refused our
                    # peer signature (<the peer's reason>): check that ..."
                    error = self.health.snapshot().get(peer, {}).get("last_error", "")
                    said = re.search(r"\((.*)\): check", error)
                    refusals[peer] = said.group(1) if said else exc.reason
                elif any(sign in exc.reason for sign in _TLS_TRUST_FAILURES):
                    untrusted[peer] = exc.reason
                return None
            except Exception as exc:  # noqa: BLE001 - an odd answer: this peer cannot tell
                log.debug("secret check with %s: %s", peer, exc)
                return None

        answered = dict(zip(peers, await asyncio.gather(*(ask(p) for p in peers))))
        for peer in peers:
            self.health.forget(peer)  # a fresh start: the node list and the first calls build it up
        if any(answered.values()):
            self._check_plain_http_taken(answered)
            return
        if untrusted and not refusals:
            peer = sorted(untrusted)[0]
            raise ValueError(
                f"could not verify node {peer} (at {peers[peer]}) over TLS, nor it this node ({untrusted[peer]}; "
                f"{', '.join(sorted(untrusted))} of {len(peers)} running nodes failed so, none answered): this node's "
                "--tls-ca (GATEWAY_TLS_CA) must be the cluster's ca.pem and its --tls-cert a certificate that CA "
                "issued (`gateway cluster tls init --dir DIR --node NAME=HOST` with the cluster's CA in DIR). "
                "This node did not join the cluster")
        if not refusals:
            return
        peer = sorted(refusals)[0]
        reason = refusals[peer]
        if "another cluster secret" in reason:
            raise ValueError(f"the cluster secret differs from the one node {peer} uses: {peer} (at {peers[peer]}) "
                             f"refused this node's peer signature ({', '.join(sorted(refusals))} of "
                             f"{len(peers)} running nodes did so, none accepted it): give this node the "
                             "GATEWAY_CLUSTER_SECRET the cluster's nodes use. This node did not join the cluster")
        raise ValueError(f"node {peer} (at {peers[peer]}) refused this node's peer signature: {reason}; this node "
                         "did not join the cluster")

    def _refuse_hiding_objects(self, existing: NodeRecord | None) -> None:
        """Raise ValueError when this node is listed as a storing node that holds objects and starts as a
        proxy: a proxy stores nothing and is asked for nothing, so no node would find them (404 through
        every node, as after `cluster leave`, which refuses it the same way without --force)."""
        if existing is None or not existing.stores_objects:
            return
        held = existing.info.get("objects")
        if not held or existing.info.get("shared_storage") is True:  # a share's files stay served by its nodes
            return
        raise ValueError(
            f"node {self.node_id} is registered as a {existing.role} node holding {held} objects (its last count), "
            "and would start as a proxy, which stores nothing and is asked for nothing: those objects would read "
            "as not found (404) through every node. Start it with its role (--role "
            f"{existing.role}); or, to make it a proxy, copy its objects elsewhere first (docs/cluster.md, "
            f"\"Removing a node for good\"), then `gateway cluster leave --node-id {self.node_id}` and start it as a "
            "proxy. This node did not join the cluster")

    async def _default_role(self, existing: NodeRecord | None) -> str:
        """The role a node has in the registry, else primary for the first node and redundant after."""
        if existing is not None:
            return existing.role
        others = [n for n in await self.registry.nodes() if n.role == "primary"]
        return "redundant" if others else "primary"

    async def close(self) -> None:
        self.stalls.stop()
        if self._probing is not None:
            self._probing.cancel()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass  # what we asked for
        await self.client.close()
        await self.registry.close()

    # Node list ------------------------------------------------------------------

    async def reload(self) -> None:
        nodes = await self.registry.nodes()
        if self.nodes and not self.removed and all(n.node_id != self.node_id for n in nodes):
            # The registry does not list this node: it was replaced (its file deleted, a new etcd)
            # and this node has not registered again yet (its next heartbeat does, and restores
            # every node it knew, `_heartbeat`). Such a list is empty or partial: taken as it is,
            # the peers missing from it would not be asked, and their objects would read as a
            # final 404. The last snapshot stays until this node is listed again.
            self._last_reload = time.monotonic()
            if not self._untrusted_list:
                self._untrusted_list = True
                log.warning("the cluster registry %s does not list this node (%d nodes listed): keeping the last "
                            "node list (%d nodes) until this node is registered again", self.registry.url,
                            len(nodes), len(self.nodes))
            return
        self._untrusted_list = False
        await self._check_identity()
        if not self.settings.insecure_peers:
            plain = [n for n in nodes if n.address.startswith("http://") and n.node_id != self.node_id]
            for node in plain:
                log.warning("ignoring node %s: it advertises plain HTTP (%s) and --insecure-peers is not set",
                            node.node_id, node.address)
            nodes = [n for n in nodes if n not in plain]
        self.nodes = {n.node_id: n for n in nodes}
        self._last_reload = time.monotonic()
        self._nodes_read_at = time.time()
        for peer in list(self.health.snapshot()):
            if peer not in self.nodes:
                self.health.forget(peer)

    async def _check_identity(self) -> None:
        """Another node restored this one's record into a replaced registry (``_heartbeat``): its
        heartbeats go on, so take the registry's new identity now; otherwise a `cluster leave` of
        this node later would look like a replaced registry, and it would register again."""
        if self.registry_id is None:
            return
        identity = await self.registry.identity()
        if identity is not None and identity != self.registry_id:
            log.warning("the cluster registry %s was replaced (deleted, restored or a new etcd); a peer listed this "
                        "node in it again", self.registry.url)
            self.registry_id = identity

    def _unpublished(self) -> bool:
        """A listed node has registered but not yet published its info (its first heartbeat comes
        moments later, or, for a node `cluster join` registered, once its gateway starts). Until it
        has, what this node knows of it (shared storage or its own) is the safe default; nodes
        started together would keep that view until the next reload, 60 s by default, so the list
        is re-read at every heartbeat while it lasts: one registry read per heartbeat interval."""
        return any(not n.info for n in self.nodes.values())

    def announced(self, node_id: str, address: str, role: str | None = None) -> None:
        """A node announcing itself at start said where it is now and its role (its ping, signed). One known
        at another address restarted elsewhere (a new IP or port, the same node id), or in another role,
        or known only as joined, never seen: it is asked there, in that role, from now on, and the
        registry is re-read at once to confirm it. Until the next reload, relays went to the old address
        (503), a node that now stores was not asked (404), a node that runs now was left out."""
        known = self.nodes.get(node_id)
        if known is None or (known.address == address and known.ever_seen and role in (None, known.role)):
            return
        # What it registered just before (its ping is signed): believed at once, the reload confirms it.
        known.address, known.last_seen = address, time.time()
        if role in STORING_ROLES or role == "proxy":
            known.role = role
        self.request_reload()

    def request_reload(self, peer: str | None = None) -> None:
        """Re-read the node list soon (a peer call failed: it may have moved or left)."""
        self._reload_wanted.set()

    def peers(self, storing: bool = True) -> dict[str, str]:
        """Other nodes that have run (only storing ones by default): node id -> address.

        A node only `cluster join` registered, whose gateway never heartbeated, holds nothing and
        serves nothing: asked, it would be a node that cannot be reached, and every miss in the
        cluster a 503 (and every DeleteBucket) until it first starts. A running node heartbeats right
        after it registers, and while a listed node has not, the list is re-read at every heartbeat
        (_unpublished)."""
        return {n.node_id: n.address for n in self.nodes.values()
                if n.node_id != self.node_id and (n.stores_objects or not storing) and n.ever_seen}

    def on_shared_storage(self, peer: str) -> bool:
        """Whether ``peer`` published that it serves from shared storage (sharedfs), as a node of this
        cluster on the share sees the same files. False when not known (not yet heartbeated, an older
        version): then it is treated as a node with storage of its own, which is the safe side."""
        node = self.nodes.get(peer)
        return node is not None and node.info.get("shared_storage") is True

    def on_own_storage(self, peer: str) -> bool:
        """Whether ``peer`` published that it serves from storage of its own (not shared storage);
        False when not known."""
        node = self.nodes.get(peer)
        return node is not None and node.info.get("shared_storage") is False

    def refuses_writes(self, peer: str, backend: str) -> bool:
        """Whether no write for ``backend`` should be placed on ``peer`` now: its store has not started
        (storage_pending), or was found full or failed (cluster/unwritable.py), as that node published
        or as seen here."""
        if self.storage_pending(peer, backend):
            return True
        node = self.nodes.get(peer)
        for marks in (self.full, self.failed):
            if marks.left_out(peer, backend):
                return True
            if node is not None and peer != self.node_id and backend in (node.info.get(marks.published_as) or ()):
                return True
        return False

    def own_store_left_out(self, backend: str) -> bool:
        """Whether this node's store for ``backend`` was found full or failed lately (it places writes elsewhere)."""
        return self.full.left_out(self.node_id, backend) or self.failed.left_out(self.node_id, backend)

    @contextmanager
    def noting_store(self, node: str, backend: str) -> Iterator[None]:
        """Around a write to ``node``'s store for ``backend``: found full or failed, no writes are placed
        there a while (cluster/unwritable.py)."""
        with self.full.noting(node, backend), self.failed.noting(node, backend):
            yield

    def full_stores(self) -> list[tuple[str, str]]:
        """(node, backend) of every store taking no placed writes because it was found full."""
        return self._left_out(self.full)

    def failed_stores(self) -> list[tuple[str, str]]:
        """(node, backend) of every store taking no placed writes because its filesystem or backend failed."""
        return self._left_out(self.failed)

    def _left_out(self, marks) -> list[tuple[str, str]]:
        """As seen here, and as the other nodes published."""
        seen = set(marks.noted())
        for node in self.nodes.values():
            if node.node_id != self.node_id:
                seen.update((node.node_id, backend) for backend in node.info.get(marks.published_as) or ())
        return sorted(seen)

    def storage_pending(self, peer: str, backend: str) -> bool:
        """Whether ``peer`` published that its backend ``backend`` has not started (its store has not
        answered since that node started): writes for it are not placed there. False when not known."""
        node = self.nodes.get(peer)
        return node is not None and backend in (node.info.get("storage_pending") or ())

    def redundant_peers(self) -> dict[str, str]:
        """The redundant nodes among peers(): those that have run."""
        return {n.node_id: n.address for n in self.nodes.values()
                if n.node_id != self.node_id and n.role == "redundant" and n.ever_seen}

    # Heartbeat loop ---------------------------------------------------------------

    async def _announce(self) -> None:
        """Ping every node once at start: a node that does not know this one yet, or knows it at another
        address (it restarted elsewhere under the same id), re-reads the registry.

        Without it, nodes started earlier would learn about this one only at
        their next reload (every registry_reload_interval, 60 s by default).
        """
        peers = self.peers(storing=False)

        async def ping(peer: str) -> None:
            try:
                await self.client.ping(peer, peers[peer], announce=self.address, role=self.role)
            except Exception as exc:  # noqa: BLE001 - down or odd: it reads the registry on its own schedule
                log.debug("announce to %s: %s", peer, exc)

        await asyncio.gather(*(ping(p) for p in peers))

    async def _run(self) -> None:
        try:
            await self._announce()
        except Exception:  # the announcement is a courtesy; the loop below must run
            log.exception("announcing this node to its peers failed")
        interval = self.settings.heartbeat_interval
        reload_every = self.settings.registry_reload_interval
        next_beat = time.monotonic() + interval
        while True:
            try:
                await asyncio.wait_for(self._reload_wanted.wait(), timeout=max(0.0, next_beat - time.monotonic()))
            except TimeoutError:
                pass
            asked = False  # whether the registry was asked in this round (and answered, without an error)
            try:
                if self._reload_wanted.is_set():
                    # A peer call failed. Reloading at most once a second keeps a dead
                    # peer under load from turning into a registry storm.
                    await asyncio.sleep(max(0.0, self._last_reload + RELOAD_AT_MOST_EVERY - time.monotonic()))
                    self._reload_wanted.clear()
                    await self.reload()
                    asked = True
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + interval
                    await self._recheck_own_stores()
                    await self._heartbeat()
                    asked = True
                    if time.monotonic() - self._last_reload >= reload_every or self._unpublished():
                        await self.reload()
                    await self._election_round()
                    await self._probe_limited()
                    await self._retirement_round()
                if asked:
                    self.registry_outage.answered()
            except NotRegistered:
                # `cluster leave` removed this node: _removed said so once; a warning every round
                # would only bury the rest of the log. The round stops here (nothing of it is ours).
                await asyncio.sleep(min(interval, 1.0))
            except RegistryError as exc:
                self.registry_outage.failed(exc)
                if self.election is not None:
                    self.election.registry_failed()  # the primary's silence seen so far no longer counts
                await asyncio.sleep(min(interval, 1.0))
            except Exception:  # the loop must survive anything; the next round retries
                log.exception("cluster membership round failed")
                await asyncio.sleep(min(interval, 1.0))

    async def _recheck_own_stores(self) -> None:
        """A store of this node noted full or failed is checked again on every heartbeat while noted:
        still so, the note is renewed (and published with the heartbeat). It lapsed after
        failed_store_retry (15 s) however long the disk stayed read-only: `cluster status` said ok
        while /readyz said 503. Once the check passes, the note lapses as before."""
        if self.check_own_store is None:
            return
        for backend in sorted({*self.full.of(self.node_id), *self.failed.of(self.node_id)}):
            try:
                with self.noting_store(self.node_id, backend):
                    await asyncio.wait_for(self.check_own_store(backend), self.settings.peer_timeout)
            except Exception as exc:  # noqa: BLE001 - noted (or another failure, which /readyz says)
                log.debug("store %s still cannot take writes: %s", backend, exc)

    async def _heartbeat(self) -> None:
        """Publish this node's info. A registry that does not list this node any more was either
        replaced (another identity: its file deleted, a new etcd) and the node registers again, so
        the cluster comes back without restarts; or `cluster leave` removed it, which is respected."""
        try:
            await self.registry.heartbeat(self.node_id, await self.info())
            self.removed = False
        except NotRegistered:
            identity = await self.registry.identity()
            reset = identity != self.registry_id if identity is not None else not await self.registry.nodes()
            if not reset:
                await self._removed()
                raise
            log.warning("the cluster registry %s was replaced (deleted, restored or a new etcd): registering this "
                        "node again as %s", self.registry.url, self.role)
            await self._restore()
            await self.registry.register(self.node_id, self.role, self.address)
            self.registry_id = identity
            await self.registry.heartbeat(self.node_id, await self.info())
            await self.reload()

    async def _restore(self) -> None:
        """Put every node of this node's last snapshot back into a replaced registry, this one too,
        each with its install order, role, address and last heartbeat (Registry.restore; a node
        listed already, because it or another node was quicker, is left as it is).

        The nodes that run would register again by themselves, one heartbeat after another, and
        meanwhile each one's list lacks the others (a miss there answered a false 404 for their
        objects); a node that is down would never be listed again, and its objects would read as
        404 through every node. Install orders stay what they were, so the same nodes vote."""
        records = sorted(self.nodes.values(), key=lambda n: n.install_order)
        if not records:
            return
        try:
            added = await self.registry.restore(records)
        except NotImplementedError:
            return  # a registry plugin without it: the nodes register again one by one
        if added:
            log.warning("restored %d nodes from this node's last node list into the new registry: %s", len(added),
                        ", ".join(added))

    def heard_from(self, node_id: str) -> bool:
        """Whether ``node_id`` is listed and heartbeated lately as of the last read of the registry (its
        snapshot's times are the registry's: judged at the moment it was read, not now, or every node
        would look down between two reads)."""
        node = self.nodes.get(node_id)
        return node is not None and node.heartbeat_fresh(self._nodes_read_at)

    def removed_error(self):
        """The 503 of a write to this node while it is removed from the cluster (None when it is not)."""
        if not self.removed:
            return None
        return errors.ServiceUnavailable(
            f"This node ({self.node_id}) was removed from the cluster (gateway cluster leave) and takes no writes: "
            "no other node would find what it stored. Send the request to another node; the operator stops this "
            "one, or adds it back with `gateway cluster join`.")

    async def _removed(self) -> None:
        """`gateway cluster leave` removed this node while it runs: it is in nobody's node list, so
        it must not go on as the primary (placing objects, holding the lease). Said once."""
        if self.removed:
            return
        self.removed = True
        log.warning("this node was removed from the registry (gateway cluster leave): it is outside the cluster "
                    "now and refuses writes (no other node would find them); stop it, or add it again with "
                    "`gateway cluster join`")
        if self.role == "primary":
            if self.election is not None:
                await self.election.give_up()
            self.role = "redundant"
            for listener in self.role_listeners:
                listener("primary", "redundant")

    async def _election_round(self) -> None:
        """Keep the primary lease, or take over from a dead primary (cluster/election.py)."""
        if self.election is None:
            return
        try:
            role = await self.election.round(self.role)
        except NotImplementedError:
            log.info("registry %s has no locks: failover is off", self.registry.url)
            self.election = None
            return
        if role == self.role:
            return
        old, self.role = self.role, role
        await self.registry.register(self.node_id, role, self.address)
        await self.reload()
        for listener in self.role_listeners:
            listener(old, role)

    async def _probe_limited(self) -> None:
        """Ping peers that failed, so one that is back is trusted again without waiting for traffic; and
        peers nothing was asked of for three heartbeats, so one that is gone is found so without
        traffic too (a peer dead for minutes showed as healthy in every node's metrics).

        The pings run beside the heartbeats, not in their round: a frozen peer's ping waits the peer
        timeout (2 s), and with heartbeats every 0.5 s that made this live node's own heartbeat late
        enough to show it down, and its voters log a failover refused for a voter that was up. One
        round of pings at a time: a new one begins once the last has its answers."""
        if self._probing is not None and not self._probing.done():
            return
        peers = self.peers(storing=False)
        quiet_for = 3 * self.settings.heartbeat_interval
        limited = [p for p in peers if self.health.limited(p) or self.health.quiet(p, quiet_for)]

        async def probe(peer: str) -> None:
            try:
                await self.client.ping(peer, peers[peer])
            except PeerUnreachable as exc:
                log.debug("probe: %s", exc)  # health already recorded the failure
            except Exception as exc:  # an odd answer: still down for us; the next probe retries
                log.info("probe of %s: %s", peer, exc)

        if limited:
            self._probing = asyncio.gather(*(probe(p) for p in limited))

    async def tell_bucket_deleted(self, bucket: str) -> None:
        """Every other node (proxies too) hears that the bucket was deleted before DeleteBucket is
        answered: a proxy trusts for a few seconds that a bucket it checked exists, and its PUT
        into it made the bucket again on the node it placed the write on."""
        await self._tell(self.peers(storing=False), bucket, None)

    async def tell_watchers(self, bucket: str, key: str) -> None:
        """This node stored the key: the nodes that lately asked it for the key in vain (and may have
        cached that miss) forget it before the write is answered (watchers.py)."""
        watchers = [n for n in self.watchers.take(bucket, key) if n != self.node_id and n in self.nodes]
        if watchers:
            await self._tell({n: self.nodes[n].address for n in watchers}, bucket, key)

    async def _tell(self, addresses: dict[str, str], bucket: str, key: str | None) -> None:
        """The location notice (PeerClient.forget_location) to each of ``addresses``, in parallel and
        best effort: a node that does not answer within the limited timeout keeps what it knew until
        that expires (a cached miss: 1 s; a proxy's memory of a bucket: 5 s)."""
        what = f"{bucket}/{key} was written" if key is not None else f"bucket {bucket} was deleted"

        async def tell(node: str, address: str) -> None:
            try:
                await self.client.forget_location(node, address, bucket, key)
            except Exception as exc:  # noqa: BLE001 - best effort, see above
                log.info("could not tell %s that %s: %s", node, what, exc)

        await asyncio.gather(*(tell(n, a) for n, a in addresses.items()))

    async def retire_later(self, peer: str, bucket: str, key: str, newer: ObjectInfo) -> bool:
        """``peer`` (unreachable now) must drop its copy of the key if older than ``newer``:
        recorded in the registry, and applied by that node (gateway/cluster/retirements.py). True
        when the registry took it; False when only this process remembers it."""
        return await self.retirements.add(peer, bucket, key, newer)

    async def apply_retirements(self, *, everything: bool = False, drop_older: DropOlder | None = None) -> None:
        """Drop this node's older copies of objects replaced while it was away (``drop_older``, by
        default the one the object service set once the storage was ready). Raise RegistryError."""
        drop_older = drop_older or self.drop_older
        if drop_older is not None:
            async with self._applying:
                await self.retirements.apply_own(drop_older, everything=everything)

    def reads_held(self) -> bool:
        """Whether this node must not serve its own copies now: it has just run again after standing
        still past the peer timeout (a paused VM, SIGSTOP), and an overwrite made meanwhile on another
        node may not have retired its older copy yet (the retirement waits in the registry, or in its
        sockets). Held for the stall's grace (0.5 s) and until the registry's retirements for this
        node are applied (at most twice the peer timeout); reads are a 503 meanwhile."""
        return self._catching_up is not None or self.stalls.stalled_recently()

    def _after_stall(self) -> None:
        self.superseded.clear()  # what it knew of overwrites elsewhere may be out of date (a DELETE since)
        if self._catching_up is None:
            self._catching_up = asyncio.get_running_loop().create_task(self._catch_up())

    async def _catch_up(self) -> None:
        try:
            await asyncio.wait_for(self.apply_retirements(everything=True), 2 * self.settings.peer_timeout)
        except Exception as exc:  # noqa: BLE001 - the registry or the store failed: the heartbeat's rounds retry
            log.warning("after standing still, the overwrites made meanwhile could not all be applied here (%s); "
                        "this node serves its copies again, the next rounds apply the rest", exc)
        finally:
            self._catching_up = None

    async def _retirement_round(self) -> None:
        await self.apply_retirements()
        peers = self.peers()

        async def send(peer: str, item: Retirement) -> None:
            await self.client.supersede(peer, peers[peer], item.bucket, item.key, item)
            self.locations.forget(item.bucket, item.key)

        await self.retirements.send_remembered(peers, lambda p: not self.health.limited(p), send)
        await self.retirements.refresh_counts(list(peers))

    def pending_retirements(self) -> dict[str, int]:
        return self.retirements.pending()

    async def info(self) -> dict[str, Any]:
        """What this node publishes with its heartbeat (shown by `gateway cluster status`)."""
        stale = not self._stats_at or time.monotonic() - self._stats_at >= STATS_EVERY
        # The first heartbeat runs before the backends created their directories: count again then.
        if stale or (self.storage_roots and self._storage_stats.get("free_bytes") is None):
            self._stats_at = time.monotonic()
            counted_at = time.time()
            self._storage_stats = await asyncio.to_thread(storage_stats, self.storage_roots)
            if self._storage_stats.get("objects") is not None:
                # When the count was taken: `cluster leave` says how old the count it relies on is.
                self._storage_stats["objects_counted_at"] = counted_at
        return {
            "heartbeat_interval": self.settings.heartbeat_interval,
            "failover": self.election is not None,
            "failover_after": self.settings.failover_after,
            "pid": os.getpid(),
            "started": self.started,
            "shared_storage": self.shared_storage and self.role != "proxy",
            "storage_pending": sorted(self.pending_backends()) if self.pending_backends is not None else [],
            "storage_full": self.full.of(self.node_id),
            "storage_failed": self.failed.of(self.node_id),
            **self._storage_stats,
            "peers": self.health.snapshot(),
            "balance": self.balancer.snapshot(),
        }

    def status(self) -> dict[str, Any]:
        """This node's live view (for /_admin/cluster)."""
        return {
            "node_id": self.node_id, "role": self.role, "address": self.address,
            "nodes": [n.to_json() for n in self.nodes.values()],
            "peers": self.health.snapshot(), "balance": self.balancer.snapshot(),
            "location_cache_entries": len(self.locations),
            "pending_retirements": self.pending_retirements(),
        }


def storage_stats(roots: list[str]) -> dict[str, Any]:
    """Object count (bounded walk) and free bytes of the storage directories."""
    if not roots:
        return {"objects": None, "free_bytes": None}
    count = 0
    free = None  # unknown until some storage directory exists
    for root in roots:
        try:
            free = (free or 0) + shutil.disk_usage(root).free
        except OSError:
            continue
        for directory, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if not d.startswith(".")]  # .gateway temp files, .multipart parts
            count += sum(1 for f in files if f.endswith("%obj"))
            if count >= COUNT_LIMIT:
                return {"objects": count, "objects_capped": True, "free_bytes": free}
    return {"objects": count, "free_bytes": free}
