"""ObjectService: what this node does with an object request.

Routes buckets to backend instances and fires the on_* plugin events. The
cluster issue adds roles here (relay, proxy, load balancing), so the S3
handlers never need to know which node they run on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from .. import errors
from ..backend import Backend, BucketInfo, ObjectInfo, ObjectMeta
from ..keyed_locks import KeyedLocks
from ..plugins import backend_classes, get_plugin_manager
from . import pending
from .upload_reaper import UploadReaper

log = logging.getLogger(__name__)


class ObjectService:
    """:param cluster: this node's gateway.cluster.membership.Cluster, or None on a stand-alone node.

    ``backends`` are what the S3 API uses; on a cluster node they become
    role-specific wrappers at start (services/cluster_nodes/), while
    ``local_backends`` stay this node's own storage, which the peer routes serve.
    """

    def __init__(self, backends: dict[str, Backend], bucket_routes: dict[str, str], default_backend: str,
                 cluster=None):
        self.backends = backends
        self.local_backends = dict(backends)
        self.bucket_routes = bucket_routes
        self.default_name = default_backend
        self.default = backends[default_backend]
        self.cluster = cluster
        self._hooks = get_plugin_manager().hook
        self.from_data_dir = False  # the one backend is the default local one on --data-dir (from_settings)
        # (bucket, key) -> [lock, users]: conditional PUTs of one key through this node run one at a time.
        self._conditional = KeyedLocks()  # (bucket, key) -> the conditional write holding it
        self.multipart_expiry = 0.0  # from_settings sets the configured one; 0: unfinished uploads stay
        self.reaper: UploadReaper | None = None
        self._starting: dict[str, asyncio.Task] = {}  # backends whose store did not answer at start (_start_later)

    @classmethod
    def from_settings(cls, settings) -> "ObjectService":
        """Create every configured backend now, so a bad backend config fails at start-up."""
        classes = backend_classes()
        backends = {}
        for name, config in settings.backend_configs().items():
            options = dict(config)
            kind = options.pop("type", None)
            if kind not in classes:
                known = ", ".join(sorted(classes)) or "none"
                raise ValueError(f"backends.{name}.type: unknown backend type {kind!r} (installed: {known})")
            unknown = _unknown_options(classes[kind], options)
            if unknown:  # as Backend.__init__ says for the backends that pass their options on to it
                where = ("docs/backends.md" if classes[kind].__module__.startswith("gateway_plugins.")
                         else f"the documentation of the plugin that provides {kind!r} (`gateway plugins list`)")
                raise ValueError(f"backends.{name}: unknown option{'s' if len(unknown) > 1 else ''} "
                                 f"{', '.join(unknown)} (check the spelling against {where})")
            try:
                backend = classes[kind](name=name, **options)
            except TypeError as exc:
                raise ValueError(f"backends.{name}: {exc}") from None
            except ValueError:
                raise  # a setting the backend refuses: its message names it
            except Exception as exc:  # a fault in the backend's code, not in the settings: name it all the same
                raise ValueError(f"backend {name!r} (type {kind!r}) could not be created: {type(exc).__name__}: "
                                 f"{exc}; this is a fault of the plugin that provides {kind!r} (`gateway plugins "
                                 "list` names it): report it there, or configure another backend") from None
            backend.min_part_size = settings.min_part_size
            backends[name] = backend
        cluster = None
        if settings.role is not None or settings.registry is not None:
            from ..cluster.membership import Cluster

            roots = [b.root for b in backends.values() if isinstance(getattr(b, "root", None), str)]
            shared = bool(backends) and all(b.capabilities.shared for b in backends.values())
            cluster = Cluster(settings, storage_roots=roots, shared_storage=shared)
        service = cls(backends, dict(settings.buckets), settings.default_backend, cluster)
        service.from_data_dir = not settings.backends
        service.multipart_expiry = settings.multipart_expiry
        return service

    @property
    def role(self) -> str | None:
        return self.cluster.role if self.cluster else None

    def check_writes_taken(self) -> None:
        """Raise the 503 of a write to a node that `cluster leave` removed while it runs (what it stored
        would be found through no other node: it was 200 while every other node answered 404)."""
        if self.cluster is not None:
            removed = self.cluster.removed_error()
            if removed is not None:
                raise removed

    async def start(self) -> None:
        if self.cluster is not None:
            await self.cluster.start()  # decides the role when none was configured
        if self.role == "proxy":
            self.local_backends = {}  # a proxy keeps nothing of its own
        for name, backend in list(self.local_backends.items()):
            try:
                await backend.start()
            except errors.BackendUnreachable as exc:  # it may answer later: start without it (services/pending.py)
                self._start_later(name, backend, exc.message)
            except ValueError as exc:  # the backend's own words (built-ins name themselves and the setting)
                if self.from_data_dir:  # the operator never named a backend: name the setting they did give
                    raise ValueError(f"{exc} (set by --data-dir, GATEWAY_DATA_DIR)") from None
                raise
            except Exception as exc:
                # A plugin's start() that let its library's exception through: serve printed only
                # "error: [Errno 111] Connection refused", naming no backend. The traceback is for its author.
                log.error("backend %r (%s) failed to start", name, type(backend).__name__, exc_info=exc)
                raise ValueError(f"backend {name!r} ({type(backend).__name__}) could not start: "
                                 f"{type(exc).__name__}: {exc}; the traceback is in the log above") from None
        if self.cluster is not None:
            for name in self.backends:
                self._install(self.role, name)
            self.cluster.role_listeners.append(self._role_changed)
            self.cluster.pending_backends = lambda: [
                name for name, backend in self.local_backends.items() if isinstance(backend, pending.PendingBackend)]
            if self.local_backends:
                self.cluster.drop_older = self._drop_older
                self.cluster.check_own_store = lambda name: self.local_backends[name].check_writable()
                await self._apply_retirements()
        self.reaper = UploadReaper(self.local_backends, self.multipart_expiry)
        self.reaper.start()

    def _start_later(self, name: str, backend: Backend, reason: str) -> None:
        """Serve 503s for ``backend`` (PendingBackend) and try its start() again until it succeeds."""
        log.warning("%s; starting without it: its buckets answer 503 until it answers (tried again in %g s, "
                    "then every %g s at most)", reason, pending.RETRY_FIRST, pending.RETRY_MAX)
        stand_in = pending.PendingBackend(backend, reason)
        self.local_backends[name] = stand_in
        self._install(self.role, name)
        task = asyncio.get_running_loop().create_task(self._retry_start(name, backend, stand_in))
        self._starting[name] = task

    async def _retry_start(self, name: str, backend: Backend, stand_in: pending.PendingBackend) -> None:
        for delay in pending.retry_delays():
            await asyncio.sleep(delay)
            try:
                await backend.start()
            except Exception as exc:  # noqa: BLE001 - also a plugin's start() that let its library's exception through
                # A store coming back may answer before all of it is there (a share not yet exported):
                # anything its start says now is worth another try, said at each change.
                reason = getattr(exc, "message", None) or (
                    str(exc) if isinstance(exc, ValueError) else f"backend {name!r}: {type(exc).__name__}: {exc}")
                if reason != stand_in.reason:
                    log.warning("backend %r still cannot start: %s", name, reason)
                    stand_in.reason = reason
                continue
            break
        self._starting.pop(name, None)  # (close() cancels this task: a closed service never gets here)
        if self.cluster is not None and self.role != "proxy":
            # What other nodes replaced while this storage was away, dropped before it serves anything
            # (to clients or to peers), as at start-up: it must never serve an outdated copy.
            started = {**self.local_backends, name: backend}
            await self._apply_retirements(lambda item: self._drop_older(item, started))
        self.local_backends[name] = backend
        self._install(self.role, name)
        log.warning("backend %r answers now; its buckets are served again", name)

    def _install(self, role: str | None, name: str) -> None:
        """Put backend ``name`` in ``backends``: this node's own, or on a cluster node its role's wrapper."""
        if self.cluster is not None:
            from .cluster_nodes import node_backend

            self.backends[name] = node_backend(role, self.local_backends.get(name), self.cluster, name)
        else:
            self.backends[name] = self.local_backends[name]
        if name == self.default_name:
            self.default = self.backends[name]

    def _role_changed(self, old: str, new: str) -> None:
        """After a failover: serve with the new role's behaviour (placement and read balancing
        on a primary). Requests under way finish with the old one; both share the storage."""
        for name in self.backends:
            self._install(new, name)
        log.warning("this node is %s now (was %s)", new, old)

    async def _apply_retirements(self, drop_older=None) -> None:
        """Before serving: drop the older copies of objects that other nodes replaced while this one
        was down (gateway/cluster/retirements.py), so it never serves an outdated version."""
        from ..cluster.registry import RegistryError

        try:
            await self.cluster.apply_retirements(everything=True, drop_older=drop_older)
        except RegistryError as exc:  # the heartbeat rounds retry; the node must still come up
            log.warning("could not read the retirements for this node from the registry (%s); they are "
                        "applied once it answers, and until then this node may serve outdated copies", exc)

    async def _drop_older(self, item, backends: dict[str, Backend] | None = None) -> None:
        """Apply one retirement (a Retirement) to this node's storage (``backends``: instead of local_backends)."""
        from ..cluster.versions import supersede_local

        backend = (backends or self.local_backends).get(self.bucket_routes.get(item.bucket, self.default_name))
        if backend is not None:
            await supersede_local(backend, item.bucket, item.key, item.last_modified, item.etag)
            # (A deletion that could not reach this node: a copy dropped a moment before is not listed.)
            self.cluster.superseded.forget(item.bucket, item.key)
            self.cluster.locations.forget(item.bucket, item.key)

    async def close(self) -> None:
        for task in self._starting.values():
            task.cancel()
        self._starting.clear()
        if self.reaper is not None:
            await self.reaper.close()
        for backend in {*self.backends.values(), *self.local_backends.values()}:
            try:
                await backend.close()
            except Exception:  # closing must not hide the others
                log.exception("closing backend %s failed", backend.name)
        if self.cluster is not None:
            await self.cluster.close()

    def local_backend_for(self, bucket: str) -> Backend | None:
        """This node's own storage for ``bucket`` (what peer routes serve); None on a proxy."""
        name = self.bucket_routes.get(bucket, self.default_name)
        return self.local_backends.get(name)

    def backend_for(self, bucket: str) -> Backend:
        name = self.bucket_routes.get(bucket)
        return self.backends[name] if name else self.default

    async def list_buckets(self, whole: bool | None = None) -> list[BucketInfo]:
        """Every bucket a request can reach: one a backend holds is listed only when the routing
        sends that name to that backend (a bucket another tool made on a backend that is routed only
        some names would otherwise be listed, then answer NoSuchBucket). ``whole``: for a cluster
        node's backends, whether a storing node that cannot be asked makes it a 503 (None: the
        ``strict_listings`` setting)."""
        seen: dict[str, BucketInfo] = {}
        for name, backend in self.backends.items():
            relaying = whole is not None and backend.forwards_reads  # a cluster node's (services/cluster_nodes)
            for info in await (backend.list_buckets(whole=whole) if relaying else backend.list_buckets()):
                if not info.name.startswith(".") and self.bucket_routes.get(info.name, self.default_name) == name:
                    seen.setdefault(info.name, info)
        return [seen[name] for name in sorted(seen)]

    def object_written(self, bucket: str, key: str, info: ObjectInfo) -> None:
        self._hooks.on_object_written(bucket=bucket, key=key, info=info)

    def object_deleted(self, bucket: str, key: str) -> None:
        self._hooks.on_object_deleted(bucket=bucket, key=key)

    async def copy(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str,
                   meta: ObjectMeta | None, checksum_algorithm: str | None = None) -> ObjectInfo:
        """Copy an object; ``meta`` None keeps the source's. ``checksum_algorithm`` (CopyObject's
        x-amz-checksum-algorithm): the copy gets that checksum, computed over the bytes as they are
        copied, instead of the source's (as on S3)."""
        source, target = self.backend_for(src_bucket), self.backend_for(dst_bucket)
        if source is target and checksum_algorithm is None:
            info = await target.copy(src_bucket, src_key, dst_bucket, dst_key, meta)
        else:
            await target.head_bucket(dst_bucket)
            from ..payload import Payload

            reader = await source.get(src_bucket, src_key)
            try:
                algorithms = tuple(reader.info.checksums)
                if checksum_algorithm is not None and checksum_algorithm not in algorithms:
                    algorithms = (checksum_algorithm,)
                payload = Payload(reader.chunks(), expected_size=reader.info.size, checksum_algorithms=algorithms,
                                  etag=reader.info.etag if "-" in reader.info.etag else None)
                info = await target.put(dst_bucket, dst_key, payload, meta or reader.info.meta)
            finally:
                reader.close()
        self.object_written(dst_bucket, dst_key, info)
        return info

    @contextlib.asynccontextmanager
    async def conditional_write(self, bucket: str, key: str):
        """Hold the key from a conditional write's check to the end of the write; yield ``confirm``,
        which the write runs right before it commits (Payload.check_at_end).

        Two If-None-Match: * PUTs racing then give one 200 and one 412, as on S3 (both used to
        succeed, and one write was lost): through this node by a per-key lock, through any node of
        a cluster by a lock in the registry as well (gateway/cluster/locks.py). Both waits together
        last at most locks.WAIT seconds, then 503 SlowDown.
        """
        from ..cluster import locks

        deadline = time.monotonic() + locks.WAIT
        async with self._conditional.hold((bucket, key), locks.WAIT, locks.busy):
            if self.cluster is None:
                yield locks.nothing_to_confirm
            else:
                async with self.cluster.locks.hold(f"{bucket}/{key}", wait=deadline - time.monotonic()) as confirm:
                    # The check that follows must see the cluster as it is now, not a cached miss:
                    # a proxy is not told of other nodes' writes and keeps "missing" for a second.
                    self.cluster.locations.forget(bucket, key)
                    yield confirm

    async def readiness(self) -> dict[str, str]:
        """backend name -> "ok" or the reason it cannot take writes."""
        status = {}
        for name, backend in self.backends.items():
            try:
                await backend.check_writable()
                status[name] = "ok"
            except errors.GatewayError as exc:
                status[name] = exc.message
            except OSError as exc:
                status[name] = f"{exc.strerror or exc}"
            except Exception as exc:  # a plugin's check that let its library's exception through: still an answer
                log.warning("backend %r: check_writable failed", name, exc_info=exc)
                status[name] = f"{type(exc).__name__}: {exc}"
        return status


def _unknown_options(cls, options: dict) -> list[str]:
    """The options a backend class's __init__ does not take. A class that takes **options hands
    the rest to Backend.__init__, which refuses them itself; one that names all of its options
    would otherwise fail with Python's "__init__() got an unexpected keyword argument"."""
    import inspect

    try:
        parameters = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return []
    return sorted(set(options) - set(parameters))
