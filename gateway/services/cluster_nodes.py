"""What a cluster node does with object requests, decided by its role in one place: :func:`node_backend`.

The S3 handlers call ``service.backend_for(bucket)`` as on a stand-alone
node; in a cluster that returns one of these wrappers, which implement the
Backend contract by combining this node's storage with its peers':

- primary:   local storage; new objects are placed on itself or a redundant
             node (power of two choices); misses are relayed.
- redundant: local storage; misses are relayed to the other storing nodes.
- proxy:     no storage; every request goes to the storing nodes.

Peers are asked on their /_cluster/v1 routes, which serve only their own
storage and never relay again, so no request can loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .. import errors
from ..backend import (
    MULTIPART_BUCKET,
    Backend,
    BucketInfo,
    ByteRange,
    ListPage,
    ObjectInfo,
    ObjectMeta,
    ObjectReader,
    is_upload_id,
    new_upload,
    require_completion_checksums,
    upload_record,
)
from ..cluster.balancer import READ_HANDOFF_MARGIN, release_on_close
from ..cluster.forward import Forward
from ..cluster.listing import merge_pages
from ..cluster.locations import NOWHERE
from ..cluster.membership import Cluster
from ..cluster.relay import PeerUnreachable
from ..cluster.versions import supersede_local
from ..eager import require_task
from ..payload import Payload
from .pending import PendingBackend

log = logging.getLogger("gateway.cluster")
BUCKET_MEMORY = 5.0  # seconds a proxy trusts that a bucket exists before writing into it
RETRY_AFTER = "5"  # seconds a client should wait when an object may be on an unreachable node
# A write whose store turns out full or failed, or whose node cannot be reached, is placed once more
# elsewhere if its body is at most this long: the body is kept while it is written (docs/cluster.md).
PLACE_AGAIN_BODY = 1 << 20


def node_backend(role: str, local: Backend | None, cluster: Cluster, name: str = "") -> Backend:
    """The Backend the S3 API uses on a node with ``role`` for the backend instance ``name``."""
    if role == "proxy":
        return ProxyNode(cluster, name)
    if local is None:
        raise ValueError(f"a {role} node needs local storage")
    if role == "primary":
        return PrimaryNode(local, cluster)
    return StoringNode(local, cluster)


STORAGE_FAILED = ": its storage failed"  # how a 503 names a node whose own store answered that it failed


def servers_down(nodes: list[str]) -> str:
    """How a 503 says which servers could not say: "cannot be reached now (r1, r2)", or "cannot answer
    now (r1: its storage failed, r2)" when one answered that its store failed (ClusterNode._named)."""
    verb = "cannot answer" if any(n.endswith(STORAGE_FAILED) for n in nodes) else "cannot be reached"
    return f"{verb} now ({', '.join(sorted(nodes))})"


def bucket_unreachable_error(bucket: str, nodes: list[str], done: str) -> errors.GatewayError:
    """DeleteBucket's 503: a server that may hold the bucket could not be asked or failed; ``done``
    says what was changed. Names only the client's bucket (never the gateway's internal ones)."""
    which = servers_down(nodes) if nodes else "cannot be reached now"
    error = errors.NodeUnreachable(
        f"Bucket {bucket!r} cannot be deleted now: a server that may hold it {which}. {done}; retry later.")
    error.headers["Retry-After"] = RETRY_AFTER
    return error


def write_unreachable_error(what: str, peer: str) -> errors.GatewayError:
    """A write's 503: the node it was sent to could not be reached (or failed) before it answered."""
    error = errors.NodeUnreachable(
        f"{what} could not be completed because node {peer} cannot be reached now. "
        "Retry later.")
    error.headers["Retry-After"] = RETRY_AFTER
    return error


def upload_name(upload_id: str, key: str | None) -> str:
    """A multipart upload as a client knows it: its ID and key (never the record's internal name)."""
    return f"Multipart upload {upload_id!r}" + (f" of key {key!r}" if key is not None else "")


def upload_unreachable_error(upload_id: str, key: str | None, peers: list[str]) -> errors.GatewayError:
    """The node holding an upload (or one that may hold it) cannot be reached: never a final 404."""
    error = errors.NodeUnreachable(
        f"{upload_name(upload_id, key)} is held by a server that {servers_down(peers)}; it is kept there: "
        "retry later.")
    error.headers["Retry-After"] = RETRY_AFTER
    return error


def unreachable_error(what: str, peers: list[str]) -> errors.GatewayError:
    error = errors.NodeUnreachable(
        f"{what} may be on a server that {servers_down(peers)}; retry later.")
    error.headers["Retry-After"] = RETRY_AFTER
    return error


class _Miss(Exception):
    """A peer answered that it does not have the object (``bucket`` says whether it has the bucket)."""

    def __init__(self, bucket: bool):
        self.bucket = bucket


class ClusterNode(Backend):
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
        self._storage_failure_logged = float("-inf")  # _local_failed says so once a minute

    # Asking peers ---------------------------------------------------------------

    async def _ask(self, peer: str, call: Callable[[str, str], Awaitable[Any]], address: str | None = None) -> Any:
        """Run ``call(peer, address)``; NoSuchKey/NoSuchBucket become _Miss, an unreachable peer PeerUnreachable.

        ``address``: the peer's, when the caller just looked it up (else it is looked up here).
        """
        if address is None:
            address = self.cluster.peers().get(peer)
        if address is None:
            raise PeerUnreachable(peer, "left the cluster")
        try:
            return await call(peer, address)
        except errors.NoSuchKey:
            raise _Miss(bucket=True) from None
        except errors.NoSuchBucket:
            raise _Miss(bucket=False) from None
        except (errors.ServiceUnavailable, errors.InternalError) as exc:
            # The peer answered but its storage failed: it could not say whether it has the object.
            raise PeerUnreachable(peer, exc.message,
                                  storage_failed=isinstance(exc, errors.BackendUnavailable)) from None

    async def _first_hit(self, peers: list[str], call, state: dict) -> tuple[str, Any] | None:
        """Ask ``peers`` in parallel; return (peer, result) of the first that has it, without waiting for the rest.

        ``state`` collects "unreachable" peers and whether any has the bucket.
        """
        if not peers:
            return None
        tasks = {asyncio.ensure_future(self._ask(p, call)): p for p in peers}
        pending = set(tasks)
        winner = None
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    peer = tasks[task]
                    try:
                        result = task.result()
                    except _Miss as miss:
                        state["bucket"] = state["bucket"] or miss.bucket
                        continue
                    except PeerUnreachable as exc:
                        state["unreachable"].append(peer)
                        state["why"][peer] = exc
                        log.info("relay: %s", exc)
                        continue
                    state["bucket"] = True
                    winner = task
                    return peer, result
            return None
        finally:
            # Everything but the answer we use: slower peers, and a second hit that finished at the same time.
            losers = {t for t in tasks if t is not winner}
            if losers:
                self._discard(losers)

    def _discard(self, tasks: set[asyncio.Task]) -> None:
        """Cancel slower answers we no longer need, closing any object they already opened."""
        for task in tasks:
            task.cancel()

        async def reap():
            for task in tasks:
                try:
                    result = await task
                except BaseException:  # noqa: BLE001 - cancelled or failed: nothing to close
                    continue
                if isinstance(result, ObjectReader):
                    result.close()

        self._in_background(reap())

    async def _find(self, bucket: str, key: str, call, bucket_seen: bool | None, operation: str,
                    local_failure: errors.GatewayError | None = None,
                    unreachable: Callable[[list[str]], errors.GatewayError] | None = None) -> Any:
        """Find the object on a peer: the cached node first, then healthy peers, then limited ones.

        Raise NoSuchKey only when every storing peer answered no, the 503
        ``unreachable_error`` when some could not be asked, and ``local_failure``
        (why this node's own storage could not be asked) when no peer has it.
        ``bucket_seen``: whether this node has the bucket, None when not known yet
        (then it is looked up only if no peer has the bucket either). ``unreachable(peers)``: the 503
        to raise instead of ``unreachable_error`` (one that names what the client asked for).
        """
        peers = self.cluster.peers()
        state: dict[str, Any] = {"unreachable": [], "why": {}, "bucket": bucket_seen}
        cached = self.locations.get(bucket, key)
        if cached == NOWHERE:
            raise errors.NoSuchKey(Key=key)
        asked: set[str] = set()
        if cached in peers:
            # The hot relay path: one known peer, asked directly (no tasks to schedule).
            asked.add(cached)
            try:
                result = await self._ask(cached, call, peers[cached])
                self.cluster.balancer.served_read(cached, operation)
                return result
            except _Miss as miss:
                state["bucket"] = state["bucket"] or miss.bucket
            except PeerUnreachable as exc:
                state["unreachable"].append(cached)
                state["why"][cached] = exc
                log.info("relay: %s", exc)
            self.locations.forget(bucket, key)
        healthy, limited = self.cluster.health.split(p for p in peers if p not in asked)
        for group in (healthy, limited):
            hit = await self._first_hit(group, call, state)
            if hit is not None:
                self.locations.found(bucket, key, hit[0])
                self.cluster.balancer.served_read(hit[0], operation)
                return hit[1]
        if state["unreachable"]:
            named = self._named(state["unreachable"], state["why"])
            raise unreachable(named) if unreachable is not None else unreachable_error(f"Object {key!r}", named)
        if local_failure is not None:
            raise local_failure
        if not state["bucket"] and not (bucket_seen is None and await self._has_local_bucket(bucket)):
            raise errors.NoSuchBucket(BucketName=bucket)
        self.locations.missing(bucket, key)
        raise errors.NoSuchKey(Key=key)

    async def _everywhere(self, call, peers: dict[str, str] | None = None,
                          enough: Callable[[Any], bool] | None = None) -> tuple[dict[str, Any], list[str]]:
        """Run ``call`` on every storing peer in parallel: ({peer: result or exception}, unreachable peers).

        ``enough(result)``: stop at the first result it accepts; the peers still asked are cancelled
        and left out of the answers (one that does not answer must not hold up what another settled).
        """
        peers = self.cluster.peers() if peers is None else peers

        async def one(peer: str, address: str):
            try:
                return await call(peer, address)
            except (PeerUnreachable, errors.GatewayError) as exc:
                return exc

        if enough is None:
            answers = dict(zip(peers, await asyncio.gather(*(one(p, a) for p, a in peers.items()))))
        else:
            answers = await self._until(enough, {asyncio.ensure_future(one(p, a)): p for p, a in peers.items()})
        unreachable = [p for p, r in answers.items() if isinstance(r, (PeerUnreachable, errors.ServiceUnavailable))]
        return answers, unreachable

    @staticmethod
    def _named(peers: list[str], answers: dict[str, Any]) -> list[str]:
        """``peers`` as a 503 names them: "r1: its storage failed" for one whose own store answered that
        it failed (a BackendUnavailable: its disk failing, its share unmounted), which is the server's
        disk to check, not the network."""
        def storage_failed(answer) -> bool:
            return isinstance(answer, errors.BackendUnavailable) or getattr(answer, "storage_failed", False)

        return [p + STORAGE_FAILED if storage_failed(answers.get(p)) else p for p in peers]

    @staticmethod
    async def _until(enough: Callable[[Any], bool], tasks: dict[asyncio.Task, str]) -> dict[str, Any]:
        """The results of ``tasks`` (task -> peer) by peer, up to the first one ``enough`` accepts."""
        answers: dict[str, Any] = {}
        pending = set(tasks)
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                answers.update((tasks[t], t.result()) for t in done)
                if any(enough(answers[tasks[t]]) for t in done):
                    break
        finally:
            for task in pending:
                task.cancel()
        return answers

    # Objects -----------------------------------------------------------------------

    async def get(self, bucket: str, key: str, byte_range: ByteRange | None = None,
                  forward: bool = False) -> ObjectReader | Forward:
        """``forward``: on a local miss of an object the location cache places on a peer, return a
        Forward instead of relaying (the front end passes the read through: cluster/forward.py)."""
        failure = None
        if self.local is not None:
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

    def _forward(self, bucket: str, key: str) -> Forward | None:
        """A Forward when the location cache names a peer that is known and answers well."""
        peer = self.locations.get(bucket, key)
        if peer:  # neither unknown (None) nor NOWHERE
            cluster = self.cluster
            node = cluster.nodes.get(peer)  # (not peers(): a dict built per call)
            if (node is not None and node.stores_objects and peer != cluster.node_id
                    and not cluster.health.limited(peer) and not self.client.lacks_read_route(peer)):
                return Forward(self, peer, node.address)
        return None

    def _noting_store(self):
        """Around a write to this node's own store: found full or failed, it takes no placed writes a while."""
        return self.cluster.noting_store(self.cluster.node_id, self.name)

    def _local_failed(self, exc: errors.GatewayError | OSError) -> errors.GatewayError:
        """This node's own storage could not answer (a share unmounted here, a failing disk): a read
        asks the peers anyway, as on a miss (a node whose share is mounted serves it), and answers
        this 503 only if none has the object: never a 404 for what this node could not look at.
        Said in the log once a minute, not once per read. An OSError counts when its errno says the
        filesystem failed (EIO, EROFS, ESTALE); any other is raised on (a bug or a full disk is not a
        reason to ask the peers)."""
        if isinstance(exc, OSError):
            failure = errors.storage_error(exc)
            if not isinstance(failure, errors.ServiceUnavailable):
                raise exc
            exc = failure
        now = time.monotonic()
        if now - self._storage_failure_logged >= 60:
            self._storage_failure_logged = now
            log.warning("this node's storage failed (%s): reads are answered by the peers", exc.message)
        return exc

    async def _has_local_bucket(self, bucket: str) -> bool:
        if self.local is None:
            return False
        try:
            await self.local.head_bucket(bucket)
        except errors.NoSuchBucket:
            return False
        return True

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
                if not (isinstance(exc, PeerUnreachable) or self.cluster.full.caused_by(exc)
                        or self.cluster.failed.caused_by(exc)):
                    raise
                tried.add(target)
                following = await self._placement(bucket, key, tried)
                again = payload.again() if following is not None and following not in tried else None
                if again is None:
                    if isinstance(exc, PeerUnreachable):
                        raise write_unreachable_error(what, exc.peer) from None
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
                kept = await supersede_local(self.local, bucket, key, info.last_modified, info.etag, own)
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

    def _share_covered(self, answered: list[str], unreachable: list[str]) -> list[str]:
        """``unreachable`` without the nodes on shared storage when a node on the share answered
        (one of ``answered``): it saw the files they would have answered with."""
        if any(self._on_shared_storage(n) for n in answered):
            return [n for n in unreachable if not self._on_shared_storage(n)]
        return unreachable

    def _on_shared_storage(self, node: str) -> bool:
        """Whether ``node`` (this one or a peer) serves from shared storage."""
        if node == self.cluster.node_id:
            return self.local is not None and self.local.capabilities.shared
        return self.cluster.on_shared_storage(node)

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

    def _in_background(self, coroutine) -> None:
        """Run ``coroutine`` on its own, kept referenced until it ends (the loop holds tasks weakly)."""
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _drop_outdated(self, bucket: str, key: str, holder: str, winner: ObjectInfo) -> None:
        """Two overwrites raced and another node kept the newer version ``winner``: the one on ``holder`` goes."""
        me = self.cluster.node_id
        self.locations.forget(bucket, key)
        log.info("%s/%s: a newer version was written concurrently; dropping the one on %s", bucket, key, holder)
        try:
            if holder == me:
                await supersede_local(self.local, bucket, key, winner.last_modified, winner.etag)
            else:
                await self.client.supersede(holder, self.cluster.peers()[holder], bucket, key, winner)
        except (PeerUnreachable, errors.GatewayError, KeyError) as exc:
            log.warning("could not drop the outdated %s/%s on %s: %s", bucket, key, holder, exc)

    async def delete(self, bucket: str, key: str) -> None:
        """Delete here and on every storing peer; 503 when the object may survive on an unreachable one."""
        self.locations.forget(bucket, key)
        existed = False
        bucket_seen = False
        if self.local is not None:
            try:
                existed = await self.local.exists(bucket, key)
                bucket_seen = True
                await self.local.delete(bucket, key)
            except errors.NoSuchBucket:
                pass
        answers, unreachable = await self._everywhere(lambda p, a: self.client.delete(p, a, bucket, key))
        if not bucket.startswith("."):  # not the gateway's own bookkeeping (a finished upload's record)
            if existed:
                self.cluster.balancer.deleted_on(self.cluster.node_id)
            for peer in (p for p, r in answers.items() if r is True):
                self.cluster.balancer.deleted_on(peer)
        existed = existed or any(r is True for r in answers.values())
        bucket_seen = bucket_seen or any(not isinstance(r, (errors.NoSuchBucket, Exception)) for r in answers.values())
        self.locations.forget(bucket, key)
        if unreachable and not existed:
            raise unreachable_error(f"Object {key!r}", self._named(unreachable, answers))
        if not bucket_seen and not unreachable:
            raise errors.NoSuchBucket(BucketName=bucket)

    async def list(self, bucket: str, prefix: str = "", delimiter: str = "", start_after: str = "",
                   max_keys: int = 1000) -> ListPage:
        """This node's listing merged with every storing peer's (a peer that cannot be reached is left out).

        On shared storage every node lists the same tree: the local listing is the whole answer.
        The merged page carries metadata (``ListPage.metadata``) when every page it merged did.
        """
        if self.local is not None and self.local.capabilities.shared:
            return await self.local.list(bucket, prefix, delimiter, start_after, max_keys)
        pages = []
        bucket_seen = False
        if self.local is not None:
            try:
                page = await self.local.list(bucket, prefix, delimiter, start_after, max_keys)
                if page.metadata is None:
                    page.metadata = self.local.capabilities.listing_metadata
                pages.append(page)
                bucket_seen = True
            except errors.NoSuchBucket:
                pass
        answers, unreachable = await self._everywhere(
            lambda p, a: self.client.list(p, a, bucket, prefix, delimiter, start_after, max_keys))
        for result in answers.values():
            if isinstance(result, ListPage):
                pages.append(result)
                bucket_seen = True
        unreachable = self._share_covered(
            [p for p, r in answers.items() if isinstance(r, (ListPage, errors.NoSuchBucket))], unreachable)
        if unreachable:
            log.warning("listing %s without unreachable nodes %s", bucket, ", ".join(unreachable))
        if not bucket_seen:
            if unreachable:
                # Never the gateway's internal bucket in a client's message (uploads live in one).
                what = "Unfinished multipart uploads" if bucket.startswith(".") else f"Bucket {bucket!r}"
                raise unreachable_error(what, self._named(unreachable, answers))
            raise errors.NoSuchBucket(BucketName=bucket)
        merged = merge_pages(pages, max_keys)
        merged.metadata = all(page.metadata for page in pages)
        return merged

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
        if unreachable:
            log.warning("listing the uploads of %s without unreachable nodes %s", bucket,
                        ", ".join(sorted(unreachable)))
        merged = {upload.upload_id: upload for uploads in lists for upload in uploads}
        return sorted(merged.values(), key=lambda u: (u.key.encode(), u.upload_id))

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

    async def list_buckets(self) -> list[BucketInfo]:
        """The union of every storing node's buckets, sorted by name, each with its earliest creation date.

        A node that cannot be asked is left out (logged as a warning), as a LIST leaves it out: a
        bucket only it holds is missing from the answer until it is back. A 503 only when no
        storing node answered. On shared storage this node's own list covers the nodes on the share;
        this node's own storage failing is its 503, as before.
        """
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

    async def check_writable(self) -> None:
        if self.local is not None:
            await self.local.check_writable()
        elif not self.cluster.peers():
            raise errors.ServiceUnavailable("this proxy knows no storing node yet (check the registry)")

    async def start(self) -> None:
        """The wrapped backend is started by the service (a proxy starts none)."""

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()


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
            try:
                await self.local.create_bucket(bucket)
            except errors.BucketAlreadyOwnedByYou:
                pass

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
