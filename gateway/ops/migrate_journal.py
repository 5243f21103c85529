"""The journal of ``gateway migrate``: which files this server put on the target, and which version.

It lives in the SOURCE root, ``.gateway/migrate/<hash of the target's realpath>``, because it
describes this server's copies: several servers merging into one share each keep their own.
A later pass uses it for one thing only, deletions: a file that is in the journal but no longer in
the source was deleted here since it was copied, and its target copy is removed when it is still
a version this server put there (one of the journaled identities). A copy with any other identity
was written by another server or a gateway on the share, and stays.

Two files, so that ``kill -9`` loses nothing:

- ``<hash>.json``: a snapshot, written to a temp file, fsynced and renamed (whole or not at all);
- ``<hash>.log``: one JSON line per change since the snapshot, flushed before the change is made
  on the target. An identity is logged *before* its copy is renamed into place: if the pass dies
  in between, the journal names a version the target may not have, which is harmless (removal
  needs the target to hold a journaled identity), while the other order could leave a copy that
  no journal knows, and that would survive its deletion here. A torn last line is ignored.

The log is also the lock: a second pass to the same target waits for nothing, it stops.

A journal that cannot be written (the store's disk is full) stops the pass with JournalError: a
copy is made only after its line is in the log, so going on without the journal would leave
copies no journal knows. A failed snapshot leaves no temp file; those of a pass that died before
it could remove its own are removed by the next pass, which holds the lock.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import hashlib
import json
import os
import time

from .stores import OpsError

SNAPSHOT_EVERY_SECONDS = 60.0
SNAPSHOT_EVERY_CHANGES = 20000


def journal_dir(source_root: str) -> str:
    return os.path.join(source_root, ".gateway", "migrate")


def target_key(target_real: str) -> str:
    return hashlib.sha256(target_real.encode()).hexdigest()[:16]


def _cut_torn_line(path: str) -> None:
    """Drop a last line without its newline (the write a killed pass did not finish)."""
    with open(path, "rb") as f:
        data = f.read()
    end = data.rfind(b"\n") + 1
    if end != len(data):
        os.truncate(path, end)


class JournalError(OpsError):
    """The journal cannot be written: the pass stops (the message says why and what to do)."""


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class Journal:
    """relpath -> the identities of the versions this server put (or was putting) at that path."""

    def __init__(self, source_root: str, target_real: str, writable: bool = True):
        base = os.path.join(journal_dir(source_root), target_key(target_real))
        self.path = base + ".json"
        self.log_path = base + ".log"
        self.target = target_real
        self.writable = writable  # False for --dry-run: read it, never write it
        self.entries: dict[str, list[str]] = {}
        self.meta: dict = {}
        self.damaged_lines = 0  # lines of the log that could not be read (their changes are lost)
        self._log = None
        self._log_size = 0  # the log's length after its last whole line
        self._changes = 0
        self._snapshot_at = time.monotonic()

    def open(self) -> Journal:
        if self.writable:
            try:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                self._log = open(self.log_path, "ab", buffering=0)  # each line reaches the kernel whole, or not
            except OSError as exc:
                raise self._failed(exc, exc.filename or self.log_path) from None
            try:
                fcntl.flock(self._log.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._log.close()
                self._log = None
                raise OpsError(f"another `gateway migrate` to {self.target} is running on this store "
                               f"(it holds {self.log_path}); wait for it to finish") from None
            try:
                _cut_torn_line(self.log_path)  # or this pass's first change would be glued onto it
                self._log_size = os.fstat(self._log.fileno()).st_size
            except OSError as exc:
                self._log.close()
                self._log = None
                raise self._failed(exc, self.log_path) from None
            # Snapshot temp files of passes that died before they could remove theirs (kill -9, or a
            # full disk then): no other pass writes this journal while we hold the lock.
            for stale in glob.glob(glob.escape(self.path) + ".tmp-*"):
                _unlink_quietly(stale)
        self._load()
        return self

    def _failed(self, exc: OSError, path: str) -> JournalError:
        """The error that stops the pass when the journal (in the source store) cannot be written."""
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            advice = "the store's disk is full: free space on it and run the pass again"
        else:
            advice = "fix the cause and run the pass again"
        return JournalError(f"cannot write the migration journal {path}: {reason}; {advice} (every copy made so "
                            "far is whole; the next pass goes on from there)")

    def _load(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as f:
                snapshot = json.load(f)
            files = snapshot.pop("files")
            if not all(isinstance(v, list) and all(isinstance(i, str) for i in v) for v in files.values()):
                raise ValueError("an entry is not a list of versions")
            self.entries = {k: list(v) for k, v in files.items()}
            self.meta = snapshot
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, AttributeError, TypeError) as exc:
            raise OpsError(f"the migration journal {self.path} is damaged ({exc}); move it away to start "
                           "the journal afresh (files deleted here before that will stay on the target)") from None
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().split(b"\n")
        except FileNotFoundError:
            return
        for number, line in enumerate(lines, 1):
            try:
                self._apply(json.loads(line))
            except (ValueError, IndexError, TypeError, KeyError):
                # The changes after a bad line still count. The last piece, without its newline,
                # is the torn write of a killed pass: expected. Anything else is damage, reported.
                if number < len(lines):
                    self.damaged_lines += 1

    def _apply(self, change: list) -> None:
        if not isinstance(change, list) or not all(isinstance(part, str) for part in change):
            raise ValueError(change)
        op, relpath = change[0], change[1]
        if op == "+":  # about to put this version there: it joins the known ones
            known = self.entries.setdefault(relpath, [])
            if change[2] not in known:
                known.append(change[2])
        elif op == "=":  # the target holds exactly this version of ours
            self.entries[relpath] = [change[2]]
        elif op == "-":
            self.entries.pop(relpath, None)
        else:
            raise ValueError(op)

    def _record(self, change: list) -> None:
        self._apply(change)
        if self._log is not None:
            self._append((json.dumps(change) + "\n").encode("ascii"))  # ASCII: names that are not UTF-8 round-trip
            self._changes += 1
            if (self._changes >= SNAPSHOT_EVERY_CHANGES
                    or time.monotonic() - self._snapshot_at >= SNAPSHOT_EVERY_SECONDS):
                self.snapshot()

    def _append(self, line: bytes) -> None:
        """One line into the log, in the kernel before the target changes (survives kill -9). A
        write that fails half-way is cut off again, so the next line does not land glued to it."""
        done = 0
        try:
            while done < len(line):
                done += self._log.write(line[done:])  # a short write, then ENOSPC on the rest
        except OSError as exc:
            try:
                os.ftruncate(self._log.fileno(), self._log_size)
            except OSError:
                pass  # the next pass cuts a torn last line anyway
            raise self._failed(exc, self.log_path) from None
        self._log_size += len(line)

    def intend(self, relpath: str, identity: str) -> None:
        self._record(["+", relpath, identity])

    def confirm(self, relpath: str, identity: str) -> None:
        if self.entries.get(relpath) != [identity]:
            self._record(["=", relpath, identity])

    def forget(self, relpath: str) -> None:
        if relpath in self.entries:
            self._record(["-", relpath])

    def snapshot(self, **meta) -> None:
        """Write every entry to the snapshot atomically, then empty the log it now contains."""
        if self._log is None:
            return
        self.meta.update(meta, target=self.target, updated=time.time())
        tmp = f"{self.path}.tmp-{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({**self.meta, "files": self.entries}, f, separators=(",", ":"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            _unlink_quietly(tmp)  # the log still holds every change: nothing is lost
            raise self._failed(exc, self.path) from None
        self._log.truncate(0)  # a crash before this replays changes the snapshot already has: harmless
        self._log_size = 0
        self._changes = 0
        self._snapshot_at = time.monotonic()

    def close(self, **meta) -> None:
        """Write the snapshot and release the lock; the lock is released even when the snapshot
        fails (JournalError), and the log then keeps the changes for the next pass."""
        if self._log is not None:
            try:
                self.snapshot(**meta)
            finally:
                self._log.close()  # releases the lock
                self._log = None
