"""How a cluster node asks its peers, and looks at its own store: one peer, the first that has an
object, or every storing peer; the answers it could not get are named in its 503s."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ... import errors
from ...backend import Backend, ObjectReader
from ...cluster.locations import NOWHERE
from ...cluster.membership import Cluster
from ...cluster.relay import PeerUnreachable
from ...cluster.sometimes import Sometimes, since
from .unreachable import STORAGE_FAILED, unreachable_error

log = logging.getLogger("gateway.cluster")


class _Miss(Exception):
    """A peer answered that it does not have the object (``bucket`` says whether it has the bucket)."""

    def __init__(self, bucket: bool):
        self.bucket = bucket


class PeerAsking:
    """Mixed into ClusterNode (node.py), whose ``__init__`` sets what these methods use."""

    local: Backend | None  # this node's own store; None on a proxy
    cluster: Cluster
    client: Any  # cluster.client: the peer routes' client (cluster/relay.py)
    locations: Any  # cluster.locations: where objects were last found (cluster/locations.py)
    name: str
    _background: set[asyncio.Task]
    _storage_failure_said: Sometimes
    _unreachable_said: Sometimes

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
            raise PeerUnreachable(peer, exc.message, storage_failed=isinstance(exc, errors.BackendUnavailable),
                                  failed_answer=isinstance(exc, errors.InternalError)) from None

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
                        self._say_unreachable(peer, exc)
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
        asked_at = self.locations.clock()
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
                self._say_unreachable(cached, exc)
            self.locations.drop(bucket, key)
        healthy, limited = self.cluster.health.split(p for p in peers if p not in asked)
        for group in (healthy, limited):
            hit = await self._first_hit(group, call, state)
            if hit is not None:
                self.locations.found(bucket, key, hit[0])
                self.cluster.balancer.served_read(hit[0], operation)
                return hit[1]
        if state["unreachable"] and ((local_failure is None and self._on_shared_storage(self.cluster.node_id))
                                     or any(self.cluster.on_shared_storage(p) for p in peers
                                            if p not in state["unreachable"])):
            # The share answered (this node or a peer on it): a node on the share whose own mount of it
            # failed holds nothing it did not see. Every miss in the cluster was a 503 naming that node
            # for as long as its share was gone.
            state["unreachable"] = [p for p in state["unreachable"] if not (
                self.cluster.on_shared_storage(p) and getattr(state["why"].get(p), "storage_failed", False))]
        if state["unreachable"]:
            why = [state["why"].get(p) for p in state["unreachable"]]
            if all(getattr(exc, "failed_answer", False) for exc in why):
                # Every node that could not say answered 500 (a damaged stored copy): that answer, naming
                # the node, not a 503 "cannot be reached" a client would retry for ever.
                raise errors.InternalError(f"Object {key!r}: node {why[0].peer} holds it and failed to read it: "
                                           f"{why[0].reason}")
            named = self._named(state["unreachable"], state["why"])
            raise unreachable(named) if unreachable is not None else unreachable_error(f"Object {key!r}", named)
        if local_failure is not None:
            raise local_failure
        if not state["bucket"] and not (bucket_seen is None and await self._has_local_bucket(bucket)):
            raise errors.NoSuchBucket(BucketName=bucket)
        self.locations.missing(bucket, key, asked_at)
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

    # This node's own store ---------------------------------------------------------

    def _say_unreachable(self, peer: str, exc: PeerUnreachable) -> None:
        """A peer that could not be asked: said once a minute per peer, not once per read."""
        repeats = self._unreachable_said.due(peer)
        if repeats is not None:
            log.info("relay: %s%s", exc, since(repeats))

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
        if self._storage_failure_said.due("own storage") is not None:
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

    def _in_background(self, coroutine) -> None:
        """Run ``coroutine`` on its own, kept referenced until it ends (the loop holds tasks weakly)."""
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
