"""``gateway backup``: one tar archive of a node's objects (and, on the primary, its settings).

Two kinds, as in the product this models:

- **full**, on the primary (or a stand-alone gateway): every file store of the
  node, the config file, the files it names (TLS certificate, key, CA) and the
  SQLite registry;
- **objects** (``-o``), on each redundant server in local mode: that server's
  own objects, which no other server has.

The archive is a plain POSIX tar that ``tar xf`` unpacks into a working
cv-storage tree (``cv-backup/storage/<backend>/...``), so a backup stays
readable without this tool. Members, in order:

- ``cv-backup/manifest.json``: kind, node, role, time, gateway version, stores;
- ``cv-backup/storage/<backend>/<path>``: the files of each store, each with
  its SHA-256 in the pax header ``SCHILY.xattr.user.cv-gateway.sha256`` (hashed from the same open
  file before it is copied, so the hash and the bytes are of one version even
  while the gateway replaces the object);
- ``cv-backup/files/<what>/<name>``: config, TLS files and registry (full only),
  with their original path in ``SCHILY.xattr.user.cv-gateway.path``;
- ``cv-backup/summary.json``: the counts, written last; an archive without it
  was cut short.

The archive is written to ``OUTPUT.partial`` and renamed when complete, so a
backup that failed half-way never looks like a finished one.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import glob
import hashlib
import io
import json
import os
import socket
import sqlite3
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field

from gateway import __version__
from gateway.errors import FAILED_ERRNOS, FULL_ERRNOS
from gateway_plugins import fslayout

from .peers import RegistryUnreadable, current_role, read_cluster
from .progress import Progress, human_bytes
from .stores import OpsError, Store, check_share_mounted, file_stores, node_name, sqlite_registry_path
from .tree import CHUNK, UnreadableTree, count_files, is_object, publish_new, read_chunks, walk_files

PREFIX = "cv-backup"
MANIFEST = f"{PREFIX}/manifest.json"
SUMMARY = f"{PREFIX}/summary.json"
DAMAGED_LISTED = 1000  # damaged object files named in the summary (all are counted)
STORAGE = f"{PREFIX}/storage"
FILES = f"{PREFIX}/files"
FORMAT = 1
SHA_HEADER = "SCHILY.xattr.user.cv-gateway.sha256"  # an xattr record: tar knows the form, no warning
PATH_HEADER = "SCHILY.xattr.user.cv-gateway.path"


@dataclass
class BackupResult:
    kind: str
    output: str
    objects: int = 0
    files: int = 0
    bytes: int = 0
    vanished: int = 0  # deleted while the backup ran: not in the archive, and not an error
    # Object files that are damaged (no valid header, or not the length their header says): in the
    # archive as they are, and reported ("path (what is wrong)").
    not_objects: list[str] = field(default_factory=list)
    extra_files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def plan(settings, objects_only: bool, include_shared: bool = False) -> tuple[str, list[Store], list[str], str | None]:
    """What a backup of this node holds: (kind, stores, notes, this node's role); OpsError when this
    node is not the place for this kind of backup. The role is the registry's for a full backup
    on a node whose settings say redundant (a failover or `cluster promote` made it the primary).

    An objects-only backup leaves shared stores to the primary's full backup, unless
    ``include_shared`` or the registry says the primary keeps its objects on its own disk: then
    no node's backup would hold the share (a mixed cluster), so this one does."""
    stores, others = file_stores(settings)
    role = settings.role
    notes = []
    if role == "proxy":
        raise OpsError("this node is a proxy and stores no objects: take the full backup on the primary "
                       "(`gateway backup`), and an objects-only backup (`gateway backup -o`) on each redundant server")
    if objects_only:
        shared = [s for s in stores if s.shared]
        local = [s for s in stores if not s.shared]
        if shared and not include_shared:
            include_shared = _share_outside_primary_backup(settings, notes)
        if include_shared:
            for s in shared:
                notes.append(f"in this backup: backend {s.name!r}, shared storage ({s.root}), as the primary's "
                             "full backup does not hold it")
        else:
            for s in shared:
                notes.append(f"not in this backup: backend {s.name!r} is shared storage ({s.root}); the primary's "
                             "full backup holds its objects (if the primary does not use this share, add "
                             "--include-shared)")
            if not local:
                where = ", ".join(f"{s.name!r} at {s.root}" for s in stores) or "none"
                raise OpsError(f"this node keeps no objects of its own (file stores: {where}; all shared): "
                               "objects-only backups are for servers in local mode. Take the full backup on the "
                               "primary; if the primary does not use this share (a cluster part-way through a "
                               "migration, or after a failover to a server in local mode), back the share up "
                               "here with `gateway backup -o --include-shared`")
            stores = local
    else:
        if role == "redundant":
            # The registry decides: a failover or `cluster promote` makes a redundant node the primary.
            role = current_role(settings, notes)
        if role == "redundant":
            raise OpsError("this node is a redundant secondary: full backups are taken on the primary. "
                           "Back up this server's own objects with `gateway backup -o`")
    if not objects_only and role == "primary" and any(not s.shared for s in stores):
        notes.append("this backup holds the primary's own objects: take `gateway backup -o` on each "
                     "redundant server in local mode too, they keep objects the primary does not have")
    for name in others:
        notes.append(f"not in this backup: backend {name}, which does not keep files here; "
                     "back it up with that system's own tools")
    if not stores:
        raise OpsError("this node has no file store to back up (configured backends: "
                       f"{', '.join(others) or 'none'})")
    for store in stores:
        check_share_mounted(store)
    return ("objects" if objects_only else "full"), stores, notes, role


def _share_outside_primary_backup(settings, notes: list[str]) -> bool:
    """Whether the registry says the primary keeps its objects on its own disk (local mode): its full
    backup then holds none of this node's shared stores (noted). False when not known."""
    try:
        view = read_cluster(settings)
    except RegistryUnreadable:
        return False
    if view is None or view.primary is None or view.primary == view.here or view.primary_on_share is not False:
        return False
    notes.append(f"the primary {view.primary} keeps its objects on its own disk (local mode), so its full backup "
                 "does not hold this node's shared storage: this backup holds it")
    return True


def create_backup(settings, output: str, objects_only: bool = False, config_file: str | None = None,
                  quiet: bool = False, stream=None, include_shared: bool = False) -> BackupResult:
    kind, stores, notes, role = plan(settings, objects_only, include_shared)
    stream = stream or sys.stderr
    to_stdout = output == "-"
    if to_stdout:
        _check_stdout()
    elif os.path.isdir(output):
        leftovers = sorted(glob.glob(os.path.join(glob.escape(output), "cv-backup-*.tar.partial")))
        if leftovers:  # a kill -9 or a crash leaves them; the new archive gets a new name and never sees them
            notes.append(f"{output} holds {len(leftovers)} unfinished archive(s) of an earlier backup that was killed "
                         f"(or is still running): {', '.join(map(os.path.basename, leftovers))}; restore refuses "
                         "them as cut short: delete them once no backup runs")
        output = _new_name_in(output, kind)
    else:
        _check_output_dir(output)
    if not to_stdout:
        for store in stores:
            inside, root = os.path.realpath(os.path.dirname(os.path.abspath(output))), os.path.realpath(store.root)
            if inside == root or inside.startswith(root + os.sep):
                raise OpsError(f"{output} is inside the store it would back up ({store.root}): the archive would "
                               "copy itself. Write it somewhere else")
    for note in notes:
        stream.write(f"note: {note}\n")
    total_files, total_bytes = count_files([s.root for s in stores], f"backup ({kind})", stream, quiet)
    result = BackupResult(kind, output, notes=notes)
    partial = output + ".partial"
    if to_stdout:
        sink = _Sink(sys.stdout.buffer, None)
    else:
        if os.path.exists(output):
            raise OpsError(f"{output} already exists: give a new file name, or a directory to name it after the time")
        sink = _Sink(_open_partial(partial), partial)
    progress = Progress(f"backup ({kind})", total_files, total_bytes, stream=stream, quiet=quiet)
    try:
        with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT, bufsize=CHUNK) as tar:
            _add_json(tar, MANIFEST, _manifest(settings, kind, role, stores, notes))
            for store in stores:
                _add_store(tar, store, result, progress)
            if kind == "full":
                _add_node_files(tar, settings, config_file, result, progress)
            _add_json(tar, SUMMARY, {"objects": result.objects, "files": result.files, "bytes": result.bytes,
                                     "extra_files": result.extra_files,
                                     # Named again by restore and restore --check: the archive outlives the run's output.
                                     "damaged": result.not_objects[:DAMAGED_LISTED],
                                     "damaged_count": len(result.not_objects),
                                     "finished": datetime.datetime.now(datetime.timezone.utc).isoformat()})
        sink.flush()
        if not to_stdout:
            sink.fsync()
            try:
                publish_new(partial, output)  # never over a file that appeared meanwhile
            except FileExistsError:
                sink.close()
                raise _Finished(f"{output} appeared while the backup ran and was left alone; the finished backup "
                                f"is {partial}: rename it") from None
            sink.close()
    except _Finished:
        raise
    except BaseException as exc:
        if to_stdout:
            raise
        left = _discard(sink, partial)
        if isinstance(exc, _ArchiveWriteFailed):
            raise OpsError(exc.describe(left)) from None
        if isinstance(exc, _StoreReadFailed):
            raise OpsError(f"{exc}; {_what_became_of(partial, left)}") from None
        if isinstance(exc, UnreadableTree):  # walking the store
            raise OpsError(f"{exc}: reading the store failed, not writing the archive; check the disk holding the "
                           f"store (`dmesg`) and take the backup again; {_what_became_of(partial, left)}") from None
        # Ctrl-C, SIGTERM or another OSError: the command line says it, with what became of the archive.
        exc.unfinished_archive = _what_became_of(partial, left)
        raise
    summary = f"{result.objects:,} objects, {human_bytes(result.bytes)} in {output if not to_stdout else 'stdout'}"
    if result.vanished:
        summary += f"; {result.vanished:,} files were deleted while the backup ran and are not in it"
    progress.done(summary)
    for damaged in result.not_objects[:20]:
        progress.note(f"warning: {damaged}; it is in the backup as it is (the gateway cannot serve it correctly "
                      "either: put it back from an older backup, or delete the object)")
    if len(result.not_objects) > 20:
        progress.note(f"warning: ... and {len(result.not_objects) - 20:,} more damaged object files")
    return result


def _new_name_in(directory: str, kind: str) -> str:
    """An archive name in ``directory`` after the time, that no file there has yet: two backups in the
    same second (a retry, a script backing up twice) get -2, -3, ... instead of a refusal."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join(directory, f"cv-backup-{kind}-{socket.gethostname()}-{stamp}")
    name, number = f"{base}.tar", 1
    # A .partial counts as taken: another backup may be writing it this very moment.
    while os.path.lexists(name) or os.path.lexists(name + ".partial"):
        number += 1
        name = f"{base}-{number}.tar"
    return name


def _check_stdout() -> None:
    """Standard output must be a file or a pipe: tar written to a terminal is lost, and garbles it."""
    if sys.stdout is None:
        raise OpsError("standard output is closed: give a file or directory to write the backup to")
    if sys.stdout.isatty():
        raise OpsError("standard output is a terminal, not a place for a tar archive: redirect it to a file "
                       "or a pipe (`gateway backup - > backup.tar`, `gateway backup - | ssh host ...`), or give a "
                       "file or directory instead of -")


def _check_output_dir(output: str) -> None:
    """The archive's directory must exist: the backup names a missing one instead of the .partial file
    it could not create there."""
    if output.endswith(("/", os.sep)):
        if os.path.exists(output.rstrip("/" + os.sep)):
            raise OpsError(f"{output} is not a directory: give a directory, or a file name for the archive")
        raise OpsError(f"the directory {output} does not exist: create it (mkdir -p {output}) and run again, or "
                       "give an existing directory or a file name")
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        what = "is not a directory" if os.path.exists(parent) else "does not exist"
        raise OpsError(f"cannot write {output}: the directory {parent} {what}; create it (mkdir -p {parent}) and "
                       "run again, or give another place for the backup")


class _Sink:
    """Where the archive goes (its .partial file, or standard output). A write that fails says
    which, and what became of what was written: a bare "[Errno 28] No space left on device"
    leaves the operator guessing whether the archive's disk or a store's is full."""

    def __init__(self, f, partial: str | None):
        self._f, self.partial = f, partial

    def write(self, data) -> int:
        return self._call(self._f.write, data)

    def flush(self) -> None:
        self._call(self._f.flush)

    def fsync(self) -> None:
        self._call(os.fsync, self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def _call(self, operation, *args):
        try:
            return operation(*args)
        except OSError as exc:
            if self.partial is None:
                raise OpsError(self._stdout_failed(exc)) from None
            raise _ArchiveWriteFailed(self.partial, exc) from None

    @staticmethod
    def _stdout_failed(exc: OSError) -> str:
        # Not a file of ours: whatever received the bytes keeps them, cut short.
        return (f"writing the backup to standard output failed: {exc.strerror or exc}. What reached it is an "
                "unfinished archive (restore refuses it as cut short): delete it, fix the cause, and take the "
                "backup again")


class _ArchiveWriteFailed(OpsError):
    """Writing the archive's .partial file failed. The message is made once create_backup knows
    whether the unfinished file could be removed (on a failing disk its unlink fails too)."""

    def __init__(self, partial: str, exc: OSError):
        super().__init__(f"cannot write the archive {partial}: {exc.strerror or exc}")
        self.partial, self.exc = partial, exc

    def describe(self, left: OSError | None) -> str:
        return f"{self}; {_what_became_of(self.partial, left)}. {self._advice()}"

    def _advice(self) -> str:
        return _write_advice(self.exc.errno)


def _write_advice(code: int | None) -> str:
    """What to do when the archive cannot be written (errno ``code``)."""
    if code in FULL_ERRNOS:
        return "Free space there (or raise the limit), or write the backup to another disk"
    if code == errno.EROFS:
        return ("The directory is on a read-only filesystem (remounted so after disk errors? see `dmesg`): "
                "remount it read-write, or write the backup to another disk")
    if code in FAILED_ERRNOS:
        return (f"The disk holding the archive failed (errno {code}), not the store: check it (`dmesg`), or "
                "write the backup to another disk")
    if code in (errno.EACCES, errno.EPERM):
        return "This user may not write there: run the backup as a user who may, or write it to another directory"
    return "Fix the cause, or write the backup to another disk"


class _StoreReadFailed(OpsError):
    """Reading a file of a store failed: the store's disk, not the archive's (the message says which file)."""


def _what_became_of(partial: str, left: OSError | None) -> str:
    """What became of the unfinished archive; ``left`` is why it could not be removed."""
    if left is None:
        return "the unfinished archive was removed"
    return (f"the unfinished archive {partial} could not be removed ({left.strerror or left}): delete it once its "
            "disk works again (the next backup into that directory names it until then)")


class _Finished(OpsError):
    """The archive is complete, but could not take its name: it stays under the .partial name."""


def _open_partial(partial: str):
    """The archive being written, locked so that a second backup to the same name is refused
    (a .partial left by a killed backup is not locked: it is reused)."""
    try:
        # The archive can hold the secret key and the TLS key: readable by its owner only. Not through a
        # symbolic link (the archive would go wherever it points, and its name stay a link).
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OpsError(f"cannot write {partial}: it is a symbolic link; remove it, or give another "
                           "name") from None
        raise OpsError(f"cannot write {partial}: {exc.strerror or exc}. {_write_advice(exc.errno)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OpsError(f"another backup is writing {partial}: wait for it to end, or give another name") from None
    os.ftruncate(fd, 0)
    os.fchmod(fd, 0o600)  # a .partial left earlier (or made by someone else) keeps its mode otherwise
    return open(fd, "wb")


def _discard(sink, partial: str) -> OSError | None:
    """Remove the unfinished archive; the error when it could not be (None when it is gone)."""
    left = None
    try:
        os.unlink(partial)  # while still holding its lock
    except FileNotFoundError:
        pass
    except OSError as exc:
        left = exc
    try:
        sink.close()
    except OSError:
        pass  # a failing disk fails the close too; the error that stopped the backup is the one to report
    return left


def _manifest(settings, kind: str, role: str | None, stores: list[Store], notes: list[str]) -> dict:
    return {
        "format": FORMAT,
        "kind": kind,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "gateway_version": __version__,
        "node": node_name(settings),
        "role": role,  # the registry's when it moved the primary role here (plan)
        "hostname": socket.gethostname(),
        "stores": [{"name": s.name, "type": s.type, "root": s.root, "shared": s.shared} for s in stores],
        "registry": settings.registry,
        "notes": notes,
    }


def _add_json(tar: tarfile.TarFile, name: str, data: dict) -> None:
    raw = json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"
    info = tarfile.TarInfo(name)
    info.size = len(raw)
    info.mtime = int(datetime.datetime.now().timestamp())
    info.mode = 0o644
    info.pax_headers = {SHA_HEADER: hashlib.sha256(raw).hexdigest()}  # the manifest says where it all goes
    tar.addfile(info, io.BytesIO(raw))


def _add_store(tar: tarfile.TarFile, store: Store, result: BackupResult, progress: Progress) -> None:
    base = f"{STORAGE}/{store.name}"
    added_dirs = set()
    for entry in walk_files(store.root):
        top = entry.relpath.split("/", 1)[0]
        if top not in added_dirs and "/" in entry.relpath:
            added_dirs.add(top)
            _add_dir(tar, f"{base}/{top}")
        added = _add_file(tar, os.path.join(store.root, entry.relpath), f"{base}/{entry.relpath}")
        if added is None:
            result.vanished += 1
            progress.add(1, 0)
            continue
        size, first = added
        result.files += 1
        result.bytes += size
        if is_object(entry.relpath):
            result.objects += 1
            problem = _object_problem(first, size, top)
            if problem:
                result.not_objects.append(f"{os.path.join(store.root, entry.relpath)} {problem}")
        progress.add(1, size)
    # Buckets without a single file (made by hand, or emptied) are buckets too.
    for name in sorted(os.listdir(store.root)):
        if name not in added_dirs and not name.startswith(".") and os.path.isdir(os.path.join(store.root, name)):
            _add_dir(tar, f"{base}/{name}")


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = int(datetime.datetime.now().timestamp())
    tar.addfile(info)


def _add_file(tar: tarfile.TarFile, path: str, name: str, extra: dict | None = None,
              source: str = "the store", mode: int = 0o644) -> tuple[int, bytes] | None:
    """Add one file of ``source``, hashed first from the same open file; (size, first bytes) or None
    when it is gone. ``mode``: the member's, which `tar -xf` gives the file it extracts."""
    try:
        return _add_open_file(tar, path, name, extra, mode)
    except FileNotFoundError:
        return None
    except OSError as exc:
        # The archive's writes fail as _ArchiveWriteFailed, so an OSError here is the store's: a bare
        # "[Errno 5] Input/output error" would leave the operator checking the backup disk.
        raise _StoreReadFailed(f"cannot read {path}: {exc.strerror or exc} (errno {exc.errno}): reading {source} "
                               f"failed, not writing the archive; check the disk holding {source} (`dmesg`) and "
                               "take the backup again") from None


def _add_open_file(tar: tarfile.TarFile, path: str, name: str, extra: dict | None, mode: int) -> tuple[int, bytes]:
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        digest = hashlib.sha256()
        first = b""
        for chunk in read_chunks(f, st.st_size, digest):
            first = first or chunk[:fslayout.FIRST_READ]
        f.seek(0)
        info = tarfile.TarInfo(name)
        info.size = st.st_size
        info.mtime = int(st.st_mtime)
        info.mode = mode
        info.pax_headers = {SHA_HEADER: digest.hexdigest(), **(extra or {})}
        tar.addfile(info, _Exact(f, st.st_size, digest.hexdigest(), path))
    return st.st_size, first


class _Exact(io.RawIOBase):
    """The file's bytes as they were hashed: a file changed in place between the hash and the
    copy (written behind the gateway's back, which renames) fails the backup loudly."""

    def __init__(self, f, size: int, sha256: str, path: str):
        self._f, self._left, self._sha256, self._path = f, size, sha256, path
        self._hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(self._left if n < 0 else min(n, self._left))
        self._hash.update(data)
        self._left -= len(data)
        if (not data or not self._left) and self._hash.hexdigest() != self._sha256:
            raise OpsError(f"{self._path} changed while it was being copied (something writes it in place, "
                           "not through the gateway): stop that and take the backup again")
        return data


def _object_problem(first: bytes, size: int, bucket: str) -> str | None:
    """What is wrong with an object file of ``size`` bytes that starts with ``first``, None when
    nothing: its header does not parse, or the file is not as long as its header says (cut short
    by a crash or a full disk: served, it would break off)."""
    try:
        parsed = fslayout.decode_header(first)
    except (fslayout.CorruptObject, ValueError):
        parsed = None
    if parsed is None or not isinstance(parsed[0], dict):
        return "is not a valid object file (its header does not parse)"
    header, offset = parsed
    declared = header.get("size")
    if not isinstance(declared, int) or isinstance(declared, bool):
        return "is not a valid object file (its header gives no size)"
    if offset + declared != size:
        what = "cut short" if offset + declared > size else "longer than its header says"
        return (f"(object {bucket}/{header.get('key')}) is {what}: the header says {declared:,} bytes of data, "
                f"the file holds {size - offset:,}")
    return None


def _add_node_files(tar: tarfile.TarFile, settings, config_file: str | None, result: BackupResult,
                    progress: Progress) -> None:
    """The config file, the TLS files it names and the SQLite registry."""
    wanted = []
    if config_file:
        wanted.append(("config", config_file))
    for what in ("tls_cert", "tls_key", "tls_ca"):
        value = getattr(settings, what, None)
        if value:
            wanted.append((what, str(value)))
    for what, path in wanted:
        path = os.path.abspath(path)
        # 0600: the config holds the secret key, tls_key the node's private key; `tar -xf` of the archive
        # (what restore's messages suggest for a file it keeps) gave them 0644.
        if _add_file(tar, path, f"{FILES}/{what}/{os.path.basename(path)}", {PATH_HEADER: path},
                     source=f"the {what} file", mode=0o600) is None:
            raise OpsError(f"{what} file {path} is gone: fix the setting or the file, then take the backup again")
        result.extra_files.append(what)
    registry = sqlite_registry_path(settings)
    if registry and os.path.exists(registry):
        # The registry runs in WAL mode: copy it with SQLite's backup API, which gives one
        # consistent state while gateways keep writing heartbeats.
        with tempfile.TemporaryDirectory(prefix="cv-backup-") as tmp:
            copy = os.path.join(tmp, os.path.basename(registry))
            source = sqlite3.connect(registry, timeout=30)
            target = sqlite3.connect(copy)
            try:
                source.backup(target)
            finally:
                target.close()
                source.close()
            _add_file(tar, copy, f"{FILES}/registry/{os.path.basename(registry)}",
                      {PATH_HEADER: os.path.abspath(registry)}, source="the registry's copy", mode=0o600)
        result.extra_files.append("registry")
    elif settings.registry and not registry:
        result.notes.append("the etcd registry is not in this backup: take `etcdctl snapshot save` on an etcd member")
        progress.note("note: " + result.notes[-1])
