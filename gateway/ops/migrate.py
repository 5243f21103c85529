"""``gateway migrate``: bring a server's local cv-storage onto shared storage without losing an object.

The source is a ``local`` store of the node's settings; the target a directory, the share's mount
point, which may already hold other servers' trees (several servers merge into one share). The
layout is the same on both sides (plugins/fslayout.py), so migrating is copying files, with rules
for the files both sides have:

- an object file (``%obj``, also the parts and records of uploads in ``.multipart``): copied when
  the target lacks it; left alone when the target holds the same version (same header: key,
  size, ETag, time, metadata); otherwise the newer header ``time`` wins, so a version another
  server or a gateway on the share wrote later is kept and reported;
- any other file (``%bucket.json``, ``%name``): copied when missing, the target's kept otherwise
  (every server has its own ``%bucket.json`` for a bucket; the first one on the share stays);
- a bucket directory without files is made on the target too;
- a source object file that is damaged is reported, not copied, and fails the pass.

Passes repeat safely while the gateway serves: each copy is published by rename, a version is
never replaced by an older one, and the journal (migrate_journal.py) lets a later pass remove from
the target what was deleted here since. The procedure (docs/migration.md): a pass online, stop
the gateway, the same command again, then switch the config to ``sharedfs``.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import os
import time
from dataclasses import dataclass, field

from gateway.errors import FAILED_ERRNOS
from gateway_plugins import fslayout, fsutil

from .migrate_checks import check_target, choose_source
from .migrate_copy import DamagedSource, TempFiles, copy_file
from .migrate_journal import Journal, JournalError
from .progress import Progress
from .stores import OpsError, Store
from .tree import (Installer, UnreadableTree, bucket_dirs, count_files, is_object, make_dirs, object_header,
                   walk_files)

LAYOUT_FILES = (fslayout.BUCKET_FILE, fslayout.NAME_FILE)
# A source file whose status changed this long before the pass started still counts as changed
# during it: file times come from the kernel's coarse clock, a little behind time.time().
CLOCK_SLACK = 1.0
FULL = (errno.ENOSPC, errno.EDQUOT)


class TargetFull(OpsError):
    """The target has no room left: the pass stops (every copy after this one would fail too)."""


class TargetFailed(OpsError):
    """The target's filesystem fails (EIO, EROFS, ESTALE): the pass stops, as for TargetFull."""


@dataclass
class MigrateResult:
    source: Store
    target: str
    dry_run: bool
    journal: str
    copied: int = 0
    copied_bytes: int = 0
    already: int = 0
    replaced: int = 0
    replaced_bytes: int = 0
    kept_newer: list[str] = field(default_factory=list)
    removed: int = 0
    left_alone: int = 0  # deleted here, but the target's copy at that path is no longer ours
    layout_copied: int = 0
    layout_already: int = 0
    layout_kept: int = 0
    buckets_made: int = 0
    other_files: list[str] = field(default_factory=list)  # not of the layout: copied as they are
    errors: list[str] = field(default_factory=list)
    damaged: int = 0  # of the errors: source object files that are not valid, left out
    verified: int = 0
    missing: list[str] = field(default_factory=list)
    # Files the verification could not check, the target failing to answer: not known to be missing.
    unchecked: int = 0
    unchecked_reason: str = ""
    changed_during: int = 0

    @property
    def complete(self) -> bool:
        """Every object of the source is on the target (same or newer), and nothing failed."""
        return not self.errors and not self.missing and not self.unchecked


# Objects: what is a version, which one wins --------------------------------------------------

def object_identity(header: dict) -> str:
    """One version of an object: its ETag and a hash of the whole header.

    The header holds the MD5 ETag of the data (computed when it was written), size, time and
    metadata, so equal headers are the same PUT. Comparing headers costs one small read per side
    where a SHA-256 of the files would read every byte of both trees on every pass; each copy's
    bytes are verified separately when it is made."""
    canonical = json.dumps(header, sort_keys=True, separators=(",", ":"))
    return f"{header.get('etag')}:{hashlib.sha256(canonical.encode()).hexdigest()[:16]}"


def read_object_header(source) -> tuple[dict, int, int]:
    """(header, data offset, file size) of an open object file; DamagedSource when it is not one."""
    try:
        header, offset, _ = fslayout.read_header(source.fileno())
    except (fslayout.CorruptObject, ValueError) as exc:
        raise DamagedSource(f"not a valid object file ({exc})") from None
    size = os.fstat(source.fileno()).st_size
    if not (isinstance(header, dict) and isinstance(header.get("key"), str) and isinstance(header.get("etag"), str)
            and isinstance(header.get("size"), int) and isinstance(header.get("time"), (int, float))):
        raise DamagedSource("not a valid object file (its header lacks key, size, etag or time)")
    if offset + header["size"] != size:
        raise DamagedSource(f"not a valid object file (the header says {header['size']} bytes of data, "
                            f"the file holds {size - offset})")
    return header, offset, size


def exists(path: str) -> bool:
    """Whether a file is there; unlike os.path.lexists, an I/O error of the mount (EIO, a stale
    handle) raises instead of passing for "missing", which would replace or remove a file."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    return True


def target_object(path: str) -> tuple[bool, dict | None]:
    """(a file is there, its header when it is a whole object file); an I/O error raises (see exists).

    A file whose length is not what its header says (cut short by a full disk or a crash of the
    share) has no usable header: the same header with fewer bytes is not the same version."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):  # (a file where a directory of the path should be)
        return False, None
    try:
        header, offset, _ = fslayout.read_header(fd)
        size = os.fstat(fd).st_size
    except (fslayout.CorruptObject, ValueError, IsADirectoryError):
        return True, None
    finally:
        os.close(fd)
    if not isinstance(header, dict) or not isinstance(header.get("size"), int) or offset + header["size"] != size:
        return True, None
    return True, header


def _dir_identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def decide(header: dict, target_exists: bool, target_header: dict | None) -> str:
    """copy, replace, already (the same version) or kept (the target's is newer, or as new)."""
    if target_header is None:
        return "replace" if target_exists else "copy"  # a damaged file on the target is replaced
    if object_identity(target_header) == object_identity(header):
        return "already"
    try:
        newer_there = float(target_header.get("time", 0)) >= float(header["time"])
    except (TypeError, ValueError):
        newer_there = False
    return "kept" if newer_there else "replace"


def _when(t) -> str:
    try:
        return datetime.datetime.fromtimestamp(float(t), datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


# One pass ------------------------------------------------------------------------------------

class Migration:
    def __init__(self, source: Store, target: str, dry_run: bool = False, quiet: bool = False, stream=None):
        self.source = source
        self.target = target
        self.dry_run = dry_run
        self.quiet = quiet
        self.stream = stream
        self.journal = Journal(source.root, target, writable=not dry_run)
        self.result = MigrateResult(source, target, dry_run, self.journal.path)
        self.installer: Installer | None = None
        self.temps: TempFiles | None = None
        self.damaged: set[str] = set()
        self.buckets_with_files: set[str] = set()  # their directories are made by the copies
        self.progress: Progress | None = None
        self._source_dir = _dir_identity(source.root)

    def prepare(self) -> None:
        """Take the journal (and its lock) and the target's temp directory; an OSError here means
        the source or the target cannot be written, before any file was touched."""
        self.journal.open()
        if self.journal.damaged_lines:
            Progress("migrate", stream=self.stream).note(
                f"warning: {self.journal.damaged_lines} lines of the journal {self.journal.log_path} are damaged and "
                "were skipped: objects deleted here that those lines recorded may stay on the target (check after "
                "the final pass)")
        if os.stat(self.target).st_dev == os.stat(self.source.root).st_dev:
            Progress("migrate", stream=self.stream).note(
                f"warning: the target {self.target} is on the same filesystem as the store {self.source.root}, "
                "not on a share of its own: if the shared storage is not mounted there, this copies onto this "
                "server's disk (check with `findmnt " + self.target + "`; Ctrl-C stops the pass, run it again "
                "once the share is mounted)")
        if not self.dry_run:
            try:
                self.installer = Installer(self.target)  # makes .gateway/tmp/<host>/ on the target
                self.temps = TempFiles(self.installer.tmp_dir)
                self.temps.remove_dead()  # what a migration killed earlier left half-written
            except BaseException:
                self.journal.close()
                raise

    def src(self, relpath: str) -> str:
        return os.path.join(self.source.root, *relpath.split("/"))

    def dst(self, relpath: str) -> str:
        return os.path.join(self.target, *relpath.split("/"))

    def run(self) -> MigrateResult:
        """The pass, after prepare(): copy, remove what was deleted here, verify.

        A full disk stops it (TargetFull, JournalError): on the target every later copy would fail
        too, and without the journal no copy may be made."""
        try:
            self._run()
        except BaseException as exc:
            if self.progress is not None and isinstance(exc, OpsError):
                self.progress.interrupt()  # the error comes on a line of its own (Ctrl-C makes its own)
            try:
                self._close_journal()
            except JournalError:
                pass  # the error that stopped the pass is the one to report
            raise
        self._close_journal()
        return self.result

    def _close_journal(self) -> None:
        self.journal.close(source=self.source.root, store=self.source.name, last_pass=self._pass_record())

    def _target_failed(self, exc: OSError) -> bool:
        """Whether ``exc`` is the target's filesystem failing, not the store's: by the file it names,
        else (a write or read of an open file names none) by asking the target once more."""
        if exc.errno not in FAILED_ERRNOS:
            return False
        if exc.filename:
            return _inside(str(exc.filename), self.target)
        try:
            os.stat(self.target)
            os.listdir(self.installer.tmp_dir if self.installer else self.target)
        except OSError:
            return True
        return False

    def _target_down(self, exc: OSError) -> TargetFailed:
        r = self.result
        where = f" ({exc.filename})" if exc.filename else ""
        return TargetFailed(
            f"the target {self.target} failed ({exc.strerror or exc}, errno {exc.errno}){where}: the pass stopped "
            f"after copying {r.copied + r.replaced:,} objects. Check the share (`dmesg`, the mount, the server "
            "exporting it) and run the same command again once it works; every copy made so far is whole and in "
            "the journal, the next pass goes on from there")

    def _source_unreadable(self, exc: Exception) -> OpsError:
        return OpsError(f"the store {self.source.root} could not be read: {exc}. Check the disk holding it "
                        "(`dmesg`) and run the pass again")

    def _run(self) -> None:
        started = time.time() - CLOCK_SLACK
        files = nbytes = 0
        try:
            files, nbytes = count_files([self.source.root], "migrate", self.stream, self.quiet)
            self.progress = Progress("migrate", files, nbytes, stream=self.stream, quiet=self.quiet)
            self._copy_all()
            self.progress.done()
            # What the copy walked, files written meanwhile included: the verification's total.
            files, nbytes = self.progress.files, self.progress.bytes
            self._remove_deleted()
            self._make_empty_buckets()
        except (JournalError, TargetFull, TargetFailed):
            raise
        except OSError as exc:
            if exc.errno in FULL:  # making a bucket's directory on the target
                raise self._target_full(exc) from None
            if self._target_failed(exc):
                raise self._target_down(exc) from None
            self._error(str(exc.filename or ""), exc)
        except UnreadableTree as exc:  # walking the store (the target is never walked)
            self._error("", self._source_unreadable(exc))
        except OpsError as exc:  # the pass is not complete
            self._error("", exc)
        if not self.dry_run:
            self._verify(started, files, nbytes)

    def _target_full(self, exc: OSError) -> TargetFull:
        r = self.result
        return TargetFull(
            f"the target {self.target} is full ({exc.strerror or exc}): the pass stopped after copying "
            f"{r.copied + r.replaced:,} objects. Free space there (or grow the share) and run the same command "
            "again; every copy made so far is whole and in the journal, the next pass goes on from there")

    def _pass_record(self) -> dict:
        r = self.result
        return {"time": time.time(), "dry_run": r.dry_run, "copied": r.copied, "replaced": r.replaced,
                "removed": r.removed, "errors": len(r.errors), "missing": len(r.missing)}

    def _error(self, relpath: str, exc: Exception) -> None:
        text = getattr(exc, "strerror", None) or str(exc)
        message = f"{relpath}: {text}" if relpath else str(text)
        self.result.errors.append(message)
        (self.progress or Progress("migrate", stream=self.stream)).note(f"error: {message}")

    def _make_empty_buckets(self) -> None:
        """A bucket directory is a bucket even without a file (made by hand, or its %bucket.json lost)."""
        for bucket in bucket_dirs(self.source.root):
            if bucket not in self.buckets_with_files and not fsutil.is_dir(self.dst(bucket)):
                if not self.dry_run:
                    make_dirs(self.dst(bucket), self.installer.owner)
                self.result.buckets_made += 1

    def _copy_all(self) -> None:
        for f in walk_files(self.source.root):
            self.buckets_with_files.add(f.relpath.split("/", 1)[0])
            try:
                if is_object(f.relpath):
                    self._object(f.relpath)
                else:
                    self._other_file(f.relpath)
            except DamagedSource as exc:
                self.damaged.add(f.relpath)
                self.result.damaged += 1
                self._error(f.relpath, exc)
            except JournalError:
                raise
            except OSError as exc:
                if exc.errno in FULL:  # only the target is written here (the journal raises JournalError)
                    raise self._target_full(exc) from None
                if self._target_failed(exc):  # every later file would fail too: one message, not thousands
                    raise self._target_down(exc) from None
                if exc.errno in FAILED_ERRNOS:  # the target answers: the store's disk failed
                    exc = OpsError(f"cannot read it from the store: {exc.strerror or exc} (errno {exc.errno}); "
                                   "check the disk holding the store (`dmesg`)")
                self._error(f.relpath, exc)
            except OpsError as exc:
                self._error(f.relpath, exc)
            self.progress.add(1, f.size)

    def _object(self, relpath: str) -> None:
        target = self.dst(relpath)
        try:
            source = open(self.src(relpath), "rb", buffering=0)
        except FileNotFoundError:
            return  # deleted since the walk listed it: the next pass sees the deletion
        with source:
            header, offset, size = read_object_header(source)
            identity = object_identity(header)
            action = decide(header, *target_object(target))
            if action in ("copy", "replace") and not self.dry_run:
                self.journal.intend(relpath, identity)  # before the target changes (migrate_journal.py)
                decided = [action]

                def still_wanted() -> bool:  # a gateway on the share may have written it meanwhile
                    decided[0] = decide(header, *target_object(target))
                    return decided[0] in ("copy", "replace")

                copied = copy_file(source, size, target, self.temps.new_path(),
                                   mtime=os.fstat(source.fileno()).st_mtime, data_offset=offset,
                                   etag=header["etag"], still_wanted=still_wanted, owner=self.installer.owner)
                action = decided[0]
                if copied is not None:
                    installed = object_header(target)
                    if installed is None or object_identity(installed) != identity:
                        raise OpsError("after the copy the target holds another version; run the pass again")
        self._count_object(relpath, action, header, size)

    def _count_object(self, relpath: str, action: str, header: dict, size: int) -> None:
        r = self.result
        identity = object_identity(header)
        if action == "already":
            r.already += 1
            self.journal.confirm(relpath, identity)
        elif action == "kept":
            there = object_header(self.dst(relpath)) or {}
            r.kept_newer.append(f"{relpath.split('/', 1)[0]}/{header['key']} (target {_when(there.get('time'))}, "
                                f"this server {_when(header['time'])})")
            self.journal.forget(relpath)  # the version there is not ours: a deletion here must not touch it
        else:
            if action == "copy":
                r.copied, r.copied_bytes = r.copied + 1, r.copied_bytes + size
            else:
                r.replaced, r.replaced_bytes = r.replaced + 1, r.replaced_bytes + size
            self.journal.confirm(relpath, identity)

    def _other_file(self, relpath: str) -> None:
        target = self.dst(relpath)
        if relpath.rsplit("/", 1)[-1] not in LAYOUT_FILES:
            self.result.other_files.append(relpath)
        try:
            source = open(self.src(relpath), "rb", buffering=0)
        except FileNotFoundError:
            return
        with source:
            size = os.fstat(source.fileno()).st_size
            identity = "sha256:" + _sha256_of(source)
            if exists(target):
                if fsutil.is_file(target) and "sha256:" + _sha256_of_path(target) == identity:
                    self.result.layout_already += 1
                    self.journal.confirm(relpath, identity)
                else:
                    self.result.layout_kept += 1  # e.g. the first server's %bucket.json of a shared bucket
                return
            if not self.dry_run:
                self.journal.intend(relpath, identity)
                copied = copy_file(source, size, target, self.temps.new_path(),
                                   mtime=os.fstat(source.fileno()).st_mtime,
                                   still_wanted=lambda: not exists(target), owner=self.installer.owner)
                if copied is None:
                    self.result.layout_kept += 1
                    self.journal.forget(relpath)
                    return
                if "sha256:" + copied != identity:
                    raise OpsError("the file changed while it was copied; run the pass again")
                self.journal.confirm(relpath, identity)
            self.result.layout_copied += 1

    def _remove_deleted(self) -> None:
        """Remove from the target what this server put there and has deleted since (journal)."""
        if _dir_identity(self.source.root) != self._source_dir:
            raise OpsError(f"the directory {self.source.root} is not the one this pass started on (unmounted?): "
                           "nothing was removed from the target; run the pass again")
        gone = [p for p in self.journal.entries if not exists(self.src(p))]
        # Objects first, then layout files deepest first: a %name or %bucket.json goes only with
        # the last file of its directory.
        gone.sort(key=lambda p: (not is_object(p), -p.count("/"), p))
        for relpath in gone:
            try:
                self._remove_one(relpath)
            except JournalError:
                raise
            except OSError as exc:
                if self._target_failed(exc):
                    raise self._target_down(exc) from None
                self._error(relpath, exc)  # the journal keeps it: the next pass tries again
            except OpsError as exc:
                self._error(relpath, exc)

    def _remove_one(self, relpath: str) -> None:
        target = self.dst(relpath)
        # A target that cannot be read raises here: only a file that is not there (or not ours to
        # judge) lets the journal forget it, never an I/O error.
        if is_object(relpath):
            header = object_header(target)
            current = object_identity(header) if header is not None else None
        else:
            current = "sha256:" + _sha256_of_path(target) if fsutil.is_file(target) else None
        if current is None:
            self.journal.forget(relpath)
            return
        if current not in self.journal.entries[relpath]:
            self.result.left_alone += 1  # written there by another server since: not ours to delete
            self.journal.forget(relpath)
            return
        if not is_object(relpath) and len(os.listdir(os.path.dirname(target))) > 1:
            return  # the directory still holds other files (another server's objects): it stays
        self.result.removed += 1
        if self.dry_run:
            return
        self.installer.remove(relpath)
        if relpath.count("/") == 1 and relpath.endswith("/" + fslayout.BUCKET_FILE):
            try:
                os.rmdir(os.path.dirname(target))  # a bucket deleted here, now empty on the target too
            except OSError:
                pass
        self.journal.forget(relpath)

    def _verify(self, started: float, total_files: int, total_bytes: int) -> None:
        """Walk the source again: every object must be on the target, whole (its length what its
        header says), in the same or a newer version. One written here after the pass started is
        counted apart: the next pass copies it. A target that fails to answer stops the walk: what
        is left is counted as not checked, never as missing."""
        progress = Progress("verify", total_files, total_bytes, stream=self.stream, quiet=self.quiet)
        r = self.result
        try:
            for f in walk_files(self.source.root):
                progress.add(1, f.size)
                if f.relpath in self.damaged:
                    continue  # reported already
                try:
                    ok = self._on_target(f.relpath)
                except OSError as exc:
                    if not self._target_failed(exc):
                        raise
                    self._not_checked(exc, max(total_files - progress.files + 1, 1))
                    break
                try:
                    changed = os.lstat(self.src(f.relpath)).st_ctime >= started
                except FileNotFoundError:
                    continue  # deleted meanwhile
                if ok:
                    r.verified += 1
                elif changed:
                    r.changed_during += 1
                else:
                    r.missing.append(f.relpath)
            if not r.unchecked:
                r.missing += [f"{b}/ (the bucket's directory)" for b in bucket_dirs(self.source.root)
                              if not fsutil.is_dir(self.dst(b))]
        except OSError as exc:
            if self._target_failed(exc):
                self._not_checked(exc, 1)
            else:
                r.missing.append(f"(the verification stopped: {exc})")
        except OpsError as exc:
            r.missing.append(f"(the verification stopped: {exc})")
        progress.done()

    def _on_target(self, relpath: str) -> bool:
        """Whether the source file at ``relpath`` is on the target (the same or a newer version); an
        I/O error of either side raises."""
        if not is_object(relpath):
            return exists(self.dst(relpath))
        header = object_header(self.src(relpath))
        there = target_object(self.dst(relpath))[1]
        return header is not None and there is not None and decide(header, True, there) != "replace"

    def _not_checked(self, exc: OSError, files: int) -> None:
        self.result.unchecked = files
        self.result.unchecked_reason = f"{exc.strerror or exc}, errno {exc.errno}" + (
            f", at {exc.filename}" if exc.filename else "")


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _sha256_of(source) -> str:
    digest = hashlib.sha256()
    source.seek(0)
    while chunk := source.read(1024 * 1024):
        digest.update(chunk)
    return digest.hexdigest()


def _sha256_of_path(path: str) -> str:
    with open(path, "rb", buffering=0) as f:
        return _sha256_of(f)


def migrate(settings, target: str, backend: str | None = None, dry_run: bool = False, quiet: bool = False,
            stream=None) -> MigrateResult:
    """One pass; OpsError (before anything is touched) for a bad source or target."""
    source = choose_source(settings, backend)
    target_real = check_target(source.root, target)
    migration = Migration(source, target_real, dry_run=dry_run, quiet=quiet, stream=stream)
    try:
        migration.prepare()
    except OSError as exc:
        if exc.errno in FULL:
            raise OpsError(f"cannot write {exc.filename or target}: {exc.strerror or exc}: that disk is full; free "
                           "space there and run again") from None
        raise OpsError(f"cannot write {exc.filename or target}: {exc.strerror or exc} (the journal goes under "
                       f"{source.root}/.gateway/migrate, temp files under {target_real}/.gateway/tmp)") from None
    return migration.run()
