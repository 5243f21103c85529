"""The shared-filesystem backend: the local layout on NFS, EFS or SMB mounted at cv-storage.

Several gateways, on several servers, use one directory at once. It is the
local backend (same files, same layout, see fslayout.py) plus what sharing
needs; docs/shared-storage.md explains the consistency model and the mounts.

What makes concurrent gateways safe:

- Data and metadata are one file, written under ``.gateway/tmp/<host_id>/``
  as ``<pid>.<process start>-<n>-<random>`` (unique per host and process,
  created with O_EXCL) and published with one rename. Two servers writing the same key
  both rename; the server applies renames one at a time, so the last one
  wins and a reader sees one writer's whole file, never a mix.
- Nothing is cached in the process: every GET, HEAD and LIST goes to the
  filesystem, so a DELETE or PUT on another server is seen as soon as the
  kernel's own client cache lets it through (see the doc: NFS close-to-open,
  ``lookupcache``, ``actimeo``).
- Start-up cleanup removes only this host's temp files, only those of
  processes that are gone, and only when they have not been written for
  ``stale_temp_seconds``: a second machine wrongly sharing our host id
  keeps its in-flight uploads.
- Directory races between servers (one prunes an empty directory while
  another publishes into it) are retried; an SMB "file is open" refusal on
  rename or unlink (a GET on another server still holds the old version) is
  retried for ``busy_retry_seconds`` without blocking the event loop.
- A failing mount (stale handle, timeout, FUSE endpoint gone) is a 503 with
  an S3 error, not a 500.

Options (``[backends.NAME]``, with ``type = "sharedfs"``): those of the local
backend (``root``, ``fsync``, ``fsync_dirs``) and ``host_id`` (default: the
host name), ``require_mount`` (root must be a mount point; default false),
``stale_temp_seconds`` (default 600), ``busy_retry_seconds`` (default 5),
``name_encoding`` (``"native"``, or ``"smbnetfs"`` for a share mounted
through smbnetfs; see SmbnetfsNames).

The code is the local backend's; this class adds only what sharing needs:
start-up checks, the temp cleanup policy, busy retries, 503s for a failing
mount, and the name encoding (LocalBackend's _disk_name/_layout_name hook).
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import functools
import logging
import os
import time
import urllib.parse

from gateway import errors
from gateway.backend import BucketInfo, ByteRange, Capabilities, ListPage, ObjectInfo, ObjectMeta, ObjectReader
from gateway.cluster.wire import is_older
from gateway.hookspecs import hookimpl
from gateway.payload import Payload

from . import fsutil
from .local import LocalBackend, _open_if_present

log = logging.getLogger(__name__)

# How long to sleep between busy retries, growing to this cap.
BUSY_RETRY_FIRST = 0.02
BUSY_RETRY_CAP = 0.5
# How long the removal of a start-up probe file, and of a failed write's temp file, is retried.
PROBE_REMOVE_SECONDS = 2.0
LEFTOVER_REMOVE_SECONDS = 60.0
# A publish that found the target busy, waiting for put() to retry it (see _publish).
_deferred_publish: contextvars.ContextVar[list | None] = contextvars.ContextVar("deferred_publish", default=None)



def share_not_mounted(root: str, require_mount: bool) -> str | None:
    """Why ``root`` is not the share (None when it may be): the backend refuses to start on it, and
    backup and restore refuse it too. The root is never created: a missing root almost always means
    the share is not mounted, and creating it would quietly put objects on this server's own disk."""
    if not os.path.isdir(root):
        return f"root {root!r} does not exist or is not a directory"
    if require_mount and not os.path.ismount(os.path.realpath(root)):
        return f"root {root!r} is not a mount point and require_mount is set: the share is not mounted"
    return None

class NativeNames:
    """Names on the mount are the layout's names (NFS, EFS, kernel cifs, a local directory)."""

    native = True

    @staticmethod
    def encode(name: str) -> str:
        return name

    @staticmethod
    def decode(name: str) -> str:
        return name


class SmbnetfsNames:
    """Names through an smbnetfs mount (FUSE over libsmbclient).

    smbnetfs turns each path into an ``smb://`` URL without escaping it, so
    libsmbclient percent-decodes it: the layout's ``%obj`` and ``%25`` would
    be mangled and ``?`` starts a query. Its directory listings come back
    percent-encoded. So: map what SMB refuses exactly as the Linux cifs
    client does with its default ``mapposix`` option (fsutil.sfm_encode, with
    a trailing space or period), so a file written through smbnetfs has the
    same name on the server as one written through a kernel cifs mount; then
    escape ``%``. Listings: unquote, then undo the mapping.
    """

    native = False

    @staticmethod
    def encode(name: str) -> str:
        return fsutil.sfm_encode(name, trailing=True).replace("%", "%25")

    @staticmethod
    def decode(name: str) -> str:
        return fsutil.sfm_decode(urllib.parse.unquote(name), trailing=True)


NAME_CODECS: dict[str, type] = {"native": NativeNames, "smbnetfs": SmbnetfsNames}


def _storage_errors(method):
    """Turn an OSError from the mount into a 503 naming the backend (a bug would still show as 500),
    and a "not there" into one when the share is not mounted any more (see _check_mounted)."""

    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        try:
            return await method(self, *args, **kwargs)
        except ConnectionError:
            raise  # the client's socket, not the storage
        except OSError as exc:
            raise self._unavailable(exc) from exc
        except (errors.NoSuchKey, errors.NoSuchBucket):
            self._check_mounted()
            raise

    return wrapper


class SharedFSBackend(LocalBackend):
    """The local backend made safe for several gateways on one shared directory."""

    capabilities = Capabilities(range_reads=True, atomic_put=True, shared=True, listing="walk",
                                listing_metadata=True)

    def __init__(self, name: str = "sharedfs", root: str = "./cv-storage", fsync: bool = True,
                 fsync_dirs: bool = False, host_id: str | None = None, require_mount: bool = False,
                 stale_temp_seconds: float = 600.0, busy_retry_seconds: float = 5.0,
                 name_encoding: str = "native", read_cache_bytes: int = 0, read_cache_files: int = 0, **options):
        # No cache of small objects by default: on NFS a stat() may answer from the client's attribute
        # cache for seconds (an open() revalidates), so another server's overwrite could go unseen.
        # And no files kept open: on SMB an open file can block another server's delete or rename
        # of it, and on NFS a deleted open file lingers as a .nfsXXXX file.
        super().__init__(name, root=root, fsync=fsync, fsync_dirs=fsync_dirs, read_cache_bytes=read_cache_bytes,
                         read_cache_files=read_cache_files, **options)
        if host_id is not None:
            if not host_id or "/" in host_id or "\\" in host_id or "\x00" in host_id or host_id in (".", ".."):
                raise ValueError(f"backends.{name}.host_id: {host_id!r} is not usable as a directory name")
            self.host = host_id
        if name_encoding not in NAME_CODECS:
            raise ValueError(f"backends.{name}.name_encoding: {name_encoding!r} is not one of "
                             f"{', '.join(sorted(NAME_CODECS))}")
        if stale_temp_seconds < 0 or busy_retry_seconds < 0:
            raise ValueError(f"backends.{name}: stale_temp_seconds and busy_retry_seconds must not be negative")
        self.codec = NAME_CODECS[name_encoding]
        self.name_encoding_identity = self.codec.native
        self.tmp_dir = os.path.join(self.root, ".gateway", "tmp", self.codec.encode(self.host))
        self.require_mount = require_mount
        self.stale_temp_seconds = stale_temp_seconds
        self.busy_retry_seconds = busy_retry_seconds
        self._removals: set[asyncio.Task] = set()  # background removals of failed writes' temp files

    def _unavailable(self, exc: OSError) -> errors.GatewayError:
        return (self._share_problem() if self.require_mount else None) or self._failed(exc)

    def _failed(self, exc: OSError) -> errors.GatewayError:
        return errors.BackendUnavailable(
            f"backend {self.name!r}: the shared storage at {self.root} failed: {exc.strerror or exc} "
            f"(errno {exc.errno}). Check the mount; the request can be retried."
        )

    def _share_problem(self) -> errors.GatewayError | None:
        """The 503 for a root that is not a mount point any more, or whose stat() fails: a share still
        mounted but failing (EIO, ESTALE, a hung server) was told to be mounted again, since
        os.path.ismount says False whenever stat() fails."""
        root = os.path.realpath(self.root)
        try:
            os.stat(root)
        except OSError as exc:
            return self._failed(exc)
        return None if os.path.ismount(root) else self._not_mounted()

    def _check_mounted(self) -> None:
        """With require_mount, raise a 503 when root is not a mount point any more.

        Unmounted under a running gateway (an operator's umount, an automounter's timeout), root is
        the bare, empty mount-point directory: every bucket and object would be "not there", and a
        client (a sync tool) would take the 404s and the empty bucket list as final. Checked on those
        answers only (two stat() calls), not on every request.
        """
        problem = self._share_problem() if self.require_mount else None
        if problem is not None:
            raise problem

    def _not_mounted(self) -> errors.GatewayError:
        return errors.BackendUnavailable(
            f"backend {self.name!r}: the shared storage is not mounted at {self.root} any more "
            "(require_mount is set); mount the share again. The request can be retried.")

    # Life cycle ---------------------------------------------------------------

    async def start(self) -> None:
        problem = share_not_mounted(self.root, self.require_mount)
        if problem:
            # require_mount = false helps only a directory that is there but is not a mount point: the
            # root itself is never created, whatever the setting.
            advice = (", or set require_mount = false for a local directory" if os.path.isdir(self.root)
                      else " (the root is never created: a missing one is almost always a share not mounted)")
            raise ValueError(f"backend {self.name!r}: {problem}; mount the share there first (see "
                             f"docs/shared-storage.md){advice}")
        await super().start()
        await self._probe()

    async def _probe(self) -> None:
        """Check at start-up that the mount does what publishing relies on: fsync and rename over a file."""
        first, second = self._temp_path(), self._temp_path()
        try:
            for path, data in ((first, b"old"), (second, b"new")):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    os.write(fd, data)
                    if self.fsync:
                        try:
                            os.fsync(fd)
                        except OSError as exc:
                            raise ValueError(
                                f"backend {self.name!r}: fsync fails on {self.root} ({exc.strerror}); this mount "
                                "cannot make writes durable. Set fsync = false to accept that.") from None
                finally:
                    os.close(fd)
            try:
                os.replace(second, first)
            except OSError as exc:
                raise ValueError(f"backend {self.name!r}: renaming a file over another fails on {self.root} "
                                 f"({exc.strerror}); the shared backend needs it to publish objects") from None
            with open(first, "rb") as f:
                if f.read() != b"new":
                    raise ValueError(f"backend {self.name!r}: a rename over a file on {self.root} kept the old "
                                     "content; this mount cannot publish objects atomically")
        except OSError as exc:
            raise ValueError(f"backend {self.name!r}: root {self.root!r} is not writable: {exc.strerror}") from None
        finally:
            for path in (first, second):
                await self._remove_file(path, PROBE_REMOVE_SECONDS, "start-up probe file")

    def clean_temp_files(self) -> int:
        """Remove this host's temp files left by dead processes and untouched for stale_temp_seconds.

        A recent one may belong to another machine that wrongly shares our host_id.
        """
        leftovers = self.remove_leftover_temps()
        removed, kept = fsutil.remove_stale_temp_files(self.tmp_dir, keep_newer_than=self.stale_temp_seconds)
        if removed or kept:
            log.info("%s: removed %d stale temp files from %s, kept %d written in the last %ss",
                     self.name, removed, self.tmp_dir, kept, self.stale_temp_seconds)
        return leftovers + removed

    # Names: every name the layout makes goes through the codec ----------------------

    def _disk_name(self, name: str) -> str:
        return self.codec.encode(name)

    def _layout_name(self, name: str) -> str:
        return self.codec.decode(name)

    # Buckets ------------------------------------------------------------------

    @_storage_errors
    async def create_bucket(self, bucket: str) -> None:
        await super().create_bucket(bucket)

    @_storage_errors
    async def delete_bucket(self, bucket: str) -> None:
        await super().delete_bucket(bucket)

    @_storage_errors
    async def head_bucket(self, bucket: str) -> BucketInfo:
        return await super().head_bucket(bucket)

    @_storage_errors
    async def list_buckets(self):
        buckets = await super().list_buckets()
        self._check_mounted()  # an unmounted share lists no buckets (the check after: the list takes time)
        return buckets

    # Objects ------------------------------------------------------------------

    @_storage_errors
    async def get(self, bucket: str, key: str, byte_range: ByteRange | None = None) -> ObjectReader:
        return await super().get(bucket, key, byte_range)

    @_storage_errors
    async def head(self, bucket: str, key: str) -> ObjectInfo:
        return await super().head(bucket, key)

    @_storage_errors
    async def get_if_present(self, bucket: str, key: str, byte_range: ByteRange | None = None) -> ObjectReader | None:
        reader = await super().get_if_present(bucket, key, byte_range)
        if reader is None:
            self._check_mounted()
        return reader

    @_storage_errors
    async def head_if_present(self, bucket: str, key: str) -> ObjectInfo | None:
        info = await super().head_if_present(bucket, key)
        if info is None:
            self._check_mounted()
        return info

    @_storage_errors
    async def list(self, bucket, prefix="", delimiter="", start_after="", max_keys=1000) -> ListPage:
        return await super().list(bucket, prefix, delimiter, start_after, max_keys)

    def _root_gone(self) -> errors.GatewayError:
        if self.require_mount and os.path.isdir(self.root):
            return self._not_mounted()  # the mount point is there, the share is not: say that
        return super()._root_gone()

    def _root_present(self) -> bool:
        # A share unmounted under a running gateway leaves its mount point: a temp directory made there
        # would put objects on this server's own disk.
        return share_not_mounted(self.root, self.require_mount) is None

    @_storage_errors
    async def check_writable(self) -> None:
        await super().check_writable()

    @_storage_errors
    async def put(self, bucket: str, key: str, payload: Payload, meta: ObjectMeta) -> ObjectInfo:
        pending: list = []
        token = _deferred_publish.set(pending)
        try:
            info = await super().put(bucket, key, payload, meta)
        finally:
            _deferred_publish.reset(token)
        if pending:  # _publish found the target held open on another server: retry it here, off the loop's back
            tmp, final, bucket_dir = pending[0]
            try:
                await self._retry_busy(lambda: LocalBackend._publish(self, tmp, final, bucket_dir, key),
                                       final, f"replace {key!r}")
            except BaseException:
                self._discard_temp(tmp)
                raise
        return info

    def _publish(self, tmp: str, final: str, bucket_dir: str, key: str) -> None:
        try:
            super()._publish(tmp, final, bucket_dir, key)
        except OSError as exc:
            pending = _deferred_publish.get()
            if not self._busy(exc, final) or pending is None or self.busy_retry_seconds <= 0:
                raise
            # The local put() returns to our put() right after this, which retries with asyncio.sleep
            # in between instead of blocking the event loop here.
            pending.append((tmp, final, bucket_dir))

    def _remove_later(self, tmp: str) -> None:
        """A failed write's temp file the mount did not let go (the failure that failed the write,
        still going on, or an SMB server still holding the file): keep trying in the background for
        LEFTOVER_REMOVE_SECONDS, then as LocalBackend does (after the next write that works, or at the
        next sweep), instead of leaving it for a restart."""
        task = asyncio.get_running_loop().create_task(self._remove_leftover(tmp))
        self._removals.add(task)  # a reference, so the task is not collected while it waits
        task.add_done_callback(self._removals.discard)

    async def _remove_leftover(self, tmp: str) -> None:
        if not await self._remove_file(tmp, LEFTOVER_REMOVE_SECONDS, "temp file of a failed write",
                                       "it is tried again after the next write that works"):
            super()._remove_later(tmp)

    async def _remove_file(self, path: str, seconds: float, what: str,
                           then: str = "start-up cleanup removes it once it is stale_temp_seconds old") -> bool:
        """Remove ``path``, retrying any failure with growing pauses for ``seconds``; whether it went.

        An SMB server may still hold a file its client has just closed (EBUSY), and a mount may
        fail for a moment. If the file stays, say so, and what happens to it (``then``).
        """
        deadline = time.monotonic() + seconds
        delay = BUSY_RETRY_FIRST
        while True:
            try:
                os.unlink(path)
                return True
            except FileNotFoundError:
                return True
            except OSError as exc:
                if time.monotonic() + delay > deadline:
                    log.warning("%s: could not remove the %s %s: %s (errno %s); %s", self.name, what, path,
                                exc.strerror, exc.errno, then)
                    return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, BUSY_RETRY_CAP)

    async def close(self) -> None:
        for task in list(self._removals):
            task.cancel()
        await super().close()

    @staticmethod
    def _busy(exc: OSError, target: str) -> bool:
        """Is this an SMB "file in use" refusal of a rename over ``target`` or an unlink of it?

        smbnetfs says EBUSY, or EEXIST when it fell back to unlink-then-rename;
        Windows servers through cifs say EACCES or EPERM. All but EBUSY also
        mean other things, so they count only while the target exists.
        """
        if exc.errno in (errno.EBUSY, errno.ETXTBSY):
            return True
        return exc.errno in (errno.EEXIST, errno.EACCES, errno.EPERM) and os.path.lexists(target)

    async def _retry_busy(self, operation, target: str, what: str):
        """Run ``operation`` until ``target`` stops being busy, for at most busy_retry_seconds."""
        deadline = time.monotonic() + self.busy_retry_seconds
        delay = BUSY_RETRY_FIRST
        while True:
            try:
                return operation()
            except OSError as exc:
                if not self._busy(exc, target):
                    raise
                if time.monotonic() + delay > deadline:
                    raise errors.SlowDown(
                        f"backend {self.name!r}: could not {what}: the file stayed in use on the shared storage "
                        f"for {self.busy_retry_seconds}s ({exc.strerror}); retry the request") from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, BUSY_RETRY_CAP)

    # Deleting -----------------------------------------------------------------

    @_storage_errors
    async def delete(self, bucket: str, key: str) -> None:
        await super().delete(bucket, key)

    @_storage_errors
    async def drop_if_older(self, bucket: str, key: str, last_modified: float, etag: str) -> ObjectInfo | None:
        """Delete the share's copy of the key if older than (last_modified, etag); return it when newer.

        In a cluster in the middle of a migration (docs/migration.md) a node that still has storage of
        its own took that version, so the share's copy is another, older file; left there, the nodes
        already on the share would serve it (cluster/versions.py). Only the file compared is deleted:
        when another server published a version meanwhile (another file at the path), it stays.
        """
        path = self._object_path(bucket, key)
        fd = _open_if_present(path)
        if fd is None:
            return None
        try:
            copy = self._load(fd, path)[0]
            compared = os.fstat(fd)
        finally:
            os.close(fd)
        if not is_older(copy, last_modified, etag):
            return None if (copy.last_modified, copy.etag) == (last_modified, etag) else copy
        try:
            now = os.stat(path)
        except FileNotFoundError:
            return None
        if (now.st_dev, now.st_ino) == (compared.st_dev, compared.st_ino):
            await LocalBackend.delete(self, bucket, key)
        return None

    async def _unlink_object(self, path: str, key: str) -> None:
        await self._retry_busy(lambda: os.unlink(path), path, f"delete {key!r}")


@hookimpl
def register_backends(register):
    register("sharedfs", SharedFSBackend)
