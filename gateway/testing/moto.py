"""A moto S3 server process on a free loopback port, for tests and benchmarks.

    server = MotoServer(log_path).start()
    options = server.backend_options(bucket_prefix="t-")   # [backends.NAME] of an s3 backend
    ...
    server.stop()

A process, not moto's ThreadedMotoServer: moto keeps objects in memory, and in the caller's process
its copies would count against the memory bounds the conformance suite measures (and, in a
benchmark, its CPU would be the client's). Needs the ``moto[server]`` extra (the ``test`` extra).
"""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .server import free_port

MAKE_TEST_DEPS = "run `make test-deps` (it installs the test extra, which holds moto[server])"
# moto accepts any credentials; these are the ones its documentation uses.
ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"


class MotoServer:
    """``python -m moto.server`` on 127.0.0.1 and a free port.

    :param log_path: where the server's output goes (read it when something fails).
    :param command_prefix: run the server under this (for instance ``["taskset", "-c", "0"]``).
    """

    def __init__(self, log_path: str | Path, command_prefix: list[str] | None = None):
        self.log_path = Path(log_path)
        self.command_prefix = list(command_prefix or [])
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> MotoServer:
        if importlib.util.find_spec("moto") is None or importlib.util.find_spec("moto.server") is None:
            raise RuntimeError(f"moto[server] is not installed: {MAKE_TEST_DEPS}")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*self.command_prefix, sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        # Ready when it answers HTTP (any status: an anonymous request may be refused), not merely
        # when the port accepts, so the first real request does not race moto's start-up.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the moto server exited with {self.process.returncode}:\n"
                                   f"{self.log_path.read_text(errors='replace')}")
            try:
                with urllib.request.urlopen(self.endpoint + "/", timeout=1):
                    return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"the moto server did not answer on {self.endpoint} within {timeout}s "
                           f"(log: {self.log_path})")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)  # a test may have frozen it: SIGTERM waits otherwise
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def backend_options(self, **extra) -> dict:
        """The options of an s3 backend that stores on this server."""
        return {"endpoint_url": self.endpoint, "region": "us-east-1", "access_key_id": ACCESS_KEY_ID,
                "secret_access_key": SECRET_ACCESS_KEY, "timeout": 10, "max_attempts": 2, **extra}
