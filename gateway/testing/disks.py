"""A small real disk for tests: a tmpfs that fills up, or is read-only (needs root, as CI runs).

    with tmpfs(tmp_path / "small", "2m") as disk:
        ...  # ENOSPC once 2 MiB are written under disk

Tests of full and read-only disks used to mount their own (seven copies, two of them skipping
when not root). A mount that fails is a test failure saying why, never a skip.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def tmpfs(mount_point: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (mount's syntax: "2m", "64m") at ``mount_point`` (made if missing);
    unmount it (lazily: a process may still hold a file) at the end."""
    mount_point.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise AssertionError(f"mounting a tmpfs at {mount_point} failed (it needs root, as CI runs): "
                             f"{done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False, timeout=30)


def remount(mount_point: Path, read_only: bool) -> None:
    """Make a mounted tmpfs read-only (as the kernel remounts a filesystem after errors) or writable again."""
    done = subprocess.run(["mount", "-o", "remount," + ("ro" if read_only else "rw"), str(mount_point)],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise AssertionError(f"remounting {mount_point} {'read-only' if read_only else 'writable'} failed: "
                             f"{done.stderr.strip()}")


@contextlib.contextmanager
def bind_mount(source: Path, mount_point: Path) -> Iterator[Path]:
    """Show ``source`` at ``mount_point`` as well (made if missing), as a server mounts a share: one
    node's mount of it can then be taken away (``umount -l``) while the others keep theirs."""
    mount_point.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "--bind", str(source), str(mount_point)], capture_output=True, text=True,
                          timeout=30)
    if done.returncode != 0:
        raise AssertionError(f"bind-mounting {source} at {mount_point} failed (it needs root, as CI runs): "
                             f"{done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False, timeout=30)
