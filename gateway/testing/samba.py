"""A private Samba ``smbd`` on a free loopback port, for tests and benchmarks.

    server = Smbd(Path(tempfile.mkdtemp())).start()
    options = server.backend_options(path="cv-storage")   # [backends.NAME] of an smb backend
    ...
    server.stop()

Nothing system-wide is touched: smbd gets its own config, passdb (``tdbsam:<base>/private/passdb.tdb``),
lock/state/cache/pid directories and share, all under ``base``. Needs the Debian packages samba
(smbd, smbpasswd) and samba-vfs-modules (the catia module); ``make test-deps`` installs them.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .server import free_port

MAKE_TEST_DEPS = "run `make test-deps` (it installs the Debian packages samba, smbclient and samba-vfs-modules)"
SMB_USER_PASSWORD = "smb-Secret-42"
SMB_SHARE = "cvshare"


def require_program(program: str) -> str:
    """The path of ``program`` (also looked for in the sbin directories, where Debian puts smbd)."""
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin:/usr/bin")
    if path is None:
        raise RuntimeError(f"{program} is not installed: {MAKE_TEST_DEPS}")
    return path


def _wait_port(port: int, timeout: float, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s (smbd log: {log})")


class Smbd:
    """A private smbd: its own config, user, share and state, on a free loopback port.

    :param base: an empty directory for everything smbd keeps (the share is ``base/share``).
    :param command_prefix: run smbd under this (for instance ``["taskset", "-c", "0"]`` in benchmarks).
    """

    def __init__(self, base: Path, command_prefix: list[str] | None = None):
        from gateway_plugins.smb_files import CATIA_MAPPINGS

        self.smbd = require_program("smbd")
        self.smbpasswd = require_program("smbpasswd")
        self.base = Path(base)
        self.command_prefix = list(command_prefix or [])
        self.share_dir = self.base / "share"
        self.port = free_port()
        self.user = os.environ.get("USER") or getpass.getuser()
        self.password = SMB_USER_PASSWORD
        self.share = SMB_SHARE
        self.process: subprocess.Popen | None = None
        for name in ("share", "private", "lock", "state", "cache", "pid", "ncalrpc", "logs"):
            (self.base / name).mkdir(parents=True, exist_ok=True)
        self.config = self.base / "smb.conf"
        self.log_path = self.base / "logs" / "smbd.out"
        base = self.base
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
                [*self.command_prefix, self.smbd, "--foreground", "--no-process-group", f"--configfile={self.config}",
                 "--debug-stdout"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            _wait_port(self.port, 20, self.process, self.log_path)
        except BaseException:
            self.stop()
            raise
        return self

    @classmethod
    @contextmanager
    def private(cls, command_prefix: list[str] | None = None) -> Iterator[Smbd]:
        """A started smbd in a fresh temp dir, stopped and removed on exit (even if a test froze it)."""
        base = Path(tempfile.mkdtemp(prefix="cv-smbd-"))
        server = cls(base, command_prefix=command_prefix)
        try:
            yield server.start()
        finally:
            server.stop()
            shutil.rmtree(base, ignore_errors=True)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGCONT)  # a test may have frozen it: SIGTERM waits otherwise
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
        """The options of an smb backend that uses this server (``path``: a directory inside the share)."""
        return {"server": "127.0.0.1", "port": self.port, "share": self.share, "path": path,
                "user": self.user, "password": self.password, "timeout": 10, "connect_timeout": 5, **extra}

    def toml(self, name: str = "nas", path: str = "", **extra) -> str:
        """A gateway config whose default backend ``name`` is an smb backend on this server."""
        lines = [f"[backends.{name}]", 'type = "smb"']
        for key, value in self.backend_options(path, **extra).items():
            lines.append(f"{key} = {value!r}".replace("'", '"') if isinstance(value, str) else f"{key} = {value}")
        # Top-level keys must come before the first table.
        return f'default_backend = "{name}"\n\n' + "\n".join(lines) + "\n"
