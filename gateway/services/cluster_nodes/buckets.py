"""Buckets in a cluster: created and deleted on every storing node, listed from all of them."""

from __future__ import annotations

import logging
from typing import Any

from ... import errors
from ...backend import Backend, BucketInfo, ListPage
from ...cluster.relay import PeerUnreachable
from .asking import PeerAsking
from .unreachable import bucket_unreachable_error, listing_unreachable_error, unreachable_error

log = logging.getLogger("gateway.cluster")


class Buckets(PeerAsking):
    """Mixed into ClusterNode (node.py)."""

    # Buckets: created and deleted on every storing node -------------------------------

    async def create_bucket(self, bucket: str) -> None:
        if self.local is not None:
            await self.local.create_bucket(bucket)
        answers, unreachable = await self._everywhere(lambda p, a: self.client.bucket(p, a, "PUT", bucket))
        if self.local is None:
            if not answers:  # a proxy that knows no storing node: it would have made the bucket nowhere
                raise errors.ServiceUnavailable("this proxy knows no storing node yet (check the registry)")
            if unreachable and len(unreachable) == len(answers):
                raise unreachable_error(f"Bucket {bucket!r}", self._named(unreachable, answers))
            if answers and all(isinstance(r, (errors.BucketAlreadyOwnedByYou, PeerUnreachable))
                               for r in answers.values()):
                raise errors.BucketAlreadyOwnedByYou(BucketName=bucket)
        if unreachable:
            log.warning("bucket %s not created on unreachable nodes %s (they create it on their first write)",
                        bucket, ", ".join(unreachable))

    async def delete_bucket(self, bucket: str) -> None:
        """Delete the bucket on every storing node, or answer why not; never a success while a node
        that may hold it (and its objects) could not be asked.

        First every storing node is asked whether it holds the bucket and whether it is empty there
        (a one-key listing of its own storage): an object on any node that answered is 409
        BucketNotEmpty; a node that could not be asked is a 503 with nothing changed (it may hold
        objects, and a bucket deleted elsewhere would come back with them). Only when every node
        answered are the bucket's unfinished uploads discarded and the bucket deleted on the nodes
        that hold it. A node that fails in between keeps its copy: 503, and the retry, which finds
        the bucket gone on the others, deletes it there. On shared storage the nodes on the share
        see one tree: one answer from the share stands for all of them.
        """
        holders, unreachable = await self._bucket_states(bucket)
        if any(state == "objects" for state in holders.values()):
            raise errors.BucketNotEmpty(BucketName=bucket)
        if unreachable:
            raise bucket_unreachable_error(bucket, unreachable, "Nothing was deleted")
        if not holders:
            raise errors.NoSuchBucket(BucketName=bucket)
        try:
            await Backend.discard_uploads(self, bucket)  # while nothing else is deleted yet
        except errors.ServiceUnavailable as exc:
            log.warning("bucket %s not deleted: discarding its unfinished uploads failed: %s", bucket, exc.message)
            raise bucket_unreachable_error(bucket, [], "Nothing was deleted but some of its unfinished multipart "
                                                       "uploads") from None
        me = self.cluster.node_id
        failed: list[str] = []
        deleted: list[str] = []
        not_empty = False
        if me in holders:
            try:
                await self.local.delete_bucket(bucket)
                deleted.append(me)
            except errors.NoSuchBucket:
                deleted.append(me)
            except errors.BucketNotEmpty:  # an object written since the check
                not_empty = True
            except errors.ServiceUnavailable as exc:
                log.warning("bucket %s: this node's storage failed: %s", bucket, exc.message)
                failed.append(me)
        peers = self.cluster.peers()
        targets = {p: peers[p] for p in holders if p != me and p in peers}
        answers, _ = await self._everywhere(lambda p, a: self.client.bucket(p, a, "DELETE", bucket), targets)
        for peer, result in answers.items():
            if isinstance(result, errors.BucketNotEmpty):
                not_empty = True
            elif result is None or isinstance(result, errors.NoSuchBucket):
                deleted.append(peer)
            else:
                failed.append(peer)
        failed = self._share_covered(deleted, failed)  # another node on the share removed the one directory
        if not_empty:
            raise errors.BucketNotEmpty(BucketName=bucket)
        if failed:
            log.warning("bucket %s deleted except on %s, which failed during the delete (a retry finishes it)",
                        bucket, ", ".join(failed))
            raise bucket_unreachable_error(bucket, failed, "It was deleted on the other servers; retry to finish")
        await self.cluster.tell_bucket_deleted(bucket)

    def bucket_deleted(self, bucket: str) -> None:
        """Another node deleted the bucket (Cluster.tell_bucket_deleted); a proxy forgets that it saw it."""

    async def _bucket_states(self, bucket: str) -> tuple[dict[str, str], list[str]]:
        """Ask every storing node (this one too) about ``bucket`` on its own storage.

        Return ({node: "empty" or "objects"} for the nodes that hold it, the nodes that could not be
        asked). A node on shared storage that could not be asked is not counted as unreachable when
        another node on the share answered: it would have listed the same files.
        """
        me = self.cluster.node_id
        states: dict[str, str] = {}
        unreachable: list[str] = []
        answered: list[str] = []

        def record(node: str, result: Any) -> None:
            if isinstance(result, ListPage):
                states[node] = "objects" if result.objects or result.common_prefixes else "empty"
            elif not isinstance(result, errors.NoSuchBucket):  # no answer, a failed storage, a broken peer
                if not isinstance(result, PeerUnreachable):
                    log.info("bucket %s on %s: %s", bucket, node, getattr(result, "message", result))
                unreachable.append(node)
                return
            answered.append(node)

        peers = self.cluster.peers()
        local_shared = self.local is not None and self.local.capabilities.shared
        if local_shared:
            # This node sees the share's files: ask only the nodes with storage of their own.
            peers = {p: a for p, a in peers.items() if not self.cluster.on_shared_storage(p)}
        if self.local is not None:
            try:
                record(me, await self.local.list(bucket, max_keys=1))
            except errors.NoSuchBucket as exc:
                record(me, exc)
            # Its own storage failing (a share unmounted here) is this node's 503, which says what to do.
        answers, _ = await self._everywhere(lambda p, a: self.client.list(p, a, bucket, "", "", "", 1), peers)
        for peer, result in answers.items():
            record(peer, result)
        return states, self._share_covered(answered, unreachable)

    async def discard_uploads(self, bucket: str) -> None:
        """After delete_bucket, which discarded the uploads before deleting the bucket: only an upload
        begun in between is left. A node that fails now is logged, not answered with a 503 about the
        gateway's internal bucket for a bucket that is gone (and a retry would be NoSuchBucket)."""
        try:
            await super().discard_uploads(bucket)
        except errors.ServiceUnavailable as exc:
            log.warning("bucket %s deleted; unfinished uploads begun during the delete may be left: %s",
                        bucket, exc.message)

    async def head_bucket(self, bucket: str) -> BucketInfo:
        if self.local is not None:
            try:
                return await self.local.head_bucket(bucket)
            except errors.NoSuchBucket:
                pass
        # One node that has the bucket settles it (a PUT through a proxy checks the bucket first).
        answers, unreachable = await self._everywhere(lambda p, a: self.client.bucket(p, a, "HEAD", bucket),
                                                      enough=lambda r: r is None)
        if any(r is None for r in answers.values()):
            return BucketInfo(bucket, 0.0)
        if self.local is not None:
            answers[self.cluster.node_id] = errors.NoSuchBucket()
        unreachable = self._share_covered(
            [p for p, r in answers.items() if isinstance(r, errors.NoSuchBucket)], unreachable)
        if unreachable:  # it may be there: never a 404 a client takes as final
            raise unreachable_error(f"Bucket {bucket!r}", self._named(unreachable, answers))
        raise errors.NoSuchBucket(BucketName=bucket)

    async def list_buckets(self, whole: bool | None = None) -> list[BucketInfo]:
        """The union of every storing node's buckets, sorted by name, each with its earliest creation date.

        A node that cannot be asked is left out (logged as a warning), as a LIST leaves it out: a
        bucket only it holds is missing from the answer until it is back; with ``whole`` (by default
        ``strict_listings``) that is a 503 instead. A 503 always when no storing node answered. On
        shared storage this node's own list covers the nodes on the share; this node's own storage
        failing is its 503, as before.
        """
        whole = self.cluster.settings.strict_listings if whole is None else whole
        lists: list[list[BucketInfo]] = []
        unreachable: list[str] = []
        peers = self.cluster.peers()
        if self.local is not None:
            # This node's own storage failing (a share unmounted here) stays its 503, which says what to do.
            lists.append(await self.local.list_buckets())
            if self.local.capabilities.shared:
                peers = {p: a for p, a in peers.items() if not self.cluster.on_shared_storage(p)}
        answers, _ = await self._everywhere(lambda p, a: self.client.list_buckets(p, a), peers)
        for peer, result in answers.items():
            if isinstance(result, list):
                lists.append(result)
            else:
                unreachable.append(peer)
        if not lists:
            if not unreachable:  # a proxy that knows no storing node
                raise errors.ServiceUnavailable("this proxy knows no storing node yet (check the registry)")
            raise unreachable_error("The bucket list", self._named(unreachable, answers))
        unreachable = self._share_covered([p for p, r in answers.items() if isinstance(r, list)], unreachable)
        if unreachable and whole:
            raise listing_unreachable_error("The buckets", self._named(unreachable, answers))
        if unreachable:
            log.warning("listing buckets without unreachable nodes %s", ", ".join(sorted(unreachable)))
        earliest: dict[str, BucketInfo] = {}
        for buckets in lists:
            for info in buckets:
                if info.name.startswith("."):
                    continue
                known = earliest.get(info.name)
                if known is None or info.created < known.created:
                    earliest[info.name] = info
        return [earliest[name] for name in sorted(earliest)]
