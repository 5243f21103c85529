"""Run wrk (pinned to the client core) against one server and read its numbers back."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
from dataclasses import asdict, dataclass

from .procs import CLIENT_CORE, cpu_seconds, pinned

SCRIPT = os.path.join(os.path.dirname(__file__), "wrk.lua")


@dataclass
class Sample:
    """One timed round against one server."""

    requests: int
    seconds: float
    bytes: int
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors + non-2xx/3xx answers
    server_cpu_s: float  # CPU the server process(es) used during the round
    client_cpu_s: float  # CPU wrk used: near `seconds` means wrk, not the server, was the limit

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def bytes_per_s(self) -> float:
        return self.bytes / self.seconds

    @property
    def cpu_us_per_request(self) -> float:
        return self.server_cpu_s / self.requests * 1e6 if self.requests else float("nan")

    def as_dict(self) -> dict:
        return {**asdict(self), "rps": self.rps, "bytes_per_s": self.bytes_per_s,
                "cpu_us_per_request": self.cpu_us_per_request}


def run(port: int, requests_file: str, *, seconds: float, connections: int, server_pids: list[int],
        body_file: str | None = None, timeout_s: float = 5.0) -> Sample:
    """One wrk round of ``seconds``; the server's CPU time is read from /proc before and after."""
    command = pinned(CLIENT_CORE, [
        "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", f"--timeout={timeout_s:g}s", "-s", SCRIPT,
        f"http://127.0.0.1:{port}/", "--", requests_file, *([body_file] if body_file else []),
    ])
    before = sum(cpu_seconds(pid) for pid in server_pids)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        # wait4 gives this child's own CPU time; the timer bounds the round even if wrk hangs.
        limit = seconds + timeout_s + 30
        killer = threading.Timer(limit, process.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            killer.cancel()
            after = sum(cpu_seconds(pid) for pid in server_pids)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        out, err = out.read(), err.read()
    wrk_cpu = usage.ru_utime + usage.ru_stime
    line = next((line for line in out.splitlines() if line.startswith("WRK_RESULT ")), None)
    if process.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({process.returncode}): {err.strip() or out.strip()}")
    result = json.loads(line.split(" ", 1)[1])
    errors = sum(result["errors"].values())
    return Sample(
        requests=result["requests"], seconds=result["duration_us"] / 1e6, bytes=result["bytes"],
        p50_ms=result["p50_us"] / 1000, p99_ms=result["p99_us"] / 1000, errors=errors,
        server_cpu_s=after - before, client_cpu_s=wrk_cpu,
    )

