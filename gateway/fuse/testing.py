"""Run a real mount in a subprocess, for tests and benchmarks.

    with MountProcess(gw, tmp_path / "mnt") as mnt:
        (mnt.path / "bucket" / "file").write_bytes(b"...")

The mount is waited for with a timeout and always unmounted on exit, even
when the test failed or the mount process hung.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def fuse_available() -> str | None:
    """None when FUSE mounts can run here, else what is missing and how to get it."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (load the fuse kernel module; in a container pass --device /dev/fuse)"
    if not (shutil.which("fusermount3") or shutil.which("fusermount")):
        return "fusermount is missing: run `make test-deps` (Debian packages fuse3 libfuse2)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"mfusepy or libfuse cannot be loaded ({exc}): run `make test-deps`"
    return None


def unmount(path: str | os.PathLike, lazy: bool = False) -> bool:
    """fusermount -u; True when ``path`` is no longer a mount point."""
    path = os.fspath(path)
    if not os.path.ismount(path):
        return True
    tool = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount"
    subprocess.run([tool, "-u" + ("z" if lazy else ""), path], capture_output=True, timeout=30, check=False)
    return not os.path.ismount(path)


class MountProcess:
    """``gateway mount --foreground`` of a GatewayProcess, in a subprocess.

    :param gateway: a started gateway.testing.server.GatewayProcess.
    :param mountpoint: an empty directory (created if missing).
    :param args: extra ``gateway mount`` options (e.g. ``["--attr-ttl", "0"]``).
    """

    def __init__(self, gateway, mountpoint: str | os.PathLike, args: list[str] | None = None,
                 env: dict[str, str] | None = None, endpoint: str | None = None):
        self.gateway = gateway
        self.path = Path(mountpoint)
        self.args = list(args or [])
        self.env = dict(env or {})
        self.endpoint = endpoint or gateway.endpoint
        self.process: subprocess.Popen | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="gateway-mount-", suffix=".log")[1])

    def command(self) -> list[str]:
        return [sys.executable, "-m", "gateway", "mount", self.endpoint, str(self.path), "--foreground",
                *self.args]

    def start(self, timeout: float = 20.0) -> "MountProcess":
        problem = fuse_available()
        if problem:
            raise RuntimeError(problem)
        self.path.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GATEWAY_ACCESS_KEY": self.gateway.access_key,
               "GATEWAY_SECRET_KEY": self.gateway.secret_key, **self.env}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway mount exited with {self.process.returncode}:\n{self.log()}")
            if os.path.ismount(self.path):
                return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"{self.path} was not mounted within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> None:
        """Unmount and wait for the process; escalate (lazy unmount, SIGKILL) if it does not go."""
        if not unmount(self.path):
            if self.process and self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
        if self.process is not None:
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if os.path.ismount(self.path):
            unmount(self.path, lazy=True)

    def __enter__(self) -> "MountProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
