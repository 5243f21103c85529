"""A store's files: walking them, reading an object's header, putting a file in place atomically.

A store's state is its files (docs/storage-layout.md, "What is safe to copy
and back up"): the bucket directories with their ``%bucket.json``, ``%name``
and ``%obj`` files, and ``.multipart`` for uploads in progress. ``.gateway``
holds only temp files and is never copied.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import re
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from gateway_plugins import fslayout, fsutil

from .stores import OpsError

SKIP_TOP = {".gateway"}  # the backends' temp files
CHUNK = 1024 * 1024
MD5_ETAG = re.compile(r"[0-9a-f]{32}")  # a single PUT's ETag: the MD5 of the data (a multipart one ends "-N")
TEMP_TAG = "ops"  # in the names of the Installer's temp files: <pid>.<process start>-ops-<n>-<random>


@dataclass(frozen=True)
class StoreFile:
    relpath: str  # "/"-separated, relative to the store's root
    size: int


class UnreadableTree(OpsError):
    """A directory or file of the tree being walked could not be read (not a file that went away)."""


def walk_files(root: str) -> Iterator[StoreFile]:
    """Every file of the store under ``root``, in a stable order (sorted per directory).

    Symbolic links are followed, as the backends follow them (a bucket may be a link to another
    disk); a link back up the tree is walked once. A file that disappears while the walk runs
    (deleted or replaced by a running gateway) and a dangling link are left out; a directory that
    cannot be read raises, because skipping it would lose objects.
    """
    if not fsutil.is_dir(root):
        raise OpsError(f"{root} is not a directory: check the store's root (--data-dir or [backends.*].root)")
    top = os.stat(root)
    seen = {(top.st_dev, top.st_ino)}
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            entries = sorted(os.scandir(os.path.join(root, rel) if rel else root), key=lambda e: e.name)
        except FileNotFoundError:
            continue  # removed since its parent was read (a DELETE pruned an empty directory)
        except OSError as exc:
            raise UnreadableTree(f"cannot read the directory {os.path.join(root, rel)}: {exc.strerror or exc}") from None
        subdirs = []
        for entry in entries:
            if not rel and entry.name in SKIP_TOP:
                continue
            path = f"{rel}/{entry.name}" if rel else entry.name
            try:
                st = entry.stat()  # follows links
            except FileNotFoundError:
                continue
            except OSError as exc:  # an I/O error of the disk: a file skipped would be a file lost
                raise UnreadableTree(f"cannot read {entry.path}: {exc.strerror or exc} (errno {exc.errno})") from None
            if stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    subdirs.append(path)
            elif stat.S_ISREG(st.st_mode):
                yield StoreFile(path, st.st_size)
        stack.extend(reversed(subdirs))


def count_files(roots: list[str], label: str, stream=None, quiet: bool = False, clock=None) -> tuple[int, int]:
    """Files and bytes under ``roots``, for the totals of a progress line; says so while it counts.

    On a large NFS store the walk alone takes minutes: without a line of its own the tool looked
    hung before its first progress line."""
    from .progress import Progress

    progress = Progress(f"{label}: counting", stream=stream, quiet=quiet, **({"clock": clock} if clock else {}))
    for root in roots:
        for f in walk_files(root):
            progress.add(1, f.size)
    return progress.files, progress.bytes


def remove_dead_temps(tmp_dir: str, tag: str) -> int:
    """Remove the temp files in ``tmp_dir`` that a tool named with ``-<tag>-`` and whose process is
    gone (kill -9, a crash); return how many. A live writer's files, and other programs', stay."""
    removed = 0
    for entry in os.scandir(tmp_dir):
        if f"-{tag}-" in entry.name and not fsutil.temp_owner_alive(entry.name):
            fsutil.unlink_quietly(entry.path)
            removed += 1
    return removed


def bucket_dirs(root: str) -> list[str]:
    """The top-level directories that are buckets (a bucket may have no file at all)."""
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))  # links too


def is_object(relpath: str) -> bool:
    return relpath.endswith(fslayout.OBJ_SUFFIX)


def object_header(path: str) -> dict | None:
    """The JSON header of an object file (key, size, etag, time, ...), None when the file is
    gone or is not an object file. An I/O error (EIO, a stale NFS handle) raises, naming ``path``:
    taken for "not an object", it passed for a version that differs, or for a file gone."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        header, _, _ = fslayout.read_header(fd)
        return header
    except (fslayout.CorruptObject, ValueError, IsADirectoryError):
        return None
    except OSError as exc:
        exc.filename = exc.filename or path  # os.read names no file
        raise
    finally:
        os.close(fd)


def make_dirs(path: str, owner: tuple[int, int] | None = None) -> None:
    """os.makedirs(path, exist_ok=True), but a disk that fails raises its own error (makedirs takes
    every directory it cannot stat for missing, and reports the EEXIST of making the first one
    again), and without recursion (makedirs recurses once per level: a key of 1,000 "/" is 1,000
    nested directories, past Python's recursion limit). ``owner``: (uid, gid) given to each
    directory made (owner_for)."""
    missing = []
    parent = path
    while parent and not os.path.isdir(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for directory in reversed(missing):
        try:
            os.mkdir(directory)
        except FileExistsError:
            continue  # made meanwhile (a gateway's PUT), or there and unreadable: told below
        if owner is not None:
            give(directory, owner)
    if missing and not os.path.isdir(path):
        os.stat(path)  # the EIO, when that is what it was
        raise FileExistsError(errno.EEXIST, "File exists (not a directory)", path)


# What a filesystem that decides owners itself answers a chown: NFS with root_squash (root is nobody
# there), CIFS mounted with uid=/gid=, a process without CAP_CHOWN.
_OWNER_DECIDED_ELSEWHERE = (errno.EPERM, errno.EINVAL, errno.EOPNOTSUPP)


def give(target: str | int, owner: tuple[int, int]) -> None:
    """chown a path (or fchown an open descriptor) to ``owner``, where the filesystem lets us. On a
    share that refuses, the share's own rule makes the owner (the export's anonuid, the mount's
    uid=), which is what the gateway's user gets for its own files there too; failing the whole
    migration or restore for it would help no one."""
    try:
        if isinstance(target, int):
            os.fchown(target, *owner)
        else:
            os.chown(target, *owner)
    except OSError as exc:
        if exc.errno not in _OWNER_DECIDED_ELSEWHERE:
            raise


def owner_for(directory: str) -> tuple[int, int] | None:
    """The (uid, gid) the files a tool run as root puts under ``directory`` must have: its owner's,
    when that is another user (the gateway's service user). Restored as root:root 640/750, a store's
    files were unreadable to a gateway running as cv-gateway: every request on them a 500. None when
    this process is not root or the directory is root's (files keep this process's owner)."""
    if os.geteuid() != 0:
        return None
    try:
        st = os.stat(directory)
    except OSError:
        return None
    return None if st.st_uid == 0 else (st.st_uid, st.st_gid)


def file_sha256(path: str) -> str | None:
    """The SHA-256 of a file's bytes, None when there is no such file."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    return digest.hexdigest()


def check_relpath(relpath: str) -> str:
    """``relpath`` if it names a place inside a store; raise OpsError for anything that could
    leave the root (absolute, ``..``, empty segments) or land in ``.gateway``."""
    parts = relpath.split("/")
    if (not relpath or relpath.startswith("/") or any(p in ("", ".", "..") for p in parts)
            or "\x00" in relpath or parts[0] in SKIP_TOP):
        raise OpsError(f"refusing the path {relpath!r}: it is not a file of a store "
                       "(absolute, '..', or inside .gateway); the archive was not made by `gateway backup`")
    return relpath


class Installer:
    """Puts files into a store the way the backends do: a temp file under
    ``.gateway/tmp/<host>/`` (named so that a running gateway's start-up clean-up sees its writer
    is alive), fsync, then one rename over the final name. A reader never sees half a file."""

    def __init__(self, root: str, fsync: bool = True, host: str | None = None):
        self.root = root
        self.fsync = fsync
        self.owner = owner_for(root)  # run as root into a store the gateway's own user owns: files are its
        # ``host``: this server's directory, as the backend names it (a sharedfs store's host_id: servers
        # that share a host name, such as containers, must not take each other's temp files for dead).
        self.tmp_dir = os.path.join(root, ".gateway", "tmp", host or socket.gethostname() or "localhost")
        make_dirs(self.tmp_dir, self.owner)
        pid = os.getpid()
        self._owner = f"{pid}.{fsutil.process_start(pid) or 0}-{TEMP_TAG}"
        self._counter = itertools.count()

    def path(self, relpath: str) -> str:
        return os.path.join(self.root, *check_relpath(relpath).split("/"))

    def remove_dead_temps(self) -> int:
        """Remove the temp files of tools that died here (kill -9, a crash); return how many.

        A running gateway removes dead writers' temp files only when it starts, so without this a
        restore killed in the middle of a large object would leave that much disk taken for good,
        and on a full disk the rerun that should finish the job could fail for want of it. Only
        files named by these tools (``-ops-``) whose process is gone: never a gateway's."""
        return remove_dead_temps(self.tmp_dir, TEMP_TAG)

    def temp_path(self, suffix: str = "") -> str:
        """A new temp file name under tmp_dir, named for this process: remove_dead_temps takes it
        for a dead tool's once this process is gone."""
        return os.path.join(self.tmp_dir, f"{self._owner}-{next(self._counter)}-{os.urandom(4).hex()}{suffix}")

    def install(self, relpath: str, chunks, mtime: float | None = None, expect_sha256: str | None = None,
                replace: bool = True) -> int:
        """Write the byte chunks to ``relpath``; return the byte count. Without ``replace``, a file
        that is there by the time the bytes are written stays (FileExistsError)."""
        return write_atomically(self.path(relpath), self.temp_path(), chunks, mtime=mtime, expect_sha256=expect_sha256,
                                fsync=self.fsync, replace=replace, owner=self.owner)

    def make_dirs(self, relpath: str) -> None:
        make_dirs(self.path(relpath), self.owner)

    def remove(self, relpath: str) -> bool:
        """Delete one file (and the directories it leaves empty, up to its bucket)."""
        final = self.path(relpath)
        try:
            os.unlink(final)
        except FileNotFoundError:
            return False
        parent = os.path.dirname(final)
        stop = os.path.join(self.root, relpath.split("/")[0])
        while len(parent) > len(stop):
            try:
                os.rmdir(parent)
            except OSError:
                break  # not empty (or in use): the backends prune the same way
            parent = os.path.dirname(parent)
        return True


def write_atomically(final: str, tmp: str, chunks, mtime: float | None = None, expect_sha256: str | None = None,
                     mode: int = 0o644, fsync: bool = True, replace: bool = True,
                     owner: tuple[int, int] | None = None) -> int:
    """Write the byte chunks to ``tmp``, fsync, and rename it over ``final`` (making its directory);
    return the byte count. With ``expect_sha256``, bytes that hash to anything else are never
    renamed into place. On any error the temp file is removed and ``final`` is untouched.

    With ``replace=False`` a file that appeared at ``final`` meanwhile (a client's PUT while a
    restore ran) is never replaced: FileExistsError, and nothing is changed."""
    written = 0
    digest = hashlib.sha256() if expect_sha256 else None
    make_dirs(os.path.dirname(final), owner)
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as f:
            if owner is not None:
                give(f.fileno(), owner)
            for chunk in chunks:
                f.write(chunk)
                written += len(chunk)
                if digest is not None:
                    digest.update(chunk)
            if digest is not None and digest.hexdigest() != expect_sha256:
                raise OpsError(f"{final}: the bytes do not match their checksum; left as it was")
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        if mtime is not None:
            os.utime(tmp, (mtime, mtime))
        publish = os.replace if replace else publish_new
        try:
            publish(tmp, final)
        except FileNotFoundError:  # a DELETE pruned the directory meanwhile: make it again, once
            make_dirs(os.path.dirname(final), owner)
            publish(tmp, final)
    except BaseException as exc:
        fsutil.unlink_quietly(tmp)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = final  # a failed write names no file: "No space left on device" where?
        raise
    return written


def publish_new(tmp: str, final: str) -> None:
    """Put ``tmp`` at ``final`` only if nothing is there: a hard link fails with EEXIST atomically.
    Where the filesystem has no hard links (some SMB servers), check and rename: a small window."""
    try:
        os.link(tmp, final)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        if os.path.lexists(final):
            raise FileExistsError(errno.EEXIST, "already there", final) from None
        os.replace(tmp, final)
        return
    os.unlink(tmp)


def read_chunks(f, size: int, digest=None) -> Iterator[bytes]:
    """Exactly ``size`` bytes of ``f`` in chunks, hashing them into ``digest``; a file cut short
    raises OpsError instead of writing a short copy."""
    left = size
    while left:
        chunk = f.read(min(CHUNK, left))
        if not chunk:
            raise OpsError(f"ended {left} bytes early")
        if digest is not None:
            digest.update(chunk)
        left -= len(chunk)
        yield chunk
