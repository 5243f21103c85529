"""The embedded registry: one SQLite file shared by the nodes of one host.

WAL mode and a busy timeout let several gateway processes write heartbeats
at once. Calls are short and rare (a heartbeat every few seconds), so they
run in a worker thread with a fresh connection each time: no connection is
shared between threads or kept across a fork.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from typing import Any

from .registry import NodeRecord, NotRegistered, Registry, RegistryError, Retirement
from .sqlite_holder import describe_holder

BUSY_SECONDS = 10.0  # how long a call waits for another process's write to the file


def _busy(exc: sqlite3.OperationalError) -> bool:
    message = str(exc)
    return "locked" in message or "busy" in message


SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    address TEXT NOT NULL,
    install_order INTEGER NOT NULL,
    last_seen REAL NOT NULL DEFAULT 0,
    info TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS retirements (
    node_id TEXT NOT NULL,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    last_modified REAL NOT NULL,
    etag TEXT NOT NULL,
    PRIMARY KEY (node_id, bucket, key)
);
CREATE TABLE IF NOT EXISTS registry_id (id TEXT NOT NULL);
INSERT INTO registry_id SELECT lower(hex(randomblob(16))) WHERE NOT EXISTS (SELECT 1 FROM registry_id);
CREATE TABLE IF NOT EXISTS locks (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires REAL NOT NULL
);
"""


_TABLES = frozenset({"nodes", "retirements", "registry_id", "locks"})


def _schema_ready(conn: sqlite3.Connection) -> bool:
    """Whether SCHEMA's tables and registry_id's row are there (reads only)."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return _TABLES <= tables and conn.execute("SELECT 1 FROM registry_id LIMIT 1").fetchone() is not None


class SqliteRegistry(Registry):
    """``sqlite:///absolute/path.db`` or ``sqlite://relative/path.db``."""

    def __init__(self, url: str):
        super().__init__(url)
        path = url.split("://", 1)[1]
        if not path:
            raise ValueError(f"registry {url!r}: give a file, e.g. sqlite:///var/lib/cv-gateway/registry.db")
        # sqlite:////var/x (the SQLAlchemy spelling) and sqlite:///var/x name the same file: say it once.
        self.path = "/" + path.lstrip("/") if path.startswith("//") else path
        self._ready = False

    def absent(self) -> str | None:
        if os.path.exists(self.path):
            return None
        return (f"there is no registry at {self.path}: check --registry (GATEWAY_REGISTRY); nodes create it "
                "when they first start")

    def cannot_create(self) -> str | None:
        directory = os.path.dirname(os.path.abspath(self.path))
        if os.path.isdir(directory):
            return None
        what = "is not a directory" if os.path.exists(directory) else "does not exist"
        return (f"{directory} {what}, so there is no registry at {self.path}: check --registry (GATEWAY_REGISTRY) "
                "for a typo; if the path is right, create the directory first")

    def _connect(self) -> sqlite3.Connection:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=BUSY_SECONDS, isolation_level=None)
        try:
            if not self._ready:
                conn.execute("PRAGMA journal_mode=WAL")
                self._ready = True
            # Every time: a registry file deleted and recreated while the nodes run gets its tables
            # back, and the nodes register again (membership.py). Checked with a read first, because
            # the script writes (registry_id's row): run every time, each connection, readers too,
            # waited for any writer, and a node frozen (SIGSTOP) in the middle of its heartbeat's
            # write held every other node and tool for the busy timeout (10 s). In WAL mode a read
            # does not wait for a writer.
            if not _schema_ready(conn):
                # A file made again under the running nodes (deleted, replaced) is in rollback-journal
                # mode until set: a read would wait for every writer again.
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    def _run(self, work):
        """``work(conn)`` on a fresh connection, again after a short pause while the file is locked.

        The busy timeout covers most waits, but SQLite answers "database is locked" at once, without
        waiting, in a few cases: above all while another process turns a new registry file into WAL
        mode, which is what nodes started together on a fresh registry do (1 start in 15 failed
        that way). The work is one transaction, rolled back when its connection closes, so it can
        run again."""
        deadline = time.monotonic() + BUSY_SECONDS
        pause = 0.005
        while True:
            try:
                conn = self._connect()
                try:
                    return work(conn)
                finally:
                    conn.close()
            except sqlite3.OperationalError as exc:
                if _busy(exc) and time.monotonic() < deadline:
                    time.sleep(pause)
                    pause = min(pause * 2, 0.2)
                    continue
                holder = describe_holder(self.path) if _busy(exc) else ""
                raise RegistryError(f"sqlite registry {self.path}: {exc}" + (f": {holder}" if holder else
                                                                            self._hint(exc))) from None
            except (OSError, sqlite3.Error) as exc:
                raise RegistryError(f"sqlite registry {self.path}: {exc}{self._hint(exc)}") from None

    def _hint(self, exc: Exception) -> str:
        """What to check for SQLite's terse answers about the file itself."""
        message = str(exc)
        if "unable to open database file" in message:
            if os.path.isdir(self.path):
                return (f": {self.path} is a directory, and the registry URL names a file in it, e.g. "
                        f"sqlite://{self.path.rstrip('/')}/registry.db")
            return (": check that its directory exists and that this process may write in it (the registry "
                    "writes the file and, beside it, its -wal and -shm files)")
        if "readonly database" in message:
            return (": the file or its directory is read-only for this process (a read-only mount, chattr +i, "
                    "permissions); the registry writes the file and, beside it, its -wal and -shm files")
        return ""

    async def register(self, node_id: str, role: str, address: str) -> NodeRecord:
        def work(conn):
            conn.execute("BEGIN IMMEDIATE")  # install order must not be handed out twice
            row = conn.execute("SELECT install_order FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
            # Not a heartbeat (Registry.register): a new node is never seen yet, a known one keeps its last.
            if row is None:
                order = conn.execute("SELECT COALESCE(MAX(install_order), 0) + 1 FROM nodes").fetchone()[0]
                conn.execute("INSERT INTO nodes (node_id, role, address, install_order, last_seen) "
                             "VALUES (?, ?, ?, ?, 0)", (node_id, role, address, order))
            else:
                conn.execute("UPDATE nodes SET role = ?, address = ? WHERE node_id = ?", (role, address, node_id))
            conn.execute("COMMIT")

        await asyncio.to_thread(self._run, work)
        record = await self.get(node_id)
        assert record is not None
        return record

    async def restore(self, records: list[NodeRecord]) -> list[str]:
        def work(conn):
            conn.execute("BEGIN IMMEDIATE")  # one transaction: nobody reads half of the restored list
            added = []
            for record in records:
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO nodes (node_id, role, address, install_order, last_seen, info) "
                    "VALUES (?, ?, ?, ?, ?, ?)", (record.node_id, record.role, record.address, record.install_order,
                                                  record.last_seen, json.dumps(record.info)))
                if cursor.rowcount:
                    added.append(record.node_id)
            conn.execute("COMMIT")
            return added

        return await asyncio.to_thread(self._run, work)

    async def heartbeat(self, node_id: str, info: dict[str, Any]) -> None:
        def work(conn):
            cursor = conn.execute("UPDATE nodes SET last_seen = ?, info = ? WHERE node_id = ?",
                                  (time.time(), json.dumps(info), node_id))
            if cursor.rowcount == 0:
                raise NotRegistered(f"node {node_id} is not registered in {self.path} (removed by cluster leave?)")

        await asyncio.to_thread(self._run, work)

    async def nodes(self) -> list[NodeRecord]:
        def work(conn):
            return conn.execute("SELECT node_id, role, address, install_order, last_seen, info FROM nodes "
                                "ORDER BY install_order").fetchall()

        rows = await asyncio.to_thread(self._run, work)
        return [NodeRecord(r[0], r[1], r[2], r[3], r[4], json.loads(r[5] or "{}")) for r in rows]

    async def remove(self, node_id: str) -> bool:
        def work(conn):
            # Its retirements stay: a node that rejoins with its old data must still drop what was
            # replaced while it was away (they are few, and bounded per node).
            return conn.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,)).rowcount > 0

        return await asyncio.to_thread(self._run, work)

    async def add_retirement(self, node_id: str, item: Retirement, limit: int) -> bool:
        def work(conn):
            conn.execute("BEGIN IMMEDIATE")  # the count and the write as one
            count = conn.execute("SELECT COUNT(*) FROM retirements WHERE node_id = ?", (node_id,)).fetchone()[0]
            known = conn.execute("SELECT 1 FROM retirements WHERE node_id = ? AND bucket = ? AND key = ?",
                                 (node_id, item.bucket, item.key)).fetchone()
            if count >= limit and known is None:
                conn.execute("ROLLBACK")
                return False
            # Of two retirements of one key, the newer version stays (wire.is_older's order).
            conn.execute("INSERT INTO retirements (node_id, bucket, key, last_modified, etag) VALUES (?, ?, ?, ?, ?) "
                         "ON CONFLICT (node_id, bucket, key) DO UPDATE SET last_modified = excluded.last_modified, "
                         "etag = excluded.etag WHERE (excluded.last_modified, excluded.etag) > (last_modified, etag)",
                         (node_id, item.bucket, item.key, item.last_modified, item.etag))
            conn.execute("COMMIT")
            return True

        return await asyncio.to_thread(self._run, work)

    async def retirements(self, node_id: str, limit: int) -> list[Retirement]:
        def work(conn):
            return conn.execute("SELECT bucket, key, last_modified, etag FROM retirements WHERE node_id = ? "
                                "LIMIT ?", (node_id, limit)).fetchall()

        return [Retirement(*row) for row in await asyncio.to_thread(self._run, work)]

    async def drop_retirement(self, node_id: str, item: Retirement) -> None:
        def work(conn):
            conn.execute("DELETE FROM retirements WHERE node_id = ? AND bucket = ? AND key = ? AND last_modified = ? "
                         "AND etag = ?", (node_id, item.bucket, item.key, item.last_modified, item.etag))

        await asyncio.to_thread(self._run, work)

    async def retirement_counts(self, node_ids: list[str]) -> dict[str, int]:
        def work(conn):
            return dict(conn.execute("SELECT node_id, COUNT(*) FROM retirements GROUP BY node_id").fetchall())

        counts = await asyncio.to_thread(self._run, work)
        return {node: counts.get(node, 0) for node in node_ids}

    async def acquire_lock(self, name: str, owner: str, ttl: float) -> bool:
        def work(conn):
            now = time.time()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM locks WHERE name = ? AND expires < ?", (name, now))
            conn.execute("INSERT OR IGNORE INTO locks (name, owner, expires) VALUES (?, ?, ?)", (name, owner, now + ttl))
            holder = conn.execute("SELECT owner FROM locks WHERE name = ?", (name,)).fetchone()
            conn.execute("COMMIT")
            return holder is not None and holder[0] == owner

        return await asyncio.to_thread(self._run, work)

    async def refresh_lock(self, name: str, owner: str, ttl: float) -> bool:
        def work(conn):
            return conn.execute("UPDATE locks SET expires = ? WHERE name = ? AND owner = ?",
                                (time.time() + ttl, name, owner)).rowcount > 0

        return await asyncio.to_thread(self._run, work)

    async def release_lock(self, name: str, owner: str) -> None:
        def work(conn):
            conn.execute("DELETE FROM locks WHERE name = ? AND owner = ?", (name, owner))

        await asyncio.to_thread(self._run, work)

    async def lock_holder(self, name: str) -> str | None:
        def work(conn):
            row = conn.execute("SELECT owner FROM locks WHERE name = ? AND expires >= ?", (name, time.time())).fetchone()
            return row[0] if row else None

        return await asyncio.to_thread(self._run, work)

    async def set_role(self, node_id: str, role: str) -> bool:
        def work(conn):
            return conn.execute("UPDATE nodes SET role = ? WHERE node_id = ?", (role, node_id)).rowcount > 0

        return await asyncio.to_thread(self._run, work)

    async def identity(self) -> str | None:
        def work(conn):
            return conn.execute("SELECT id FROM registry_id").fetchone()[0]

        return await asyncio.to_thread(self._run, work)
