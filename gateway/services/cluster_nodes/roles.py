"""What differs by role: a redundant node (StoringNode), the primary (PrimaryNode) and a proxy (ProxyNode)."""

from __future__ import annotations

import logging
import time

from ... import errors
from ...backend import MULTIPART_BUCKET, ByteRange, ObjectInfo, ObjectMeta, ObjectReader, new_upload, upload_record
from ...cluster.balancer import READ_HANDOFF_MARGIN, release_on_close
from ...cluster.forward import Forward
from ...cluster.membership import Cluster
from ...cluster.relay import PeerUnreachable
from ...eager import require_task
from ...payload import Payload
from ..pending import PendingBackend
from .node import ClusterNode

log = logging.getLogger("gateway.cluster")
BUCKET_MEMORY = 5.0  # seconds a proxy trusts that a bucket exists before writing into it


class StoringNode(ClusterNode):
    """A redundant node: its own storage first, peers on a miss. Uploads begun here stay on this node;
    one begun elsewhere is continued on the node holding it (ClusterNode's multipart methods)."""

    async def create_multipart(self, bucket, key, meta, checksum_algorithm=None):
        peer = self._roomier_peer()
        if peer is not None:
            # This node's store was found full or failed: the upload is begun on a storing node that
            # takes writes, as a proxy begins one (its parts and its completion are forwarded there).
            await self.head_bucket(bucket)
            info, record = new_upload(bucket, key, meta, checksum_algorithm)
            await self._put_on_peer(peer, MULTIPART_BUCKET, upload_record(bucket, info.upload_id),
                                    Payload.from_bytes(record), ObjectMeta())
            return info
        with self._noting_store():  # the bucket's check too: an unmounted share fails there first
            await self._ensure_local_bucket(bucket)
            return await self.local.create_multipart(bucket, key, meta, checksum_algorithm)

    def _roomier_peer(self, tried: set[str] = frozenset()) -> str | None:
        """While this node's store is noted full or failed (cluster/unwritable.py): a storing peer that
        takes writes (not one in ``tried``), the less busy of two; else None."""
        cluster = self.cluster
        if not cluster.own_store_left_out(self.name):
            return None
        peers = [p for p in cluster.peers() if p not in tried
                 and not cluster.health.limited(p) and not cluster.refuses_writes(p, self.name)]
        return cluster.balancer.choose(peers) if peers else None

    async def _ensure_local_bucket(self, bucket: str) -> None:
        """Create a bucket here that exists on a peer (made while this node was down)."""
        try:
            await self.local.head_bucket(bucket)
        except errors.NoSuchBucket:
            await self.head_bucket(bucket)  # raises NoSuchBucket when no node has it
            if self.local.capabilities.shared:
                await self._refuse_a_bucket_the_share_has(bucket)
            try:
                await self.local.create_bucket(bucket)
            except errors.BucketAlreadyOwnedByYou:
                pass

    async def _refuse_a_bucket_the_share_has(self, bucket: str) -> None:
        """A node on this node's share has the bucket this node does not see: its share is not mounted
        (without require_mount the bare mount-point directory is its root), or the bucket is not visible
        here yet. Made there, the bucket and the object went onto the bare directory, answered 200, and
        were hidden once the share was mounted over them again. A 503 instead (the store is noted failed
        and the write placed on another node)."""
        share = {p: a for p, a in self.cluster.peers().items() if self.cluster.on_shared_storage(p)}
        if not share:
            return
        answers, _ = await self._everywhere(lambda p, a: self.client.bucket(p, a, "HEAD", bucket), share,
                                            enough=lambda r: r is None)
        holder = next((p for p, r in answers.items() if r is None), None)
        if holder is not None:
            raise errors.BackendUnavailable(
                f"backend {self.name!r}: the shared storage at {getattr(self.local, 'root', '?')} does not show "
                f"bucket {bucket!r}, which node {holder} on the same share has: the share is not mounted here "
                "(set require_mount = true), or the bucket is not visible here yet. Nothing was written; the "
                "request can be retried.")

    async def put(self, bucket: str, key: str, payload: Payload, meta: ObjectMeta) -> ObjectInfo:
        return await self._put_placed(bucket, key, payload, meta, f"The write of object {key!r}")

    async def _placement(self, bucket: str, key: str, tried: set[str]) -> str | None:
        """Where a PUT sent to this node goes: here, unless this node's store was found full or failed;
        then to a peer that takes writes, as create_multipart does."""
        me = self.cluster.node_id
        if bucket.startswith("."):  # the gateway's own records stay with what they belong to
            return None if me in tried else me
        if me not in tried and not self.cluster.own_store_left_out(self.name):
            return me
        return self._roomier_peer(tried) or (None if me in tried else me)

    async def _put_here(self, bucket: str, key: str, payload: Payload, meta: ObjectMeta) -> ObjectInfo:
        with self._noting_store():  # an unmounted share fails the bucket's check first
            await self._ensure_local_bucket(bucket)
        return await super()._put_here(bucket, key, payload, meta)


class PrimaryNode(StoringNode):
    """The primary: places new objects on itself or a redundant node, whichever is less busy."""

    async def get(self, bucket: str, key: str, byte_range: ByteRange | None = None,
                  forward: bool = False) -> ObjectReader | Forward:
        """On shared storage, hand the GET to a redundant node when this node is the busier one.

        Busy = GETs in flight, from the call until the response body is sent
        (the reader is closed). In local mode an object lives on one node,
        so the read goes there anyway (local hit or relay): nothing to choose.
        """
        if not self.local.capabilities.shared or bucket.startswith("."):
            return await super().get(bucket, key, byte_range, forward)
        balancer = self.cluster.balancer
        peer = self._read_handoff()
        if peer is not None:
            require_task()  # before the bookkeeping: an eager start is retried in a task (gateway/eager.py)
            end = balancer.begin(peer)
            try:
                reader = await self.client.get(peer, self.cluster.peers()[peer], bucket, key, byte_range)
            except (PeerUnreachable, errors.GatewayError) as exc:
                # Not visible there yet, or the peer failed: serve it here as if never handed off.
                end()
                log.debug("read handoff of %s/%s to %s: %s", bucket, key, peer, exc)
            else:
                balancer.served_read(peer, "get")
                return release_on_close(reader, end)
        end = balancer.begin(self.cluster.node_id)
        try:
            reader = await super().get(bucket, key, byte_range)
        except BaseException:
            end()
            raise
        return release_on_close(reader, end)

    def _read_handoff(self) -> str | None:
        """The least busy healthy redundant node if this node has READ_HANDOFF_MARGIN more GETs in flight."""
        redundants = [p for p in self.cluster.redundant_peers() if not self.cluster.health.limited(p)]
        if not redundants:
            return None
        balancer = self.cluster.balancer
        peer = balancer.least_busy(redundants)
        if balancer.outstanding[self.cluster.node_id] > balancer.outstanding[peer] + READ_HANDOFF_MARGIN:
            return peer
        return None

    async def _placement(self, bucket: str, key: str, tried: set[str]) -> str | None:
        """Where a PUT goes: where the key already is (so an overwrite replaces it), else the less busy
        node; not a node in ``tried`` (None when no other is left)."""
        me = self.cluster.node_id
        if bucket.startswith("."):
            return None if me in tried else me
        cached = self.locations.get(bucket, key)
        redundants = {p: a for p, a in self.cluster.redundant_peers().items() if p not in tried}
        if (cached and cached in redundants and not self.cluster.health.limited(cached)
                and not self.cluster.refuses_writes(cached, self.name)):
            # An overwrite goes where the key is, so that it replaces the copy there. Not to a holder
            # that just failed: the write would wait for it and fail too; placed elsewhere, the old
            # copy there is retired like any other (docs/cluster.md "Overwrites").
            return cached
        # A node whose store for this backend has not answered since it started (services/pending.py), or
        # was found full or failed (cluster/unwritable.py), takes no writes for it: this one included,
        # unless no node can take them (then its 503 or 507 says why).
        own_store = (me not in tried and not isinstance(self.local, PendingBackend)
                     and not self.cluster.own_store_left_out(self.name))
        if own_store:
            try:
                if await self.local.exists(bucket, key):
                    return me
            except errors.NoSuchBucket:
                return me  # let the local put raise NoSuchBucket (or create it from a peer)
        candidates = ([me] if own_store else []) + [
            p for p in redundants
            if not self.cluster.health.limited(p) and not self.cluster.refuses_writes(p, self.name)]
        if candidates:
            return self.cluster.balancer.choose(candidates)
        return None if me in tried else me


class ProxyNode(ClusterNode):
    """Stores nothing: reads find the object on the storing nodes, writes go to the least busy one."""

    def __init__(self, cluster: Cluster, name: str = ""):
        super().__init__(None, cluster, name)
        self._buckets_seen: dict[str, float] = {}

    async def _known_bucket(self, bucket: str) -> None:
        """Raise NoSuchBucket unless some storing node has the bucket (remembered a few seconds)."""
        now = time.monotonic()
        if self._buckets_seen.get(bucket, 0.0) > now:
            return
        await self.head_bucket(bucket)
        self._buckets_seen[bucket] = now + BUCKET_MEMORY
        if len(self._buckets_seen) > 10_000:
            self._buckets_seen.clear()

    def bucket_deleted(self, bucket: str) -> None:
        self._buckets_seen.pop(bucket, None)

    async def delete_bucket(self, bucket: str) -> None:
        self._buckets_seen.pop(bucket, None)
        try:
            await super().delete_bucket(bucket)
        finally:
            self._buckets_seen.pop(bucket, None)  # a PUT during the delete must not keep it remembered

    async def put(self, bucket: str, key: str, payload: Payload, meta: ObjectMeta) -> ObjectInfo:
        self.locations.forget(bucket, key)
        await self._known_bucket(bucket)
        if not self.cluster.peers():
            raise errors.ServiceUnavailable("this proxy knows no storing node (check the registry)")
        # Multipart parts never come here: upload_part sends them to the node holding their upload
        # (it is assembled there, and a part sent again must replace the earlier one there).
        # Never the internal name of an upload's record in a client's message.
        what = "Starting the multipart upload" if bucket == MULTIPART_BUCKET else f"The write of object {key!r}"
        return await self._put_placed(bucket, key, payload, meta, what)

    async def _placement(self, bucket: str, key: str, tried: set[str]) -> str | None:
        """The less busy storing node, not one in ``tried``. Not one whose store for this backend has not
        answered since it started (services/pending.py) or was found full or failed (cluster/unwritable.py),
        unless every node is in that state: then one of them answers why."""
        peers = [p for p in self.cluster.peers() if p not in tried]
        if not peers:
            return None
        ready = [p for p in peers if not self.cluster.refuses_writes(p, self.name)] or peers
        healthy, limited = self.cluster.health.split(ready)
        return self.cluster.balancer.choose(healthy or limited)
