"""The gateway under test: a real ``gateway serve`` process pinned to the server core."""

from __future__ import annotations

from gateway.testing.server import GatewayProcess

from .procs import SERVER_CORE, pinned


class PinnedGateway(GatewayProcess):
    """``gateway serve`` as users start it (uvloop + httptools, authentication on, no access log),
    under taskset so it and every thread it starts run on the server core only."""

    label = "gateway"

    def command(self) -> list[str]:
        return pinned(SERVER_CORE, super().command() + ["--log-level", "warning", "--no-access-log"])

    def pids(self) -> list[int]:
        return [self.process.pid]  # taskset execs the command: same pid
