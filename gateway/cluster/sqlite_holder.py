"""Which process holds an SQLite registry's write lock, for an error an operator can act on.

SQLite says only "database is locked". On the embedded registry every node of
the host writes to one file, so one process that stops in the middle of a
write (SIGSTOP, a debugger, a stuck disk) holds every other node's heartbeat
and failover vote, and the ops tools, for as long as it stays stopped. Linux
lists the holder in /proc/locks: in WAL mode the write lock is a POSIX lock
on byte 120 of the ``-shm`` file (WALINDEX_LOCK_OFFSET in SQLite's wal.c).
"""

from __future__ import annotations

import os

WAL_WRITE_LOCK_BYTE = 120
WAL_RECOVER_LOCK_BYTE = 122


def write_lock_holders(db_path: str, locks_file: str = "/proc/locks") -> list[int]:
    """The pids holding a lock that stops other processes' writes to ``db_path``: the WAL's write
    (or recovery) lock on the ``-shm`` file, or any exclusive lock on the database file itself,
    which a connection takes when, closing last, it checkpoints and removes the WAL (empty when
    none, or not on Linux)."""
    try:
        with open(locks_file, encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    db, shm = _file_id(db_path), _file_id(db_path + "-shm")
    pids = []
    for line in lines:
        # "1: POSIX  ADVISORY  WRITE 22229 fe:00:8440934 120 120"; "->" lines are waiters, not holders.
        fields = line.split()
        if len(fields) < 8 or fields[1] != "POSIX" or fields[3] != "WRITE":
            continue
        start, end = int(fields[6]), _end(fields[7])
        if fields[5] == db or (fields[5] == shm and any(start <= b <= end for b in (WAL_WRITE_LOCK_BYTE,
                                                                                   WAL_RECOVER_LOCK_BYTE))):
            if int(fields[4]) not in pids:
                pids.append(int(fields[4]))
    return pids


def _file_id(path: str) -> str | None:
    """A file as /proc/locks names it: major:minor:inode, the device numbers in hex."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"


def _end(field: str) -> int:
    return 1 << 63 if field == "EOF" else int(field)


def describe_holder(db_path: str) -> str:
    """A sentence naming who holds the write lock and what to do, or "" when nobody can be named."""
    pids = [pid for pid in write_lock_holders(db_path) if pid != os.getpid()]
    if not pids:
        return ""
    pid = pids[0]
    command = _command(pid)
    if process_state(pid) in ("T", "t"):
        return (f"process {pid} ({command}) holds the registry's write lock and is stopped (SIGSTOP or a "
                f"debugger): every node waits for it. Let it run (kill -CONT {pid}) or stop it")
    return (f"process {pid} ({command}) holds the registry's write lock; if it stays that way, see what it waits "
            "for (a slow or full disk under the registry file?)")


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().split(b"\0")
    except OSError:
        return "gone"
    text = " ".join(w.decode(errors="replace") for w in words if w)
    return text[:120] + ("..." if len(text) > 120 else "") or "?"


def process_state(pid: int) -> str:
    """The state letter of /proc/PID/stat ("T" stopped, "S" sleeping, ...), "?" when unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            # "pid (comm) S ...": comm may hold spaces and parentheses, the state follows the last ")".
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"
