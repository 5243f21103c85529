"""Start real ``gateway serve`` processes for tests (and for plugin authors' tests).

    with GatewayProcess(data_dir=tmp_path / "cv-storage") as gw:
        s3 = gw.client()
        s3.create_bucket(Bucket="faces")
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from gateway.cluster.registry_sqlite import SqliteRegistry
from gateway.cluster.sqlite_holder import process_state, write_lock_holders

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key-0123456789"
# Signals after which kill() waits for the exit; others (SIGSTOP, SIGCONT, ...) return at once.
TERMINATING_SIGNALS = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGABRT})


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class GatewayProcess:
    """One gateway as a subprocess on a free loopback port.

    :param data_dir: the cv-storage directory (a temp dir when None).
    :param config: TOML text written to a file and passed with --config.
    :param args: extra command-line arguments for ``gateway serve``.
    :param env: extra environment variables.
    :param scheme: "https" when the gateway serves TLS (``--tls-cert``/``--tls-key`` in ``args``).
    :param ca: the CA file that verifies an https gateway's certificate.
    """

    def __init__(self, data_dir: str | os.PathLike | None = None, *, host: str = "127.0.0.1",
                 port: int | None = None, config: str | None = None, args: list[str] | None = None,
                 env: dict[str, str] | None = None, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY,
                 scheme: str = "http", ca: str | os.PathLike | None = None):
        self._tmp = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="cv-gateway-")
            data_dir = Path(self._tmp.name) / "cv-storage"
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or free_port(host)
        self.access_key = access_key
        self.secret_key = secret_key
        self.config = config
        self.args = list(args or [])
        self.env = dict(env or {})
        self.scheme = scheme
        self.ca = str(ca) if ca is not None else None
        self.process: subprocess.Popen | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="gateway-", suffix=".log")[1])

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "gateway", "serve", "--host", self.host, "--port", str(self.port),
               "--data-dir", str(self.data_dir), "--access-key", self.access_key, "--secret-key", self.secret_key]
        if self.config is not None:
            path = self.log_path.with_suffix(".toml")
            path.write_text(self.config)
            cmd += ["--config", str(path)]
        return cmd + self.args

    def start(self, timeout: float = 20.0) -> "GatewayProcess":
        env = {**os.environ, **self.env}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env)
        self.wait_ready(timeout)
        return self

    def ssl_context(self) -> ssl.SSLContext | None:
        """For urllib requests to this gateway: one that trusts its CA when it serves https, else None."""
        return ssl.create_default_context(cafile=str(self.ca)) if self.scheme == "https" else None

    def wait_ready(self, timeout: float = 20.0) -> None:
        context = self.ssl_context()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.endpoint + "/healthz", timeout=1, context=context) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"gateway did not answer /healthz within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (kill -9 by default); wait for the exit only for signals that end the process."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            if sig in TERMINATING_SIGNALS:
                self.process.wait(timeout=10)

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): it keeps its sockets but answers nothing until resume().

        A node of an SQLite registry is frozen outside a registry write: frozen inside one (1 pause
        in 100 lands there), it holds every node's registry writes, heartbeats and failover votes,
        until it runs again (gateway/cluster/sqlite_holder.py). That is a frozen registry, not the
        frozen peer a test means; tests of it hold the lock themselves."""
        registry = self._sqlite_registry()
        for _ in range(100):
            self.kill(signal.SIGSTOP)
            if registry is None:
                return
            self._wait_stopped()
            if self.process.pid not in write_lock_holders(registry):
                return
            self.kill(signal.SIGCONT)
            time.sleep(0.01)
        raise AssertionError(f"gateway {self.process.pid} held the registry's write lock at 100 pauses in a row")

    def _sqlite_registry(self) -> str | None:
        """The file of this node's SQLite registry (``--registry`` or GATEWAY_REGISTRY), if it has one."""
        url = self.env.get("GATEWAY_REGISTRY", "")
        if "--registry" in self.args[:-1]:
            url = self.args[self.args.index("--registry") + 1]
        if not url.startswith("sqlite:"):
            return None
        return SqliteRegistry(url).path

    def _wait_stopped(self, timeout: float = 5.0) -> None:
        """SIGSTOP is delivered asynchronously: wait until /proc says the process is stopped."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process_state(self.process.pid) in ("T", "t"):
                return
            time.sleep(0.001)
        raise AssertionError(f"gateway {self.process.pid} did not stop within {timeout}s of SIGSTOP")

    def resume(self, settle: bool = True) -> None:
        """Let a paused process run again (SIGCONT).

        A cluster node that stood still longer than the peer timeout refuses peer writes for a
        moment after it runs again (gateway/cluster/stall.py); with ``settle`` this returns once that
        moment is over, so what the test does next meets a node back to normal. (What waited in its
        sockets is handled by the node meanwhile, as it would be anyway.)
        """
        self.kill(signal.SIGCONT)
        if settle:
            from gateway.cluster.stall import GRACE

            time.sleep(GRACE + 0.2)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.send_signal(signal.SIGCONT)  # a paused process only sees the SIGTERM once it runs
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def client(self, **config):
        """A boto3 S3 client for this gateway (path style; no retries that hide errors unless ``retries`` is given)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1", verify=self.ca,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(**{"s3": {"addressing_style": "path"}, "retries": {"max_attempts": 1}, **config}),
        )

    def __enter__(self) -> "GatewayProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
