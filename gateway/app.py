"""create_app(settings): the whole gateway as one ASGI app.

Health and admin paths go to a small FastAPI app; everything else is the S3
API. Nothing is module-level, so tests can run several gateways in one process.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI

from .api import admin, metrics
from .api.local_reads import LocalReadServer
from .api.peer import PeerApp, admin_router as cluster_admin_router
from .api.s3.app import QUIET_ABORTS, S3App
from .config import Settings
from .services.objects import ObjectService

log = logging.getLogger(__name__)
HEALTH_PATHS = frozenset({"/healthz", "/readyz"})  # these two exact paths: buckets may start with the words


def _is_admin(path: str, method: str) -> bool:
    """The admin app's requests: GET or HEAD of a health path (another method is S3's, which refuses
    the two names as buckets), and /_admin/ (no bucket name has an underscore)."""
    return (path in HEALTH_PATHS and method in ("GET", "HEAD")) or path.startswith("/_admin/")


class GatewayApp:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.service = ObjectService.from_settings(settings)
        self.s3 = S3App(self.service, settings)
        self.admin = FastAPI(title="cv-gateway admin", docs_url=None, redoc_url=None, openapi_url=None)
        self.admin.include_router(admin.router)
        self.admin.include_router(cluster_admin_router)
        self.admin.include_router(metrics.router)
        self.peer = PeerApp(self.service, self.s3)  # /_cluster/v1: internal routes between cluster nodes
        self.admin.state.service = self.service
        self.admin.state.gateway = self
        self.fast_reads = 0  # plain reads answered below ASGI (gateway/api/protocol.py), for /metrics
        self.startup_error: str | None = None  # why the lifespan start-up failed (gateway serve prints it)
        self.admin.state.settings = settings
        self.local_reads: LocalReadServer | None = None  # --local-socket (gateway/api/local_reads.py)

    async def _start_local_reads(self) -> None:
        path = self.settings.local_socket
        if path is None:
            return
        if self.service.role == "proxy":
            log.warning("--local-socket is ignored on a proxy node: it stores no objects to read locally")
            return
        cluster = self.service.cluster
        self.local_reads = LocalReadServer(str(path), self.service.local_backend_for,
                                           cluster.reads_held if cluster is not None else lambda: False)
        await self.local_reads.start()

    def fast_answer(self, scope):
        """For a plain object read, the coroutine that answers it (status, headers, body), which
        the HTTP front end runs below ASGI (gateway/api/protocol.py); None: it goes through
        __call__. Plain reads: S3 GET/HEAD of an object without body or sub-resource
        (S3App.is_plain_read) and the peer route's object GET/HEAD, on a backend whose reads can
        start outside a task (Backend.eager_reads)."""
        path = scope["path"]
        if path.startswith("/_cluster/"):
            return self.peer.fast_answer(scope)
        if _is_admin(path, scope["method"]) or _is_scrape(scope):
            return None
        req = self.s3.new_request(scope)
        if not self.s3.is_plain_read(req) or not self.service.backend_for(req.bucket).eager_reads:
            return None
        return self.s3.answer_read(req, forward=True)  # the front end passes a Forward through

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            if _is_admin(path, scope["method"]) or _is_scrape(scope):
                await self.admin(scope, receive, send)
            elif path.startswith("/_cluster/"):
                await self.peer(scope, receive, send)
            else:
                await self.s3(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.service.start()
                    await self._start_local_reads()
                except Exception as exc:  # reported by the server, which then exits
                    log.error("start-up failed: %s", exc)
                    self.startup_error = str(exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                # After the server configured its logging (uvicorn.Config does, with dictConfig).
                logging.getLogger("uvicorn.error").addFilter(QUIET_ABORTS)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.local_reads is not None:
                    await self.local_reads.close()
                await self.service.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _is_scrape(scope) -> bool:
    """A Prometheus scrape of /metrics: a GET without query or Authorization header.

    Anything else on /metrics is S3 (the bucket "metrics"); /_admin/metrics is never ambiguous.
    """
    return (scope["path"] == "/metrics" and scope["method"] == "GET" and not scope.get("query_string")
            and not any(name == b"authorization" for name, _ in scope["headers"]))


def create_app(settings: Settings) -> GatewayApp:
    return GatewayApp(settings)
