"""What a newcomer meets running the gateway from the README (`make run`, Ctrl-C, HOST=0.0.0.0): real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from gateway.testing.server import free_port


def env_without_gateway_settings() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}


def start_serve(*args: str) -> tuple[subprocess.Popen, list[str]]:
    """`python -m gateway serve ...` with SIGINT as a terminal's foreground process has it (a test run
    started in the background inherits it ignored, and Python then leaves it ignored)."""
    process = subprocess.Popen([sys.executable, "-m", "gateway", "serve", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env_without_gateway_settings(),
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        seen.append(line)
        if not line or "Uvicorn running on" in line:
            break
    assert process.poll() is None and "Uvicorn running on" in seen[-1], "".join(seen)
    time.sleep(0.5)  # uvicorn logs that line just before it counts as started (a signal before: the start-up's)
    return process, seen


def test_ctrl_c_stops_the_gateway_cleanly_with_status_0(tmp_path):
    """uvicorn stops cleanly on SIGINT and then raises it again: click printed "Aborted!" and the gateway
    exited 1 after its clean shutdown, so Ctrl-C of `make run` ended in "make: *** [run] Error 1"."""
    process, seen = start_serve("--port", str(free_port()), "--data-dir", str(tmp_path / "cv"),
                                "--access-key", "a", "--secret-key", "b")
    try:
        process.send_signal(signal.SIGINT)
        output = "".join(seen) + process.communicate(timeout=30)[0]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "Application shutdown complete" in output, output
    assert "Aborted!" not in output and "Traceback" not in output, output
    assert process.returncode == 0, output
