"""Raise the kernel's read-ahead window of the mount, so that sequential reads arrive as 1 MiB requests.

The kernel reads ahead of a sequential reader through the page cache, in
requests as big as its read-ahead window, which for a FUSE mount starts at
128 KiB (``/sys/class/bdi/<major>:<minor>/read_ahead_kb``; libfuse cannot
raise it, the INIT handshake only lowers it). With libfuse 3 a request can be
up to 1 MiB; a 4 MiB window keeps several of them in flight, so the mount
receives the next MiB while the reader copies the previous one. Measured here
this reads a 256 MiB object about twice as fast as the 128 KiB default
(docs/fuse.md). Writing the sysfs file needs root; without it the mount keeps
the default window, and says so in its log.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from ..mounts import MOUNTINFO, mounts

log = logging.getLogger("gateway.fuse")

READ_AHEAD_KIB = 4096


def mount_device(mountpoint: str, mountinfo: str = MOUNTINFO) -> str | None:
    """The "major:minor" of the mount on ``mountpoint`` (the last one mounted there), or None."""
    found, mountpoint = None, os.path.realpath(mountpoint)
    for mount in mounts(mountinfo):
        if mount.mountpoint == mountpoint:
            found = mount.device
    return found


def set_read_ahead(device: str, kib: int, sysfs: str = "/sys/class/bdi") -> bool:
    """Raise the read-ahead of ``device`` to ``kib`` (never lower it); False if not allowed."""
    path = os.path.join(sysfs, device, "read_ahead_kb")
    try:
        with open(path) as f:
            if int(f.read().strip() or 0) >= kib:
                return True
        with open(path, "w") as f:
            f.write(str(kib))
        return True
    except (OSError, ValueError) as exc:
        log.info("could not raise the read-ahead of %s to %d KiB (%s): sequential reads go in 128 KiB "
                 "requests, about half as fast; as root, write %d to %s", device, kib, exc.strerror
                 if isinstance(exc, OSError) else exc, kib, path)
        return False


def raise_read_ahead_when_mounted(mountpoint: str, kib: int = READ_AHEAD_KIB, timeout: float = 30.0) -> None:
    """In a background thread: wait for the mount, then raise its read-ahead window.

    It must happen after libfuse's INIT handshake, which would lower it again: the ``stat`` of the
    mount point waits for the handshake (the kernel holds requests until then).
    """

    def run() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            device = mount_device(mountpoint)
            if device is not None:
                try:
                    os.stat(mountpoint)
                except OSError:
                    pass
                set_read_ahead(device, kib)
                return
            time.sleep(0.02)

    threading.Thread(target=run, name="gateway-fuse-readahead", daemon=True).start()
