"""Process helpers: CPU pinning, CPU time from /proc, waiting for ports, machine facts."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import time

SERVER_CORE = 0  # the server under test runs here
CLIENT_CORE = 1  # the load generator runs here
PRIORITY = -10  # nice value for everything measured, when running as root
_TICKS = os.sysconf("SC_CLK_TCK")


def pinned(core: int, command: list[str]) -> list[str]:
    """``command`` run on one CPU core (taskset), or as is on a one-core machine.

    As root, also at nice -10 (servers, wrk and the plain loop alike): on a shared machine the
    scheduler then favours the measured processes over other work, which disturbs less."""
    if os.cpu_count() and os.cpu_count() > 1 and shutil.which("taskset"):
        command = ["taskset", "-c", str(core), *command]
    if os.geteuid() == 0 and shutil.which("nice"):
        command = ["nice", "-n", str(PRIORITY), *command]
    return command


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # The command name (field 2) may contain spaces: split after its closing parenthesis.
    fields = stat[stat.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14 and 15)


def children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found.extend(int(p) for p in f.read().split())
        except FileNotFoundError:
            pass
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, process: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def command_version(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (done.stdout + done.stderr).strip().splitlines()[0] if (done.stdout + done.stderr).strip() else "unknown"


def machine() -> dict:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": command_version(["nginx", "-v"]),
        "wrk": command_version(["wrk", "-v"]).split(" Copyright")[0],
    }


def load_average() -> float:
    """The 1-minute load average: above ~1 before a run, something else competes for the cores."""
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def drop_into_page_cache(paths) -> int:
    """Read every file once so no timed request pays for disk or the first access-time update."""
    total = 0
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                total += len(chunk)
    return total
