"""A Samba share mounted through smbnetfs (FUSE over libsmbclient), for the shared-filesystem tests.

The kernel here has no NFS or CIFS client (no ``nfs``/``cifs`` in
/proc/filesystems, no modules to load), so a "share mounted at cv-storage"
is made in user space: smbnetfs from Debian, talking to the private smbd of
tests/plugins/conftest.py on its loopback port. Each mount is its own client
with its own caches, like a second server mounting the same share.

smbnetfs gets its own config directory (HOME) in a temp dir; nothing
system-wide is touched. It serves the whole network under the mount point:
``<mount>/<host>:<port>/<share>/`` reaches our smbd (libsmbclient takes the
port from the ``smb://host:port`` URL smbnetfs builds from the path).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

MAKE_TEST_DEPS = "run `make test-deps` (it installs the Debian packages smbnetfs, fuse3 and samba)"


class SmbnetfsMount:
    """One smbnetfs process and its mount point; ``share_dir`` is the share as a local directory."""

    def __init__(self, base: Path, server: str, port: int, share: str, user: str, password: str):
        self.base = base
        self.mountpoint = base / "mnt"
        self.home = base / "home"
        self.share_dir = self.mountpoint / f"{server}:{port}" / share
        self.log_path = base / "smbnetfs.log"
        self.process: subprocess.Popen | None = None
        self.program = shutil.which("smbnetfs")
        if self.program is None:
            raise RuntimeError(f"smbnetfs is not installed: {MAKE_TEST_DEPS}")
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        config_dir = self.home / ".smb"
        config_dir.mkdir(parents=True, exist_ok=True)
        # libsmbclient's own settings: SMB2 or newer, names resolved without NetBIOS broadcasts.
        (config_dir / "smb.conf").write_text(
            "[global]\n  client min protocol = SMB2_10\n  name resolve order = host\n"
        )
        settings = config_dir / "smbnetfs.conf"
        settings.write_text(
            f'auth "{user}" "{password}"\n'
            'smb_query_browsers "false"\n'  # no network browsing: we name the server ourselves
            "stat_workaround_depth 0\n"  # no fake ENOENT for names like HEAD or .git
            "smb_timeout 10000\n"
            "use_libsecret \"false\"\n"
        )
        settings.chmod(0o600)

    def start(self, timeout: float = 20.0) -> SmbnetfsMount:
        # attr_timeout=0: FUSE has no close-to-open revalidation, so an attribute cache would let
        # this mount read another mount's replaced object with the old size. negative_timeout=0:
        # a new object is seen at once. Names stay cached (entry_timeout, 1 s): smbnetfs works
        # by path, so a cached name always reaches the current file, and without that cache a
        # key 256 directories deep costs minutes of lookups. hard_remove: libfuse must not rename
        # an open file to .fuse_hidden* on unlink or rename-over, which would break the replace.
        options = "attr_timeout=0,negative_timeout=0,hard_remove"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [self.program, str(self.mountpoint), "-f", "-o", options],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HOME": str(self.home)},
            )
        deadline = time.monotonic() + timeout
        last_error: OSError | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"smbnetfs exited with {self.process.returncode}:\n{self.log()}")
            try:
                os.listdir(self.share_dir)
                return self
            except OSError as exc:
                last_error = exc
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"the share did not appear at {self.share_dir} within {timeout}s "
                           f"({last_error}):\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is None:
            return
        fusermount = shutil.which("fusermount3") or shutil.which("fusermount")
        if self.process.poll() is None and fusermount:
            subprocess.run([fusermount, "-u", "-z", str(self.mountpoint)], capture_output=True, timeout=20, check=False)
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> SmbnetfsMount:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def mount_for(smbd, base: Path) -> SmbnetfsMount:
    """A started mount of ``smbd``'s share (the Smbd of tests/plugins/conftest.py)."""
    return SmbnetfsMount(base, "127.0.0.1", smbd.port, smbd.share, smbd.user, smbd.password).start()
