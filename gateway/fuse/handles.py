"""File contents: open, create, read, write, truncate, flush, release (and the stats file).

A mixin of GatewayFS (see fs.py), split out to keep modules small.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass, field

from ..api.local_reads import open_object_file
from .cache import DIR, FILE, Attr
from .client import StoreError
from .files import OpenFile, RemoteReader, upload
from .meta import apply_meta, content_type, err, parent_of

log = logging.getLogger("gateway.fuse")

# A read-only file outside any bucket (bucket names cannot start with "."), not listed by readdir:
# the mount's request counters as JSON, for operators, tests and benchmarks.
STATS_PATH = "/.cv-gateway-stats"
STATS_SIZE = 4096
PAGE_VERSIONS = 100_000  # files whose cached pages' version (ETag) is remembered (keeps_cache)


@dataclass
class Handle:
    open_file: OpenFile
    flags: int
    reader: RemoteReader | LocalFileReader | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class LocalFileReader:
    """Reads of an object from its file, a descriptor the gateway on this host handed over
    (gateway/api/local_reads.py): the version looked up, whatever happens to the key meanwhile."""

    def __init__(self, fd: int, offset: int, size: int):
        self.fd, self.offset, self.size = fd, offset, size

    def read_into(self, offset: int, buffer: memoryview) -> int:
        wanted = min(len(buffer), self.size - offset)
        done = 0
        while done < wanted:
            got = os.preadv(self.fd, [buffer[done:wanted]], self.offset + offset + done)
            if got == 0:
                raise OSError(errno.EIO, f"the object file ended {self.size - offset - done} bytes early")
            done += got
        return done

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _StaticReader:
    def __init__(self, data: bytes):
        self.data = data

    def read_into(self, offset: int, buffer: memoryview) -> int:
        data = self.data[offset: offset + len(buffer)]
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        pass


def _replaced(open_file: OpenFile, base: Attr | None) -> bool:
    """Whether a file open here, unchanged by this mount, has been replaced since by another client
    (``base``: what a fresh lookup found). A new open then gets the new version: joined to the old
    one, its reads asked for a version that was gone (EIO) for as long as any handle kept it open.
    The handles open already keep reading the version they opened, as after a rename over it."""
    old = open_file.base
    return (base is not None and old is not None and bool(base.etag) and bool(old.etag) and base.etag != old.etag
            and open_file.spool is None and not open_file.dirty)


class FileOps:
    """File contents, on file handles; a mixin of GatewayFS, whose state (caches, tables, client) it uses."""

    # What the FUSE binding's layer adds to the stats file (operations.py sets it; core code never
    # imports the binding).
    binding_stats = staticmethod(dict)

    def _acquire(self, path: str, base: Attr | None, meta: dict[str, str]) -> tuple[int, OpenFile]:
        bucket, key = self.split(path)
        with self._table_lock:
            open_file = self._open.get(path)
            if open_file is None or open_file.unlinked or _replaced(open_file, base):
                open_file = OpenFile(path, bucket, key, base, meta)
                self._open[path] = open_file
            open_file.refs += 1
            fh = next(self._fh)
            return fh, open_file

    def stats(self) -> dict:
        with self._table_lock:
            open_files = len(self._open)
        return {"requests": dict(self.client.stats), "open_files": open_files, "spool_bytes": self.spool_dir.used,
                **self.ahead.stats, **self.binding_stats()}

    def _open_stats(self) -> int:
        data = json.dumps(self.stats(), sort_keys=True).encode().ljust(STATS_SIZE)[:STATS_SIZE]
        fh = next(self._fh)
        open_file = OpenFile(STATS_PATH, "", "", Attr(FILE, len(data)), {})
        with self._table_lock:
            self._handles[fh] = Handle(open_file, os.O_RDONLY, _StaticReader(data))
        return fh

    def open(self, path: str, flags: int) -> int:
        if path == STATS_PATH:
            if flags & os.O_ACCMODE != os.O_RDONLY:
                raise err(errno.EACCES, path)
            return self._open_stats()
        attr = self.lookup(path)
        if attr.kind == DIR:
            raise err(errno.EISDIR, path)
        writing = flags & os.O_ACCMODE != os.O_RDONLY
        if writing or flags & os.O_TRUNC:
            self._check_writable()
        meta = dict(attr.meta or {}) if not attr.from_listing else None
        fh, open_file = self._acquire(path, attr, meta or {})
        if meta is None and writing:  # keep mode/owner on rewrite even if only a listing described it
            with open_file.lock:
                if not open_file.meta:
                    open_file.meta = self._full_meta(path, attr)
        with self._table_lock:
            self._handles[fh] = Handle(open_file, flags)
        if flags & os.O_TRUNC:  # also O_RDONLY|O_TRUNC: Linux truncates when the caller may write
            with open_file.lock:
                open_file.ensure_spool(self.client, self.spool_dir, keep_content=False).truncate(0)
                open_file.dirty = True
                open_file.mtime = time.time()
        return fh

    def create(self, path: str, mode: int, flags: int, owner: tuple[int, int] | None = None) -> int:
        self._check_writable()
        if not self.split(path)[1]:
            raise err(errno.EPERM, f"{path}: files cannot be created outside a bucket")
        self._check_new_name(path)
        meta = self._new_meta(stat.S_IFREG | (mode & 0o7777), owner, path)
        exclusive = bool(flags & os.O_EXCL)
        base = None
        if exclusive:
            # The kernel checked our cached view, which may be up to the TTL old, and another client
            # may create the name at any moment: an exclusive create stores the empty file at once,
            # on condition that no object has the key (If-None-Match: *), so of two exclusive creates
            # (lock files, mkstemp) on two mounts exactly one succeeds.
            bucket, key = self.split(path)
            try:
                stored = self.client.put(bucket, key, b"", 0, meta, content_type(key, FILE), exclusive=True)  # EEXIST
            except StoreError as exc:
                if exc.code != "ServiceUnavailable":
                    raise
                # A cluster node that may hold the name cannot be asked now: go by the cluster's listings,
                # as a lookup does (fs.py _listed; with strict_listings the listing is a 503: EIO). Else
                # every cp to a new name, mkstemp (rsync) and lock file was EIO while a node was down.
                # Exclusive only against what the listing shows meanwhile (docs/fuse.md).
                if self._listed(bucket, key):
                    raise err(errno.EEXIST, f"{path} exists") from None
                stored = self.client.put(bucket, key, b"", 0, meta, content_type(key, FILE))
            # The object exists from now on: an unlink while open must delete it (mkstemp + unlink).
            base = Attr(FILE, 0, stored.last_modified or time.time(), etag=stored.etag, meta=dict(meta))
        fh, open_file = self._acquire(path, base, meta)
        with open_file.lock:
            open_file.ensure_spool(self.client, self.spool_dir, keep_content=False)
            open_file.dirty = not exclusive  # an exclusive create has stored the empty file already
            open_file.mtime = time.time()
        with self._table_lock:
            self._handles[fh] = Handle(open_file, flags)
        self.attrs.invalidate(path)
        self._content_changed(path)
        self.dirs.add(parent_of(path)[0], path.rpartition("/")[2], self._open_attr(open_file))
        return fh

    def _forget_if_never_stored(self, open_file) -> None:
        """A file created through this mount whose upload failed does not exist: drop the directory
        entry and attributes create() cached, which would show it (empty) until their TTL."""
        if open_file.base is None and not open_file.unlinked:
            self.attrs.invalidate(open_file.path)
            self.dirs.invalidate(parent_of(open_file.path)[0])

    def handle_attr(self, fh: int | None) -> Attr:
        """The attributes of the file open as ``fh`` (EBADF without a handle)."""
        if fh is None:
            raise err(errno.EBADF, "no path and no file handle")
        return self._open_attr(self._handle(fh).open_file)

    def _handle(self, fh: int) -> Handle:
        handle = self._handles.get(fh)
        if handle is None:
            raise err(errno.EBADF, f"file handle {fh}")
        return handle

    def read(self, fh: int, size: int, offset: int) -> bytes:
        buffer = bytearray(size)
        filled = self.read_into(fh, offset, memoryview(buffer))
        return bytes(buffer[:filled])

    def read_into(self, fh: int, offset: int, buffer: memoryview) -> int:
        """Read into ``buffer`` (for the mount: libfuse's reply buffer, so bytes are copied once)."""
        handle = self._handle(fh)
        self.client.count("fuse_reads")
        open_file = handle.open_file
        if open_file.spool is not None:
            with open_file.lock:
                return open_file.spool.pread_into(buffer, offset)
        if handle.reader is None and self.options.local_socket:
            with handle.lock:  # FUSE's threads read ahead in parallel: one of them asks
                if handle.reader is None:
                    handle.reader = self._local_reader(open_file)
        if handle.reader is None:
            base = open_file.base
            first = open_file.first
            if first is None and base is not None:
                first = self.first_bytes.get(open_file.path, base.etag)
            if base is not None and base.size <= self.options.first_bytes:
                # A small file's bytes, perhaps fetched ahead (its attributes came from a listing):
                # either way the access tells the statahead where the program is.
                fetched = self.ahead.take(open_file.path, wait=first is None)
                if first is None and fetched is not None and fetched.info.etag == base.etag:
                    first = fetched.data
            handle.reader = RemoteReader(self.client, open_file.bucket, open_file.key,
                                         base.size if base else 0, first, self.options.files,
                                         base.etag if base else None)
        try:
            return handle.reader.read_into(offset, buffer)
        except StoreError as exc:
            self._replaced_elsewhere(open_file, exc)
            raise

    def _local_reader(self, open_file: OpenFile) -> LocalFileReader | None:
        """The object's file from the gateway on this host (--local-socket), for an object larger
        than the bytes a lookup fetches; None: read it through HTTP (not stored on that gateway,
        replaced since the lookup, or the socket does not answer: warned about once a minute)."""
        base = open_file.base
        if base is None or base.size <= self.options.first_bytes:
            return None
        try:
            opened = open_object_file(self.options.local_socket, open_file.bucket, open_file.key, base.etag,
                                      timeout=self.client.timeout)
        except (OSError, ValueError) as exc:
            self.client.count("local_read_failures")
            now = time.monotonic()
            if now - self._local_read_warned >= 60:
                self._local_read_warned = now
                log.warning("local reads through %s failed (%s); reading through HTTP instead",
                            self.options.local_socket, getattr(exc, "strerror", None) or exc)
            return None
        if opened is None:
            self.client.count("local_read_misses")
            return None
        self.client.count("local_reads")
        return LocalFileReader(*opened)

    def _ensure_spool(self, open_file: OpenFile, **options):
        """open_file.ensure_spool (its lock held); a fetch that finds the object replaced elsewhere
        also drops this mount's view of the path (_replaced_elsewhere)."""
        try:
            return open_file.ensure_spool(self.client, self.spool_dir, **options)
        except StoreError as exc:
            if open_file.unlinked:
                # Its object was deleted or replaced while open, and this mount kept too few of its
                # bytes (a file over the lookup's 128 KiB not fetched before; namespace._keep_first_bytes).
                log.error("cannot write to %s: it was removed or replaced while open, and its previous "
                          "content (%d bytes) can no longer be fetched to write into (%s)", open_file.path,
                          open_file.base.size if open_file.base else 0, exc)
                raise err(errno.EIO, f"{open_file.path}: its previous content is gone") from None
            self._replaced_elsewhere(open_file, exc)
            raise

    def _moved(self, open_file: OpenFile, etags: dict[str, str]) -> None:
        """After a rename moved ``open_file`` (its bucket and key are the new ones now): its handles'
        readers ask for the copy, whose ETag (``etags``, by new key) must be the version they read.
        Without this they asked for the old key, which the rename deleted: ENOENT. (Local reads keep
        their descriptor of the old file.)"""
        etag = etags.get(open_file.key)
        if not etag:
            return
        with self._table_lock:
            readers = [handle.reader for handle in self._handles.values()
                       if handle.open_file is open_file and isinstance(handle.reader, RemoteReader)]
        for reader in readers:
            if not reader.moved(open_file.bucket, open_file.key, etag):
                log.warning("%s was replaced by another client before this mount renamed it: reads of its "
                            "open handles fail with EIO; open it again to read the new version", open_file.path)

    def _has_writer(self, open_file: OpenFile) -> bool:
        """Whether a handle of ``open_file`` was opened for writing."""
        with self._table_lock:
            return any(handle.open_file is open_file and handle.flags & os.O_ACCMODE != os.O_RDONLY
                       for handle in self._handles.values())

    def _replaced_elsewhere(self, open_file: OpenFile, exc: StoreError) -> None:
        """A GET of the version this mount opened failed its If-Match (412): another client replaced
        the object. The handle keeps failing (EIO, never bytes of two versions), but what this mount
        has cached of the path is stale, so it goes: without that, every open, read and append of the
        file failed the same way until the attribute TTL ran out, and a cached listing answered the
        next lookup with the old version again."""
        if exc.code != "PreconditionFailed":
            return
        log.warning("%s was replaced by another client since this mount looked it up: its open handles "
                    "fail with EIO; open it again to use the new version", open_file.path)
        self.attrs.invalidate(open_file.path)
        self.dirs.invalidate(parent_of(open_file.path)[0])
        self._content_changed(open_file.path)

    def direct_io(self, fh: int) -> bool:
        """Whether the kernel should pass this handle's reads through uncached, at the reader's size.

        Read-only opens of objects from ``direct_io_min`` bytes on (off by default): a reader's 1 MiB
        read is then one FUSE request answered while it waits, which streams faster than the page
        cache, but small reads each cost a round trip and shared mmap fails (docs/fuse.md).
        """
        limit = self.options.direct_io_min
        handle = self._handle(fh)
        base = handle.open_file.base
        return (limit > 0 and handle.flags & os.O_ACCMODE == os.O_RDONLY and not handle.flags & os.O_TRUNC
                and handle.open_file.spool is None and base is not None and base.size >= limit)

    def write(self, fh: int, data: bytes, offset: int) -> int:
        self._check_writable()
        handle = self._handle(fh)
        open_file = handle.open_file
        with open_file.lock:
            spool = self._ensure_spool(open_file)
            if handle.flags & os.O_APPEND:
                offset = spool.size
            try:
                written = spool.pwrite(data, offset)
            except OSError as exc:
                open_file.write_error = exc  # what fitted must not be uploaded as if it were the file
                raise
            open_file.dirty = True
            open_file.mtime = time.time()
            open_file.meta.pop("mtime", None)  # a write makes the mtime "now" again
        self._content_changed(open_file.path)
        return written

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        self._check_writable()
        if fh is not None and fh in self._handles:
            open_file = self._handle(fh).open_file
        else:
            with self._table_lock:
                open_file = self._open.get(path)
        if open_file is not None:
            with open_file.lock:
                # Shrinking fetches only what stays (a 10 GiB object cut to 10 bytes needs 10 bytes).
                spool = self._ensure_spool(open_file, keep_content=length > 0, keep_bytes=length)
                try:
                    spool.truncate(length)
                except OSError as exc:
                    open_file.write_error = exc
                    raise
                open_file.dirty = True
                open_file.mtime = time.time()
                open_file.meta.pop("mtime", None)
                if fh is None and not open_file.unlinked:
                    # truncate(2) by name: the new size is stored now, not when some other handle of
                    # the file closes (its release may come late, and a reopen must see the new size).
                    self._upload(open_file)
            self._content_changed(path)
            return
        fh = self.open(path, os.O_WRONLY)  # not open: a short-lived handle does it
        try:
            self.truncate(path, length, fh)
            self.flush(fh)
        finally:
            self.release(fh)

    def _upload(self, open_file: OpenFile) -> None:
        """Upload a dirty file (its lock held); update the caches.

        Never after a failed write: the spool then lacks bytes the program wrote, and storing it
        would replace the object with a truncated or holed version. ENOSPC (or the write's errno)
        instead, on every flush, fsync and close until the last handle is closed; the object keeps
        its previous version (docs/fuse.md).
        """
        if open_file.write_error is not None:
            raise err(open_file.write_error.errno or errno.EIO,
                      f"{open_file.path} was not stored: a write to it failed ({open_file.write_error.strerror})")
        # A file written again keeps its object's Content-Type and stored headers, when a lookup saw them
        # (a PUT replaces them all); a new one gets the type its name suggests.
        base = open_file.base
        kept = base is not None and base.content_type is not None and base.etag
        kind = base.content_type if kept else content_type(open_file.key, FILE)
        headers = dict(base.stored or {}) if kept else {}
        stored = upload(self.client, self.executor, open_file, kind, self.options.files, headers)
        open_file.dirty = False
        attr = Attr(FILE, open_file.spool.size, open_file.mtime or time.time(), etag=stored.etag,
                    meta=dict(open_file.meta), content_type=kind, stored=headers)
        apply_meta(attr, open_file.meta)
        attr.kind = FILE
        if "mtime" not in open_file.meta:
            # The gateway's time for the new version, which is what stat shows once this cached
            # attribute expires (whole seconds): with the mount's own clock, a file's mtime changed
            # a few seconds after it was written, and git and rsync saw it as modified again.
            attr.mtime = stored.last_modified or time.time()
        open_file.base = attr
        self._remember(open_file.path, attr)
        self._content_changed(open_file.path)

    def keeps_cache(self, fh: int) -> bool:
        """Whether the kernel may keep the pages it has cached of this file at this open: only when
        this mount last opened the same version (ETag) of it, read-only.

        Not libfuse's auto_cache, which compares size and mtime: the mtime is the gateway's
        Last-Modified, in whole seconds, so an object replaced by another client with one of the
        same size within the same second was read from the old pages at every open for as long as
        the kernel kept them. Forgetting a version (the table is bounded) only costs a re-read."""
        handle = self._handle(fh)
        open_file = handle.open_file
        base = open_file.base
        reusable = (base is not None and base.etag and open_file.spool is None
                    and handle.flags & os.O_ACCMODE == os.O_RDONLY and not handle.flags & os.O_TRUNC)
        with self._table_lock:
            previous = self._page_versions.pop(open_file.path, None)
            if reusable:
                self._page_versions[open_file.path] = base.etag
                if len(self._page_versions) > PAGE_VERSIONS:
                    del self._page_versions[next(iter(self._page_versions))]  # the least recently opened
        return bool(reusable) and previous == base.etag

    def flushes(self, fh: int) -> bool:
        """Whether closing ``fh`` may have to upload: a handle opened for writing or truncating.

        A read-only handle's flush would upload only what another, writing
        handle of the file wrote, and that handle's own close does it.
        """
        flags = self._handle(fh).flags
        return flags & os.O_ACCMODE != os.O_RDONLY or bool(flags & os.O_TRUNC)

    def flush(self, fh: int) -> None:
        """Called on every close(): upload what was written, so the close reports upload errors."""
        open_file = self._handle(fh).open_file
        with open_file.lock:
            if open_file.dirty and not open_file.unlinked:
                self._upload(open_file)

    fsync = flush

    def release(self, fh: int) -> None:
        with self._table_lock:
            handle = self._handles.pop(fh, None)
        if handle is None:
            return
        if handle.reader is not None:
            handle.reader.close()
        open_file = handle.open_file
        with open_file.lock:
            with self._table_lock:
                open_file.refs -= 1
                if open_file.refs > 0:
                    return
            # Upload while the file is still in the open table: a lookup meanwhile must see this
            # file's size, not the stale cached attributes of the version being replaced.
            try:
                if open_file.write_error is not None:
                    log.error("%s was not stored: a write to it failed (%s)", open_file.path,
                              open_file.write_error.strerror)
                    self._forget_if_never_stored(open_file)
                elif open_file.dirty and not open_file.unlinked:
                    self._upload(open_file)  # written after the last flush (rare: mmap)
            except OSError as exc:
                log.error("could not upload %s when it was closed: %s", open_file.path, exc)
                self._forget_if_never_stored(open_file)
            with self._table_lock:
                if open_file.refs > 0:  # reopened during the upload: the new handle owns it now
                    return
                if self._open.get(open_file.path) is open_file:
                    del self._open[open_file.path]
            if open_file.spool is not None:
                open_file.spool.close()
                open_file.spool = None
