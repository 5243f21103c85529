"""Copying one file of a store onto the target for ``gateway migrate``, verified, and published
only if the target still wants it.

The file goes to a temp file in the target's ``.gateway/tmp/<host>/`` (the backends' own temp
directory on that filesystem, so the rename is atomic and a gateway's start-up clean-up knows the
name's owner: ``<pid>.<process start>-migrate-...``), is fsynced, read back and compared with
the hash taken while reading the source, and then renamed over the final name. Just before the
rename the caller decides again from the target's current file: a gateway on the share may have
written the same key while a large object was being copied, and its newer version must not be
replaced by ours.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable

from gateway_plugins import fsutil

from .stores import OpsError
from .tree import MD5_ETAG, file_sha256, give, make_dirs, read_chunks, remove_dead_temps

TEMP_TAG = "migrate"


class DamagedSource(OpsError):
    """The source file is not a usable object file; it is reported and not copied."""


class _Digests:
    """Feed one stream of chunks to several hashes (read_chunks takes one ``digest``)."""

    def __init__(self, *digests):
        self.digests = [d for d in digests if d is not None]

    def update(self, chunk: bytes) -> None:
        for digest in self.digests:
            digest.update(chunk)


class TempFiles:
    """Names for this process's temp files in a target's temp directory, and the clean-up of
    those a killed migration left there."""

    def __init__(self, tmp_dir: str):
        self.tmp_dir = tmp_dir
        pid = os.getpid()
        self._owner = f"{pid}.{fsutil.process_start(pid) or 0}-{TEMP_TAG}"
        self._counter = itertools.count()

    def new_path(self) -> str:
        return os.path.join(self.tmp_dir, f"{self._owner}-{next(self._counter)}-{os.urandom(4).hex()}")

    def remove_dead(self) -> int:
        """Remove the temp files of migrations that died (kill -9, a crash); never another
        program's, and never those of a migration still running."""
        return remove_dead_temps(self.tmp_dir, TEMP_TAG)


def copy_file(source, size: int, final: str, temp: str, *, mtime: float | None = None, data_offset: int = 0,
              etag: str | None = None, still_wanted: Callable[[], bool] = lambda: True,
              owner: tuple[int, int] | None = None) -> str | None:
    """Copy ``size`` bytes of the open ``source`` file (from its start) to ``final``; return their
    SHA-256, or None when ``still_wanted()`` said no just before the rename (nothing changed).
    ``owner``: (uid, gid) for the file and the directories made for it (tree.owner_for).

    With ``etag`` (a plain MD5 ETag), the bytes after ``data_offset`` (an object's data) must hash
    to it, else DamagedSource: the source object is damaged, and a copy would only spread it.
    """
    sha = hashlib.sha256()
    md5 = hashlib.md5() if etag and MD5_ETAG.fullmatch(etag) else None
    source.seek(0)
    try:
        with open(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "wb") as out:
            if owner is not None:
                give(out.fileno(), owner)
            out.writelines(read_chunks(source, data_offset, sha))  # an object's header ...
            out.writelines(read_chunks(source, size - data_offset, _Digests(sha, md5)))  # ... and its data
            out.flush()
            os.fsync(out.fileno())
        if md5 is not None and md5.hexdigest() != etag:
            raise DamagedSource(f"its data does not match its ETag {etag} (damaged on this disk)")
        if file_sha256(temp) != sha.hexdigest():
            raise OpsError("the copy written to the target reads back with other bytes (target storage fault?)")
        if mtime is not None:
            os.utime(temp, (mtime, mtime))
        if not still_wanted():
            fsutil.unlink_quietly(temp)
            return None
        make_dirs(os.path.dirname(final), owner)
        os.replace(temp, final)
    except BaseException:
        fsutil.unlink_quietly(temp)
        raise
    return sha.hexdigest()
