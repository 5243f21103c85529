"""A process stopped in the middle of a registry write: the error names it and says what to do."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest

from gateway.cluster import registry_sqlite
from gateway.cluster.registry import RegistryError
from gateway.cluster.registry_sqlite import SqliteRegistry
from gateway.cluster.sqlite_holder import write_lock_holders

HOLD = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("UPDATE nodes SET last_seen = 1")
print("holding", flush=True)
time.sleep(60)
"""


@pytest.fixture
def registry(tmp_path, monkeypatch):
    monkeypatch.setattr(registry_sqlite, "BUSY_SECONDS", 0.5)
    reg = SqliteRegistry(f"sqlite:///{tmp_path}/registry.db")
    asyncio.run(reg.register("p1", "primary", "http://127.0.0.1:1"))
    return reg


@pytest.fixture
def holder(registry):
    process = subprocess.Popen([sys.executable, "-c", HOLD, registry.path], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "holding\n"
    yield process
    process.kill()
    process.wait()


def test_a_stopped_writer_is_named_with_the_way_out(registry, holder):
    assert write_lock_holders(registry.path) == [holder.pid]
    os.kill(holder.pid, signal.SIGSTOP)
    try:
        with pytest.raises(RegistryError) as info:
            asyncio.run(registry.heartbeat("p1", {}))
    finally:
        os.kill(holder.pid, signal.SIGCONT)
    message = str(info.value)
    assert "database is locked" in message
    assert f"process {holder.pid} (" in message and "is stopped" in message, message
    assert f"kill -CONT {holder.pid}" in message, message


def test_a_running_writer_is_named_too(registry, holder):
    with pytest.raises(RegistryError) as info:
        asyncio.run(registry.heartbeat("p1", {}))
    assert f"process {holder.pid} (" in str(info.value) and "stopped" not in str(info.value), info.value


def test_no_holder_once_the_writer_is_gone(registry, holder):
    holder.kill()
    holder.wait()
    assert write_lock_holders(registry.path) == []
    asyncio.run(registry.heartbeat("p1", {}))  # the lock went with the process


def test_locks_of_other_files_bytes_and_waiters_are_not_holders(tmp_path):
    ids = {}
    for name in ("r.db", "r.db-shm"):
        (tmp_path / name).write_bytes(b"")
        st = os.stat(tmp_path / name)
        ids[name] = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    shm, db = ids["r.db-shm"], ids["r.db"]
    other = shm.rsplit(":", 1)[0] + ":1"
    locks = tmp_path / "locks"
    locks.write_text(
        f"1: POSIX  ADVISORY  READ 11 {shm} 120 120\n"          # a reader
        f"2: POSIX  ADVISORY  WRITE 12 {shm} 124 124\n"         # a read mark
        f"3: POSIX  ADVISORY  WRITE 13 {other} 120 120\n"       # another file
        f"4: POSIX  ADVISORY  WRITE 14 {shm} 120 120\n"         # the writer
        f"4: -> POSIX  ADVISORY  WRITE 15 {shm} 120 120\n"      # a waiter
        f"5: POSIX  ADVISORY  WRITE 16 {shm} 0 EOF\n"           # a whole-file lock
        f"6: POSIX  ADVISORY  READ 17 {db} 1073741826 1073742335\n"   # a connection's shared lock
        f"7: POSIX  ADVISORY  WRITE 18 {db} 1073741826 1073742335\n")  # exclusive: the last close's checkpoint
    assert write_lock_holders(str(tmp_path / "r.db"), str(locks)) == [14, 16, 18]
    assert write_lock_holders(str(tmp_path / "missing.db"), str(locks)) == []
