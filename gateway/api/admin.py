"""Health and admin endpoints (FastAPI: not on the hot path, so convenience wins)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .. import __version__
from ..plugins import plugin_records

router = APIRouter()


# HEAD too: curl -I, HAProxy's "option httpchk HEAD" and many uptime checkers probe with it.
@router.api_route("/healthz", methods=["GET", "HEAD"])
async def healthz() -> dict:
    """Liveness: the process answers."""
    return {"status": "ok", "version": __version__}


@router.api_route("/readyz", methods=["GET", "HEAD"])
async def readyz(request: Request) -> JSONResponse:
    """Readiness: every backend can take writes and the plugins are loaded."""
    backends = await request.app.state.service.readiness()
    ready = all(state == "ok" for state in backends.values())
    plugins = [r.name for r in plugin_records()]
    return JSONResponse({"ready": ready, "backends": backends, "plugins": plugins}, status_code=200 if ready else 503)


@router.get("/_admin/plugins")
async def plugins() -> list[dict]:
    """Loaded plugins with their versions and modules."""
    return [r.__dict__ for r in plugin_records()]
