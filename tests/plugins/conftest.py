"""Fixtures for backend plugin tests: a real Samba smbd and a real moto S3 server, on loopback ports.

Nothing system-wide is touched: smbd gets its own config, passdb
(``tdbsam:<dir>/passdb.tdb``), lock/state/cache/pid directories and share,
all in a temp dir; the moto server runs in this process on a free port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from gateway.testing.server import free_port

MAKE_TEST_DEPS = "run `make test-deps` (it installs the Debian packages samba, smbclient and samba-vfs-modules)"
SMB_USER_PASSWORD = "smb-Secret-42"
SMB_SHARE = "cvshare"


def _require(program: str) -> str:
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin:/usr/bin")
    if path is None:
        pytest.fail(f"{program} is not installed: {MAKE_TEST_DEPS}")
    return path


def _wait_port(port: int, timeout: float, process: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}:\n{log.read_text() if log else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class Smbd:
    """A private smbd: its own config, user, share and state, on a free loopback port."""

    def __init__(self, base: Path):
        from gateway_plugins.smb_files import CATIA_MAPPINGS

        self.smbd = _require("smbd")
        self.smbpasswd = _require("smbpasswd")
        self.base = base
        self.share_dir = base / "share"
        self.port = free_port()
        self.user = os.environ.get("USER") or __import__("getpass").getuser()
        self.password = SMB_USER_PASSWORD
        self.share = SMB_SHARE
        self.process: subprocess.Popen | None = None
        for name in ("share", "private", "lock", "state", "cache", "pid", "ncalrpc", "logs"):
            (base / name).mkdir(parents=True, exist_ok=True)
        self.config = base / "smb.conf"
        self.log_path = base / "logs" / "smbd.out"
        # catia maps the private-use characters the smb backend sends for \ : * ? " < > | and
        # control characters back to the real ones, so the share's files match the local layout.
        self.config.write_text(textwrap.dedent(f"""\
            [global]
              server role = standalone server
              smb ports = {self.port}
              bind interfaces only = yes
              interfaces = 127.0.0.1
              passdb backend = tdbsam:{base}/private/passdb.tdb
              private dir = {base}/private
              lock directory = {base}/lock
              state directory = {base}/state
              cache directory = {base}/cache
              pid directory = {base}/pid
              ncalrpc dir = {base}/ncalrpc
              log file = {base}/logs/log.%m
              log level = 1
              disable netbios = yes
              load printers = no
              printing = bsd
              printcap name = /dev/null
              disable spoolss = yes
              map to guest = never
              server min protocol = SMB2_10
            [{self.share}]
              path = {self.share_dir}
              read only = no
              case sensitive = yes
              preserve case = yes
              short preserve case = yes
              vfs objects = catia
              catia:mappings = {CATIA_MAPPINGS}
            """))
        subprocess.run(
            [self.smbpasswd, "-c", str(self.config), "-a", "-s", self.user],
            input=f"{self.password}\n{self.password}\n", text=True, check=True, capture_output=True,
        )

    def start(self) -> Smbd:
        with open(self.log_path, "ab") as log:
            # Its own session, so stop() can signal smbd and the children it forks per client.
            self.process = subprocess.Popen(
                [self.smbd, "--foreground", "--no-process-group", f"--configfile={self.config}", "--debug-stdout"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        _wait_port(self.port, 20, self.process, self.log_path)
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        # Children serving clients leave with the group; wait until the port is free.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    time.sleep(0.05)
            except OSError:
                return

    def restart(self) -> None:
        self.stop()
        self.start()

    def backend_options(self, path: str = "", **extra) -> dict:
        return {"server": "127.0.0.1", "port": self.port, "share": self.share, "path": path,
                "user": self.user, "password": self.password, "timeout": 10, "connect_timeout": 5, **extra}

    def toml(self, name: str = "nas", path: str = "", **extra) -> str:
        lines = [f"[backends.{name}]", 'type = "smb"']
        for key, value in self.backend_options(path, **extra).items():
            lines.append(f"{key} = {value!r}".replace("'", '"') if isinstance(value, str) else f"{key} = {value}")
        # Top-level keys must come before the first table.
        return f'default_backend = "{name}"\n\n' + "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def smbd():
    """One private smbd for the session (tests use their own path inside the share)."""
    base = Path(tempfile.mkdtemp(prefix="cv-smbd-"))
    server = Smbd(base)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def smb_path():
    """A fresh directory inside the share for one test."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """A moto S3 server process on a free loopback port.

    A process, not ThreadedMotoServer: moto keeps objects in memory, and in our own process its
    copies would count against the memory bounds the conformance suite measures.
    """
    try:
        import moto.server  # noqa: F401
    except ImportError:
        pytest.fail("moto[server] is not installed: run `make test-deps`")
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_port(port, 30, process, log_path)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def moto_options(moto_server):
    """``moto_options(**extra)``: s3 backend options pointing at the moto server."""

    def options(**extra) -> dict:
        return {"endpoint_url": moto_server, "region": "us-east-1", "access_key_id": "testing",
                "secret_access_key": "testing", "timeout": 10, "max_attempts": 2, **extra}

    return options
