"""ClusterNode: the part of a cluster node's Backend that every role shares (roles.py adds the rest)."""

from __future__ import annotations

import asyncio
import logging
import time

from ... import errors
from ...backend import Backend, ByteRange, ListPage, ObjectInfo, ObjectMeta, ObjectReader
from ...cluster.forward import Forward
from ...cluster.listing import merge_pages
from ...cluster.membership import Cluster
from ...cluster.relay import PeerUnreachable
from ...cluster.sometimes import Sometimes
from ...cluster.versions import supersede_local
from ...payload import Payload
from .asking import PeerAsking
from .buckets import Buckets
from .repair import Repair
from .unreachable import catching_up_error, listing_unreachable_error, unreachable_error, write_unreachable_error
from .uploads import Uploads

log = logging.getLogger("gateway.cluster")
# A write whose store turns out full or failed, or whose node cannot be reached, is placed once more
# elsewhere if its body is at most this long: the body is kept while it is written (docs/cluster.md).
PLACE_AGAIN_BODY = 1 << 20


class ClusterNode(Repair, Uploads, Buckets, PeerAsking, Backend):
    """Relaying logic shared by the roles. ``local`` is None on a proxy."""

    forwards_reads = True

    def __init__(self, local: Backend | None, cluster: Cluster, name: str = ""):
        # The backend instance's name (a proxy has none of its own: the storing nodes' one it serves).
        super().__init__(name or (local.name if local else "cluster"))
        self.local = local
        self.cluster = cluster
        self.client = cluster.client
        self.locations = cluster.locations
        self.capabilities = local.capabilities if local else Backend.capabilities
        # A local hit runs like the local backend's read; a relay's GET/HEAD goes through the lean
        # peer client (cluster/peer_http.py), which needs no task before it waits. So a proxy, whose
        # reads are all relays, starts them eagerly too. (aiohttp paths call require_task().)
        self.eager_reads = local.eager_reads if local else True
        self.min_part_size = local.min_part_size if local else cluster.settings.min_part_size
        self._background: set[asyncio.Task] = set()
        # Registry writes of deletions a DELETE did not wait for (delete): two at a time, so that a mass
        # delete while a node is down leaves the registry to the heartbeats too.
        self._recording = asyncio.Semaphore(2)
        self._repairing: set[tuple[str, str]] = set()  # repair.py
        self._storage_failure_said = Sometimes()  # _local_failed says so once a minute
        self._unreachable_said = Sometimes()  # a peer that could not be asked: once a minute (asking.py)

    # Objects -----------------------------------------------------------------------

    async def get(self, bucket: str, key: str, byte_range: ByteRange | None = None,
                  forward: bool = False) -> ObjectReader | Forward:
        """``forward``: on a local miss of an object the location cache places on a peer, return a
        Forward instead of relaying (the front end passes the read through: cluster/forward.py)."""
        failure = None
        if self.local is not None:
            if self.cluster.reads_held():  # just ran again after a stall: its copy may be outdated
                raise catching_up_error()
            try:
                found = await self.local.get_if_present(bucket, key, byte_range)
            except (errors.ServiceUnavailable, OSError) as exc:  # this node's storage failed: see _local_failed
                found, failure = None, self._local_failed(exc)
            if found is not None:
                self.cluster.balancer.served_read(self.cluster.node_id, "get")
                return found
        if forward and failure is None:
            passed = self._forward(bucket, key)
            if passed is not None:
                return passed
        return await self._find(bucket, key, lambda p, a: self.client.get(p, a, bucket, key, byte_range),
                                None, "get", failure)

    async def head(self, bucket: str, key: str, forward: bool = False) -> ObjectInfo | Forward:
        failure = None
        if self.local is not None:
            if self.cluster.reads_held():
                raise catching_up_error()
            try:
                found = await self.local.head_if_present(bucket, key)
            except (errors.ServiceUnavailable, OSError) as exc:
                found, failure = None, self._local_failed(exc)
            if found is not None:
                self.cluster.balancer.served_read(self.cluster.node_id, "head")
                return found
        if forward and failure is None:
            passed = self._forward(bucket, key)
            if passed is not None:
                return passed
        return await self._find(bucket, key, lambda p, a: self.client.head(p, a, bucket, key), None, "head",
                                failure)

    async def completed_copy(self, bucket: str, key: str, etag: str) -> ObjectInfo | None:
        """The copy of the key whose ETag is ``etag``, on whichever storing node holds it, or None: a
        multipart Complete sent again after its answer was lost (api/s3/multipart.py _completed_before).
        The first one may have been cut short (kill -9 of the holder) after it stored the object and
        before it retired the older copies elsewhere: a HEAD found such a copy first (local first),
        and the retry was NoSuchUpload, or 200 while other nodes went on reading the old version. So
        every node is asked, and the older copies are retired as the first Complete would have done."""
        copies: dict[str, ObjectInfo] = {}
        if self.local is not None:
            found = await self.local.head_if_present(bucket, key)
            if found is not None:
                copies[self.cluster.node_id] = found
        answers, _ = await self._everywhere(lambda p, a: self.client.head(p, a, bucket, key))
        copies.update((peer, info) for peer, info in answers.items() if isinstance(info, ObjectInfo))
        holder = next((node for node, info in sorted(copies.items()) if info.etag == etag), None)
        if holder is None:
            return None
        info = copies[holder]
        if any((other.last_modified, other.etag) != (info.last_modified, info.etag) for other in copies.values()):
            await self._retire_older_copies(bucket, key, info, holder)
        return info

    def _forward(self, bucket: str, key: str) -> Forward | None:
        """A Forward when the location cache names a peer that is known and answers well."""
        peer = self.locations.peek(bucket, key)  # counted below if used, else by _find's lookup
        if peer:  # neither unknown (None) nor NOWHERE
            cluster = self.cluster
            node = cluster.nodes.get(peer)  # (not peers(): a dict built per call)
            if (node is not None and node.stores_objects and peer != cluster.node_id
                    and not cluster.health.limited(peer) and not self.client.lacks_read_route(peer)):
                self.locations.hits += 1
                return Forward(self, peer, node.address)
        return None

    async def _put_here(self, bucket: str, key: str, payload: Payload, meta: ObjectMeta) -> ObjectInfo:
        """Store here, then retire older copies of the key on the other nodes."""
        self.locations.forget(bucket, key)
        with (self.cluster.balancer.track(self.cluster.node_id, counted=not bucket.startswith(".")),
              self._noting_store()):
            info = await self.local.put(bucket, key, payload, meta)
        await self._retire_older_copies(bucket, key, info, self.cluster.node_id)
        return info

    async def _placement(self, bucket: str, key: str, tried: set[str]) -> str | None:
        """The node a PUT through this node goes to (this one or a peer), not one in ``tried``; None
        when no other is left."""
        raise NotImplementedError

    async def _put_placed(self, bucket: str, key: str, payload: Payload, meta: ObjectMeta, what: str) -> ObjectInfo:
        """Store on the node _placement names. When that node's store turns out full or failed, or
        the node cannot be reached, the write goes to the node _placement names next, not one
        tried already, with the same body (kept while it is written, up to
        PLACE_AGAIN_BODY): so the client gets no 507 or 503 for a store that is noted only now
        (cluster/unwritable.py), as long as another node takes it. ``what`` names the write
        in a 503 when its last node could not be reached."""
        tried: set[str] = set()
        payload.keep_for_retry(PLACE_AGAIN_BODY)
        target = await self._placement(bucket, key, tried)
        while True:
            try:
                if target == self.cluster.node_id:
                    return await self._put_here(bucket, key, payload, meta)
                return await self._put_on_peer(target, bucket, key, payload, meta)
            except (PeerUnreachable, errors.GatewayError, OSError) as exc:
                # A node that has just run again after standing still refuses peer writes for a moment.
                if not (isinstance(exc, (PeerUnreachable, errors.NodeCatchingUp)) or self.cluster.full.caused_by(exc)
                        or self.cluster.failed.caused_by(exc)):
                    raise
                tried.add(target)
                following = await self._placement(bucket, key, tried)
                again = payload.again() if following is not None and following not in tried else None
                if again is None:
                    if isinstance(exc, (PeerUnreachable, errors.NodeCatchingUp)):
                        raise write_unreachable_error(what, target) from None
                    raise
                log.info("write of %s/%s placed on %s instead of %s: %s", bucket, key, following, target,
                         exc.reason if isinstance(exc, PeerUnreachable) else exc)
                target, payload = following, again

    async def _put_on_peer(self, peer: str, bucket: str, key: str, payload: Payload, meta: ObjectMeta) -> ObjectInfo:
        address = self.cluster.peers()[peer]
        with (self.cluster.balancer.track(peer, counted=not bucket.startswith(".")),
              self.cluster.noting_store(peer, self.name)):  # its 507 or failed store: none placed there a while
            info = await self.client.put(peer, address, bucket, key, payload, meta, ensure_bucket=True)
        await self._retire_older_copies(bucket, key, info, peer)
        return info

    async def _retire_older_copies(self, bucket: str, key: str, info: ObjectInfo, holder: str) -> None:
        """``holder`` stored ``info``: delete older copies of the key on every other storing node.

        An overwrite through another node than the one holding the previous
        version would otherwise leave that version behind, and reads through
        some nodes would return it (docs/cluster.md, "Overwrites"). It runs
        before the PUT is answered, so a read through any node right after
        sees the new version. A node that cannot be told now finds it in the
        registry when it is back (Cluster.retire_later).
        """
        me = self.cluster.node_id
        self.locations.forget(bucket, key)
        if bucket.startswith("."):
            return  # internal buckets are written once on one node
        if holder == me:
            await self.cluster.tell_watchers(bucket, key)  # nodes that missed it lately (watchers.py)
        peers = {p: a for p, a in self.cluster.peers().items() if p != holder}
        # Known to be on a node's own disk: a node on a share may drop its older copy there (another file).
        own = (self.local is not None and not self.local.capabilities.shared if holder == me
               else self.cluster.on_own_storage(holder))
        if self._on_shared_storage(holder):
            # The nodes on the share hold this very file: nothing to retire there (and one that still saw
            # the old version, the visibility window, would delete the new file by its path). Nodes with
            # storage of their own (not migrated yet, docs/migration.md) may hold an older copy.
            peers = {p: a for p, a in peers.items() if not self.cluster.on_shared_storage(p)}
            if not peers:
                return
        newer: dict[str, ObjectInfo] = {}  # nodes that kept a newer copy: a concurrent overwrite won
        if holder != me and self.local is not None:
            try:
                kept = await supersede_local(self.local, bucket, key, info.last_modified, info.etag, own,
                                             self.cluster.superseded, info.size)
                if kept is not None:
                    newer[me] = kept
            except errors.GatewayError as exc:
                log.warning("could not drop the older local copy of %s/%s: %s", bucket, key, exc.message)
        # A peer that has just failed (frozen, its host gone without refusing connections) is not
        # waited for: every write would take peer_timeout for as long as it stays so. Its retirement
        # goes to the registry, and the request is sent anyway without waiting, so that a node that
        # runs again drops its old copy at once rather than at its next heartbeat.
        for peer in [p for p in peers if self.cluster.health.limited(p)]:
            await self.cluster.retire_later(peer, bucket, key, info)
            self._in_background(self._supersede_later(peer, peers.pop(peer), bucket, key, info, holder, own))
        if peers:
            answers, unreachable = await self._everywhere(
                lambda p, a: self.client.supersede(p, a, bucket, key, info, own), peers)
            newer.update((p, r) for p, r in answers.items() if isinstance(r, ObjectInfo))
            for peer in unreachable:
                await self.cluster.retire_later(peer, bucket, key, info)
        if not newer:
            if holder != me:
                self.locations.found(bucket, key, holder)
            return
        await self._drop_outdated(bucket, key, holder, max(newer.values(), key=lambda i: (i.last_modified, i.etag)))

    async def _supersede_later(self, peer: str, address: str, bucket: str, key: str, info: ObjectInfo,
                               holder: str, own_storage: bool = False) -> None:
        """The retirement request to a peer that had failed, not waited for by the write."""
        try:
            kept = await self.client.supersede(peer, address, bucket, key, info, own_storage)
        except (PeerUnreachable, errors.GatewayError) as exc:
            log.debug("retirement of %s/%s on %s: %s (it is in the registry)", bucket, key, peer, exc)
            return
        if isinstance(kept, ObjectInfo):
            await self._drop_outdated(bucket, key, holder, kept)

    async def _drop_outdated(self, bucket: str, key: str, holder: str, winner: ObjectInfo) -> None:
        """Two overwrites raced and another node kept the newer version ``winner``: the one on ``holder`` goes."""
        me = self.cluster.node_id
        self.locations.forget(bucket, key)
        log.info("%s/%s: a newer version was written concurrently; dropping the one on %s", bucket, key, holder)
        try:
            if holder == me:
                await supersede_local(self.local, bucket, key, winner.last_modified, winner.etag,
                                     superseded=self.cluster.superseded, size=winner.size)
            else:
                await self.client.supersede(holder, self.cluster.peers()[holder], bucket, key, winner)
        except (PeerUnreachable, errors.GatewayError, KeyError) as exc:
            log.warning("could not drop the outdated %s/%s on %s: %s", bucket, key, holder, exc)

    async def delete(self, bucket: str, key: str) -> None:
        """Delete here and on every storing peer.

        A peer that has failed already (de-prioritized) is not waited for: its DELETE is sent without
        waiting for the answer. A peer that could not be asked may hold a copy: it gets the deletion as
        a retirement in the registry, as an overwrite's older copy does, and drops every copy older than
        this moment before it serves again (docs/cluster.md, "Overwrites"). When no node that answered
        held the object, 503 if the registry could not take that either.
        """
        self.locations.forget(bucket, key)
        existed = False
        bucket_seen = False
        if self.local is not None:
            try:
                existed = await self.local.exists(bucket, key)
                bucket_seen = True
                await self.local.delete(bucket, key)
                self.cluster.superseded.forget(bucket, key)
            except errors.NoSuchBucket:
                pass
        peers = self.cluster.peers()
        # Internal buckets (a finished upload's record) live on one node and are not retired this way.
        retire = not bucket.startswith(".")
        skipped = {p: peers.pop(p) for p in list(peers) if retire and self.cluster.health.limited(p)}
        answers, unreachable = await self._everywhere(lambda p, a: self.client.delete(p, a, bucket, key), peers)
        # A node on shared storage deletes the share's file, which a newer PUT may be by the time a late
        # DELETE runs (a frozen node runs it when it wakes: the acknowledged PUT was gone for every node).
        # So none is sent late to such a node; when this node or one that answered deleted it on the share
        # already, it is not missing either.
        on_share = {p for p in skipped if self.cluster.on_shared_storage(p)}
        share_done = ((self.local is not None and self.local.capabilities.shared)
                      or any(self.cluster.on_shared_storage(p) for p in answers if p not in unreachable))
        for peer, address in skipped.items():
            if peer not in on_share:
                self._in_background(self._delete_later(peer, address, bucket, key))
        if share_done:
            skipped = {p: a for p, a in skipped.items() if p not in on_share}
            # Nor is a node on the share whose own mount of it failed: it holds no file the share lacks.
            unreachable = [p for p in unreachable if not (
                self.cluster.on_shared_storage(p) and isinstance(answers.get(p), errors.BackendUnavailable))]
        if retire:
            if existed:
                self.cluster.balancer.deleted_on(self.cluster.node_id)
            for peer in (p for p, r in answers.items() if r is True):
                self.cluster.balancer.deleted_on(peer)
        existed = existed or any(r is True for r in answers.values())
        bucket_seen = bucket_seen or any(not isinstance(r, (errors.NoSuchBucket, Exception)) for r in answers.values())
        self.locations.forget(bucket, key)
        missing = [*skipped, *unreachable]  # not asked, or no answer: they may hold it
        if existed:
            # A node that answered held it, and one that did not may hold a copy too: a writer that
            # published its copy and died before the older one elsewhere was dropped (kill -9). Without
            # the retirement that node served it again once back, a DELETE answered 204 undone for good.
            # Recorded without waiting (a registry write per DELETE made deletes 3x slower while a node
            # was down); kept in this node's memory when the registry cannot take it (Retirements.add).
            retired_at = time.time()
            for peer in missing:
                self._in_background(self._record_deletion(peer, bucket, key, retired_at))
            return
        if not bucket_seen:  # no node that answered has the bucket
            if missing:
                raise unreachable_error(f"Object {key!r}", self._named(missing, answers))
            raise errors.NoSuchBucket(BucketName=bucket)
        not_told = [p for p in missing if not await self._delete_through_registry(p, bucket, key)]
        if not_told:
            raise unreachable_error(f"Object {key!r}", self._named(not_told, answers))

    async def _delete_through_registry(self, peer: str, bucket: str, key: str, at: float | None = None) -> bool:
        """Leave the deletion of the key for ``peer`` in the registry: it drops every copy older than now
        before it serves again. False when that cannot be relied on: an internal bucket; a node not
        known to keep its objects on a disk of its own (on shared storage a file not yet visible here
        is that node's to delete, and retirements are not applied there); the registry not taking it."""
        if bucket.startswith(".") or not self.cluster.on_own_storage(peer):
            return False
        return await self.cluster.retire_later(peer, bucket, key, ObjectInfo(key, 0, "", at or time.time()))

    async def _record_deletion(self, peer: str, bucket: str, key: str, retired_at: float) -> None:
        async with self._recording:
            await self._delete_through_registry(peer, bucket, key, retired_at)

    async def _delete_later(self, peer: str, address: str, bucket: str, key: str) -> None:
        """The DELETE to a peer that had failed, not waited for: a frozen node finds it when it runs again
        (and, when no node that answered held the object, the registry's retirement too)."""
        try:
            await self.client.delete(peer, address, bucket, key)
        except (PeerUnreachable, errors.GatewayError) as exc:
            log.debug("delete of %s/%s on %s, not waited for: %s", bucket, key, peer, exc)

    async def list(self, bucket: str, prefix: str = "", delimiter: str = "", start_after: str = "",
                   max_keys: int = 1000) -> ListPage:
        """This node's listing merged with every storing peer's (a peer that cannot be reached is left out).

        On shared storage this node's listing covers every node on the share: only the nodes still on a
        disk of their own (a cluster part-way through docs/migration.md) are asked, and with none the
        local listing is the whole answer.
        The merged page carries metadata (``ListPage.metadata``) when every page it merged did.
        A key that two nodes list in different versions has a copy an overwrite could not retire:
        it is retired now, in the background (repair.py).
        """
        peers = None
        if self.local is not None and self.local.capabilities.shared:
            peers = {p: a for p, a in self.cluster.peers().items() if not self.cluster.on_shared_storage(p)}
            if not peers:
                return await self.local.list(bucket, prefix, delimiter, start_after, max_keys)
        pages, _ = await self._pages(bucket, prefix, delimiter, start_after, max_keys, peers=peers)
        merged = merge_pages(list(pages.values()), max_keys)  # (with its metadata flag)
        self._repair_in_background(bucket, pages, merged)
        return merged

    async def _pages(self, bucket: str, prefix: str, delimiter: str, start_after: str, max_keys: int,
                     whole: bool | None = None, peers: dict[str, str] | None = None,
                     ) -> tuple[dict[str, ListPage], list[str]]:
        """Every storing node's page of the listing, by node (a node without the bucket has none), and the
        nodes that could not be asked; the 503s of list() when the bucket, or with ``whole`` (by default
        ``strict_listings``) any part of it, cannot be listed. ``peers``: the peers to ask (all storing ones
        by default)."""
        whole = self.cluster.settings.strict_listings if whole is None else whole
        pages: dict[str, ListPage] = {}
        bucket_seen = False
        if self.local is not None:
            try:
                page = await self.local.list(bucket, prefix, delimiter, start_after, max_keys)
                if page.metadata is None:
                    page.metadata = self.local.capabilities.listing_metadata
                page = self.cluster.superseded.add_to(bucket, page, prefix, delimiter, start_after, max_keys)
                pages[self.cluster.node_id] = page
                bucket_seen = True
            except errors.NoSuchBucket:
                pass
        answers, unreachable = await self._everywhere(
            lambda p, a: self.client.list(p, a, bucket, prefix, delimiter, start_after, max_keys), peers)
        for peer, result in answers.items():
            if isinstance(result, ListPage):
                pages[peer] = result
                bucket_seen = True
        unreachable = self._share_covered(
            [p for p, r in answers.items() if isinstance(r, (ListPage, errors.NoSuchBucket))], unreachable)
        # Never the gateway's internal bucket in a client's message (uploads live in one).
        internal = bucket.startswith(".")
        if unreachable and bucket_seen and whole:
            raise listing_unreachable_error("Unfinished multipart uploads" if internal else
                                            f"The objects of bucket {bucket!r}", self._named(unreachable, answers))
        if unreachable:
            log.warning("listing %s without unreachable nodes %s", bucket, ", ".join(unreachable))
        if not bucket_seen:
            if unreachable:
                what = "Unfinished multipart uploads" if internal else f"Bucket {bucket!r}"
                raise unreachable_error(what, self._named(unreachable, answers))
            raise errors.NoSuchBucket(BucketName=bucket)
        return pages, unreachable

    async def check_writable(self) -> None:
        """Readiness (/readyz): this node's own store; on a proxy, that a storing node answers a ping now
        (asked at once, the first answer is enough): with every storing node down, a proxy said it was
        ready while it answered every object request 503, and a load balancer kept it in rotation.
        Not ready either once `cluster leave` removed it (Cluster.removed_error)."""
        removed = self.cluster.removed_error()
        if removed is not None:
            raise removed
        if self.local is not None:
            await self.local.check_writable()
            return
        if not self.cluster.peers():
            raise errors.ServiceUnavailable("this proxy knows no storing node yet (check the registry)")
        answers, _ = await self._everywhere(lambda p, a: self.client.ping(p, a),
                                            enough=lambda answer: isinstance(answer, dict))
        if not any(isinstance(answer, dict) for answer in answers.values()):
            reasons = ", ".join(f"{peer} ({getattr(answer, 'reason', None) or answer})"
                                for peer, answer in sorted(answers.items()))
            raise errors.ServiceUnavailable(f"no storing node answers this proxy now: {reasons}")

    async def start(self) -> None:
        """The wrapped backend is started by the service (a proxy starts none)."""

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()

