"""Small file helpers shared by the local, sharedfs and smb backends.

- Temp file ownership: temp files are named ``<pid>.<process start>-...``
  (older names: ``<pid>-...``) so start-up cleanup can tell a live writer's
  file from one a dead process left behind.
- The SFM name mapping: how characters an SMB server refuses in names are
  carried (smbnetfs mounts in sharedfs, and the smb backend).
- ``is_dir``: a directory test that lets a failing filesystem's errors through.
"""

from __future__ import annotations

import os
import stat
import time


def is_dir(path: str) -> bool:
    """Whether ``path`` is a directory; False only when it is not there or not a directory.

    Unlike ``os.path.isdir``, an error of the filesystem itself (EIO, ESTALE, a timeout of a
    network mount, a symlink loop) is raised: taken for "no such directory" it would turn a
    bucket on a failing mount into a NoSuchBucket, which a client believes.
    """
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def is_file(path: str) -> bool:
    """Whether a regular file is at ``path``; as is_dir, an error of the filesystem itself raises
    instead of passing for "no file"."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


# Temp files ------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it just is not ours to signal
    return True


def process_start(pid: int) -> str:
    """When the process started (clock ticks since boot, Linux), or "" when unknown.

    Temp file names carry it with the pid, so a pid reused by an unrelated
    process (common after a container restart, where the gateway is pid 1
    again) does not keep a dead writer's temp files alive.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return ""
    # The command name (field 2) may hold spaces and ")": count fields after the last ")".
    fields = stat[stat.rfind(b")") + 2:].split()
    return fields[19].decode() if len(fields) > 19 else ""


def temp_owner_alive(name: str) -> bool:
    """Whether the process that named a temp file ``<pid>.<start>-...`` (or ``<pid>-...``) still runs."""
    owner = name.split("-", 1)[0]
    pid, _, start = owner.partition(".")
    # ASCII digits only, and short: a stray file's name must not crash the start-up clean-up.
    if not (pid.isascii() and pid.isdigit() and len(pid) <= 7) or not pid_alive(int(pid)):  # pid_max <= 2**22
        return False
    if not start:
        return int(pid) != os.getpid()  # an older name without start time: ours are never that old
    running = process_start(int(pid))
    return running in ("", start)


def remove_stale_temp_files(tmp_dir: str, keep_newer_than: float = 0.0) -> tuple[int, int]:
    """Remove the temp files in ``tmp_dir`` whose writer is gone; return (removed, kept as recent).

    Files of live processes stay: another gateway on this host (or another
    backend instance in this process) may be writing them right now. With
    ``keep_newer_than`` (seconds), files written that recently stay too.
    """
    removed = kept = 0
    now = time.time()
    for entry in os.scandir(tmp_dir):
        if temp_owner_alive(entry.name):
            continue
        try:
            if keep_newer_than and now - entry.stat(follow_symlinks=False).st_mtime < keep_newer_than:
                kept += 1
                continue
            os.unlink(entry.path)
            removed += 1
        except FileNotFoundError:
            pass  # its writer finished (or another cleanup got there) meanwhile
    return removed, kept


def unlink_quietly(path: str) -> None:
    """Remove a file if it can be removed: for clean-up after an error that is already being raised."""
    try:
        os.unlink(path)
    except OSError:
        pass


# SMB names -------------------------------------------------------------------

# Characters an SMB name cannot carry (":" opens a stream, "\\" separates, the rest are wildcards or
# reserved) travel as the Unicode private-use characters that macOS, Windows' Services for Macintosh
# and the Linux cifs client (default ``mapposix``) use: the "SFM" mapping. A file written through any
# of them has the same name on the server; Samba's vfs_catia (smb_files.CATIA_MAPPINGS) stores them
# as the real characters, so the files on the server's disk are exactly the local backend's.
SFM_MAP = {chr(c): chr(0xF000 + c) for c in range(0x01, 0x20)}
SFM_MAP.update(zip('"*:<>?\\|', (chr(c) for c in range(0xF020, 0xF028))))
SFM_BACK = {v: k for k, v in SFM_MAP.items()}
# Windows drops a trailing space or period from a name; cifs maps those only at the end of a name.
SFM_TRAILING = {" ": "\uf028", ".": "\uf029"}
_TO_SFM = str.maketrans(SFM_MAP)
_FROM_SFM = str.maketrans(SFM_BACK)
_FROM_SFM_WITH_TRAILING = str.maketrans({**SFM_BACK, **{v: k for k, v in SFM_TRAILING.items()}})


def sfm_encode(name: str, trailing: bool = False) -> str:
    """The name with SFM_MAP applied (and, with ``trailing``, a last space or period mapped too)."""
    mapped = name.translate(_TO_SFM)
    if trailing and mapped and mapped[-1] in SFM_TRAILING:
        mapped = mapped[:-1] + SFM_TRAILING[mapped[-1]]
    return mapped


def sfm_decode(name: str, trailing: bool = False) -> str:
    """Undo sfm_encode (with the same ``trailing``)."""
    return name.translate(_FROM_SFM_WITH_TRAILING if trailing else _FROM_SFM)
