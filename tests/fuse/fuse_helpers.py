"""Helpers for the FUSE tests: shell commands on the mount, requests counted from the access log."""

from __future__ import annotations

import re
import subprocess


def sh(command: str, cwd, timeout: float = 120) -> str:
    """Run a shell command; fail the test with its output when it fails."""
    result = subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{command!r} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout


def requests_in_log(gateway, since: int = 0) -> list[tuple[str, str]]:
    """(method, target) of each request in the gateway's access log, from line ``since`` on."""
    found = []
    for line in gateway.log().splitlines()[since:]:
        match = re.search(r'"(GET|HEAD|PUT|POST|DELETE) (\S+) HTTP/[\d.]+"', line)
        if match:
            found.append((match.group(1), match.group(2)))
    return found


def log_lines(gateway) -> int:
    return len(gateway.log().splitlines())


def proc_status_kib(pid: int, field: str) -> int:
    """A memory field of /proc/<pid>/status (VmRSS, VmHWM, ...) in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"/proc/{pid}/status has no {field}")
