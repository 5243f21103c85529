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


def _mount(args: list[str], what: str) -> None:
    """Run mount with ``args``; a failure fails the test, saying ``what`` failed and why."""
    done = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise AssertionError(f"{what} failed (it needs root, as CI runs): {done.stderr.strip()}")


@contextlib.contextmanager
def _mounted(mount_point: Path, args: list[str], what: str) -> Iterator[Path]:
    """Mount at ``mount_point`` (made if missing) with ``args``; unmount it (lazily: a process may
    still hold a file) at the end."""
    mount_point.mkdir(parents=True, exist_ok=True)
    _mount([*args, str(mount_point)], what)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False, timeout=30)


def tmpfs(mount_point: Path, size: str, read_only: bool = False):
    """Mount a tmpfs of ``size`` (mount's syntax: "2m", "64m") at ``mount_point``, as a context manager."""
    options = f"size={size}" + (",ro" if read_only else "")
    return _mounted(mount_point, ["-t", "tmpfs", "-o", options, "tmpfs"], f"mounting a tmpfs at {mount_point}")


def remount(mount_point: Path, read_only: bool) -> None:
    """Make a mounted tmpfs read-only (as the kernel remounts a filesystem after errors) or writable again."""
    mode = "ro" if read_only else "rw"
    _mount(["-o", f"remount,{mode}", str(mount_point)], f"remounting {mount_point} {mode}")


def bind_mount(source: Path, mount_point: Path):
    """Show ``source`` at ``mount_point`` as well, as a server mounts a share, as a context manager: one
    node's mount of it can then be taken away (``umount -l``) while the others keep theirs."""
    return _mounted(mount_point, ["--bind", str(source)], f"bind-mounting {source} at {mount_point}")
