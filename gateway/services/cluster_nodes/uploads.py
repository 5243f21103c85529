"""Multipart uploads in a cluster: each is kept on the node holding its record."""

from __future__ import annotations

import logging
from typing import Any

from ... import errors
from ...backend import MULTIPART_BUCKET, is_upload_id, require_completion_checksums, upload_record
from ...cluster.relay import PeerUnreachable
from .asking import PeerAsking
from .unreachable import listing_unreachable_error, unreachable_error, upload_unreachable_error

log = logging.getLogger("gateway.cluster")


class Uploads(PeerAsking):
    """Mixed into ClusterNode (node.py); complete_here retires the older copies of the key with its
    _retire_older_copies."""

    # Multipart uploads: each is kept on the node holding its record ------------------------
    #
    # A node that does not hold an upload forwards UploadPart, ListParts, Complete and Abort to
    # the one that does (peer routes /uploads/..., served from the holder's own storage and never
    # forwarded again), so an upload begun through one node can be continued through any other
    # (SDKs behind a load balancer or DNS round robin over the storing nodes).

    async def _upload_holder(self, bucket: str, upload_id: str, key: str | None) -> str | None:
        """The node that holds upload ``upload_id``: None for this node, else the peer's id.

        Looked up as a read of the upload's record: this node's storage, the node the location
        cache names, then every storing peer. NoSuchUpload only when every storing node answered
        that it does not have it; a 503 with Retry-After naming the upload (never the record's
        internal name) while a node that may hold it cannot be asked.
        """
        if not is_upload_id(upload_id):
            raise errors.NoSuchUpload(UploadId=upload_id)
        record = upload_record(bucket, upload_id)
        failure = None
        if self.local is not None:
            try:
                if await self.local.head_if_present(MULTIPART_BUCKET, record) is not None:
                    return None
            except (errors.ServiceUnavailable, OSError) as exc:  # this node's storage failed: the peers may hold it
                failure = self._local_failed(exc)

        async def holder(peer: str, address: str) -> str:
            await self.client.head(peer, address, MULTIPART_BUCKET, record)
            return peer

        try:
            return await self._find(MULTIPART_BUCKET, record, holder, True, "head", failure,
                                    lambda peers: upload_unreachable_error(upload_id, key, peers))
        except (errors.NoSuchKey, errors.NoSuchBucket):
            raise errors.NoSuchUpload(UploadId=upload_id) from None

    async def _at_holder(self, holder: str, bucket: str, upload_id: str, key: str | None, call) -> Any:
        """``call(peer, address)`` on the upload's holder; its 503 names the upload, not the peer route."""
        record = upload_record(bucket, upload_id)
        address = self.cluster.peers().get(holder)
        if address is None:
            self.locations.forget(MULTIPART_BUCKET, record)
            raise upload_unreachable_error(upload_id, key, [holder])
        try:
            return await call(holder, address)
        except PeerUnreachable as exc:
            log.info("multipart upload %s: %s", upload_id, exc)
            self.locations.forget(MULTIPART_BUCKET, record)
            raise upload_unreachable_error(upload_id, key, [holder]) from None
        except (errors.ServiceUnavailable, errors.InternalError) as exc:
            log.info("multipart upload %s on %s: %s", upload_id, holder, exc.message)
            raise upload_unreachable_error(upload_id, key, [holder]) from None
        except errors.NoSuchUpload:
            self.locations.forget(MULTIPART_BUCKET, record)  # completed or aborted meanwhile
            raise

    async def get_upload(self, bucket, upload_id, key=None):
        holder = await self._upload_holder(bucket, upload_id, key)
        if holder is None:
            return await self.local.get_upload(bucket, upload_id, key)
        return await self._at_holder(holder, bucket, upload_id, key,
                                     lambda p, a: self.client.get_upload(p, a, bucket, upload_id, key))

    async def upload_part(self, bucket, key, upload_id, part_number, payload):
        """On the holder: a part sent again replaces the earlier one there, and the upload is assembled
        there. A forwarded part's body streams through (never held whole in memory)."""
        holder = await self._upload_holder(bucket, upload_id, key)
        if holder is None:
            with self._noting_store():
                return await self.local.upload_part(bucket, key, upload_id, part_number, payload)
        with self.cluster.balancer.track(holder, counted=False):  # outstanding, but not a placement
            return await self._at_holder(holder, bucket, upload_id, key, lambda p, a: self.client.upload_part(
                p, a, bucket, key, upload_id, part_number, payload))

    async def list_parts(self, bucket, key, upload_id):
        holder = await self._upload_holder(bucket, upload_id, key)
        if holder is None:
            return await self.local.list_parts(bucket, key, upload_id)
        return await self._at_holder(holder, bucket, upload_id, key,
                                     lambda p, a: self.client.list_parts(p, a, bucket, key, upload_id))

    async def abort_multipart(self, bucket, key, upload_id):
        holder = await self._upload_holder(bucket, upload_id, key)
        if holder is None:
            return await self.local.abort_multipart(bucket, key, upload_id)
        await self._at_holder(holder, bucket, upload_id, key,
                              lambda p, a: self.client.abort_multipart(p, a, bucket, key, upload_id))
        self.locations.forget(MULTIPART_BUCKET, upload_record(bucket, upload_id))

    async def complete_multipart(self, bucket, key, upload_id, parts, expected_checksums=None):
        """Assembled on the holder, which stores the object and retires older copies of the key."""
        self.locations.forget(bucket, key)
        holder = await self._upload_holder(bucket, upload_id, key)
        if holder is None:
            return await self.complete_here(bucket, key, upload_id, parts, expected_checksums, counted=True)
        with self.cluster.balancer.track(holder):  # the object's placement (its parts were not)
            info = await self._at_holder(holder, bucket, upload_id, key, lambda p, a: self.client.complete_multipart(
                p, a, bucket, key, upload_id, parts, expected_checksums))
        self.locations.forget(MULTIPART_BUCKET, upload_record(bucket, upload_id))
        self.locations.forget(bucket, key)
        return info

    async def complete_here(self, bucket, key, upload_id, parts, expected_checksums=None, counted=False):
        """Complete an upload this node holds (also for a peer that forwarded the request: ``counted``
        False, the sender counted the placement) and retire older copies of the key on the others."""
        if self.local is None:
            raise errors.NoSuchUpload(UploadId=upload_id)
        self.locations.forget(bucket, key)
        options = {}
        if expected_checksums:
            require_completion_checksums(self.local)
            options["expected_checksums"] = expected_checksums
        with self.cluster.balancer.track(self.cluster.node_id, counted=counted), self._noting_store():
            info = await self.local.complete_multipart(bucket, key, upload_id, parts, **options)
        await self._retire_older_copies(bucket, key, info, self.cluster.node_id)
        return info

    async def list_uploads(self, bucket, prefix=""):
        """The unfinished uploads of every storing node, in S3's order (key, then upload ID).

        A node that cannot be asked is left out with a warning, as a LIST leaves it out; a 503 only
        when no node that answered holds the bucket and one could not be asked. On shared storage
        this node's own list covers the nodes on the share.
        """
        lists: list[list] = []
        answered: list[str] = []
        unreachable: list[str] = []
        peers = self.cluster.peers()
        if self.local is not None:
            try:
                lists.append(await self.local.list_uploads(bucket, prefix))
            except errors.NoSuchBucket:
                pass
            answered.append(self.cluster.node_id)
            if self.local.capabilities.shared:
                peers = {p: a for p, a in peers.items() if not self.cluster.on_shared_storage(p)}
        answers, _ = await self._everywhere(lambda p, a: self.client.list_uploads(p, a, bucket, prefix), peers)
        for peer, result in answers.items():
            if isinstance(result, list):
                lists.append(result)
                answered.append(peer)
            elif isinstance(result, errors.NoSuchBucket):
                answered.append(peer)
            else:
                if not isinstance(result, PeerUnreachable):
                    log.info("uploads of %s on %s: %s", bucket, peer, getattr(result, "message", result))
                unreachable.append(peer)
        unreachable = self._share_covered(answered, unreachable)
        if not lists:
            if unreachable:
                raise unreachable_error(f"The unfinished multipart uploads of bucket {bucket!r}",
                                        self._named(unreachable, answers))
            if self.local is None and not answers:
                raise errors.ServiceUnavailable("this proxy knows no storing node yet (check the registry)")
            raise errors.NoSuchBucket(BucketName=bucket)
        if unreachable and self.cluster.settings.strict_listings:
            raise listing_unreachable_error(f"The unfinished multipart uploads of bucket {bucket!r}",
                                            self._named(unreachable, answers))
        if unreachable:
            log.warning("listing the uploads of %s without unreachable nodes %s", bucket,
                        ", ".join(sorted(unreachable)))
        merged = {upload.upload_id: upload for uploads in lists for upload in uploads}
        return sorted(merged.values(), key=lambda u: (u.key.encode(), u.upload_id))
