"""The filesystem in path terms: what each FUSE operation means for the object store.

Paths look like ``/bucket/dir/file``: buckets are the top-level directories,
``/`` in keys makes directories (common prefixes, with or without a ``dir/``
marker object). File modes, owners, mtimes and symlink flags live in object
metadata (``x-amz-meta-mode`` as octal st_mode, ``-uid``, ``-gid``, ``-mtime``
as seconds), the names rclone uses. Nothing here imports the FUSE binding:
errors are OSError with an errno, attributes are plain dicts.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .cache import DIR, FILE, LINK, MISSING, Attr, AttrCache, DirCache, FirstBytes
from .client import ObjectClient, ObjectStat, StoreError
from .files import FileOptions, OpenFile, SpoolDir
from .handles import STATS_PATH, STATS_SIZE, FileOps, Handle
from .meta import MAX_KEY_BYTES, SYMLINK_MAX, apply_meta, err, is_utf8, maybe_symlink, parent_of
from .namespace import NamespaceOps
from .statahead import Statahead

log = logging.getLogger("gateway.fuse")

BLOCK = 512
HIDDEN_WARN_SECONDS = 60.0  # keys the mount cannot show are logged at most this often per directory
# The preferred I/O size shown by stat: cp, cat, sha256sum (through stdio) and Python's open() read
# this much at a time, which under direct_io is the size of each FUSE request (libfuse 3's maximum).
IO_SIZE = 1024 * 1024


@dataclass
class MountOptions:
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    umask: int = 0o022
    read_only: bool = False
    attr_ttl: float = 5.0
    dir_ttl: float = 5.0
    first_bytes: int = 128 * 1024  # fetched with each file lookup (one request for a small file)
    # Small files fetched ahead in a directory read in name order (statahead.py); 0: off.
    statahead: int = 32
    spool_dir: str | None = None
    spool_size: int = 8 * 1024 ** 3
    workers: int = 4  # threads sending the parts of multipart uploads
    # The kernel's read-ahead window for the mount, raised to this when allowed (root); 0: leave it.
    read_ahead_kib: int = 4096
    # Read-only opens of objects this big or bigger bypass the page cache (FUSE direct_io); 0: never.
    # Off: faster for big sequential reads, but slower for small ones and no shared mmap (docs/fuse.md).
    direct_io_min: int = 0
    # A gateway's --local-socket on this host: objects larger than first_bytes that it stores are
    # read from their files (gateway/api/local_reads.py); None: every read goes through HTTP.
    local_socket: str | None = None
    files: FileOptions = field(default_factory=FileOptions)


class GatewayFS(NamespaceOps, FileOps):
    """All operations of the mount, on paths; shared by FUSE's threads.

    This module holds lookups, listings and the caches; namespace.py the name
    changes, handles.py the file contents.
    """

    mounted = False  # set by the binding's init callback once the kernel mount is up

    def __init__(self, client: ObjectClient, options: MountOptions | None = None, clock=time.monotonic):
        self.client = client
        self.options = options or MountOptions()
        self.attrs = AttrCache(self.options.attr_ttl, clock=clock)
        self.dirs = DirCache(self.options.dir_ttl, clock=clock)
        self.first_bytes = FirstBytes()
        self.ahead = Statahead(client, window=self.options.statahead, first_bytes=self.options.first_bytes,
                               ttl=self.options.attr_ttl, clock=clock)
        self.spool_dir = SpoolDir(self.options.spool_dir, self.options.spool_size)
        self.executor = ThreadPoolExecutor(self.options.workers, thread_name_prefix="gateway-fuse-io")
        self._open: dict[str, OpenFile] = {}
        self._handles: dict[int, Handle] = {}
        self._fh = itertools.count(1)
        self._page_versions: dict[str, str] = {}  # path -> ETag of the pages the kernel may hold (keeps_cache)
        self._local_read_warned = -60.0  # monotonic time of the last warning about local reads
        self._table_lock = threading.Lock()
        self._namespace_lock = threading.RLock()  # renames and removals see a stable tree
        self.started = time.time()  # the mtime of directories that have no marker object
        self._hidden_warned: dict[str, float] = {}  # directory -> when its hidden keys were last logged

    # Paths --------------------------------------------------------------------

    @staticmethod
    def split(path: str) -> tuple[str, str]:
        """'/bucket/a/b' -> ('bucket', 'a/b'); '/' -> ('', '')."""
        bucket, _, key = path.lstrip("/").partition("/")
        return bucket, key

    def _check_writable(self) -> None:
        if self.options.read_only:
            raise err(errno.EROFS, "the mount is read-only")

    def _check_new_name(self, path: str, directory: bool = False) -> None:
        """Refuse a name no object can have before anything is written (else the upload at close
        would fail and the written data be lost): EILSEQ for a name that is not UTF-8 (keys are),
        ENAMETOOLONG for a key of more than MAX_KEY_BYTES."""
        key = self.split(path)[1]
        if not is_utf8(path):
            raise err(errno.EILSEQ, f"{path!r}: object keys and bucket names are UTF-8, this name is not")
        if len(key.encode()) + (1 if directory and key else 0) > MAX_KEY_BYTES:
            raise err(errno.ENAMETOOLONG, f"{path}: object keys are at most {MAX_KEY_BYTES} bytes")

    # Attributes ---------------------------------------------------------------

    def _attr_from_stat(self, info: ObjectStat, data: bytes | None = None) -> Attr:
        meta = info.metadata
        attr = Attr(FILE, info.size, info.last_modified, etag=info.etag, from_listing=meta is None, meta=meta)
        if info.content_type:  # a HEAD or GET (a listing has none)
            attr.content_type, attr.stored = info.content_type, dict(info.headers)
        if meta:
            apply_meta(attr, meta)
            if attr.kind == LINK and info.size > SYMLINK_MAX:  # no link target is this long: it is data
                attr.kind = FILE
            if attr.kind == LINK and data is not None and len(data) >= info.size:
                attr.target = data[: info.size].decode(errors="surrogateescape")
        return attr

    def lookup(self, path: str) -> Attr:
        """The attributes of ``path``; ENOENT if it does not exist."""
        if path == "/":
            return Attr(DIR, mtime=self.started, marker=True)
        if path == STATS_PATH:
            return Attr(FILE, STATS_SIZE, time.time(), mode=0o444)
        with self._table_lock:
            open_file = self._open.get(path)
        if open_file is not None and (open_file.spool is not None or open_file.base is None or open_file.unlinked):
            return self._open_attr(open_file)
        cached = self.attrs.get(path)
        if cached is MISSING:
            raise err(errno.ENOENT, path)
        if cached is not None and not maybe_symlink(cached):
            return cached
        parent, name = parent_of(path)
        listing = self.dirs.get(parent)
        if listing is not None and cached is None:
            entry = listing.entries.get(name)
            if entry is None:
                raise err(errno.ENOENT, path)
            if not maybe_symlink(entry):
                return entry
        attr = self._fetch_attr(path)
        if attr is None:
            self.attrs.put_missing(path)
            raise err(errno.ENOENT, path)
        self.attrs.put(path, attr)
        return attr

    def _listed(self, bucket: str, key: str) -> bool:
        """Whether a listing shows object ``key``. After a 503 for it (a cluster node that may hold it
        cannot be asked), the mount goes by the cluster's listings, as ``ls`` does: a name they do not
        show is missing (ENOENT, so files can still be created while a node is down); with the nodes'
        strict_listings on, the listing itself is a 503 and the lookup EIO (docs/fuse.md)."""
        page = self.client.list_page(bucket, key, "/", max_keys=1)  # "key" sorts first of its prefix
        return bool(page.objects) and page.objects[0].key == key

    def _fetch_attr(self, path: str) -> Attr | None:
        if not is_utf8(path):
            return None  # keys are UTF-8: no object has this name
        bucket, key = self.split(path)
        if not key:
            try:
                self.client.head_bucket(bucket)
            except StoreError as exc:
                # Not a valid bucket name (".git", "ab", "Foo" looked up by a tool): no such bucket.
                if exc.errno in (errno.ENOENT, errno.EINVAL):  # a HEAD's 400 carries no error code
                    return None
                raise
            return Attr(DIR, mtime=self.started, marker=True)
        unknown = None  # the object's GET answered 503: a cluster node that may hold it cannot be asked now
        if not key.endswith("/"):
            fetched = self.ahead.take(path)
            try:
                info, data = (fetched.info, fetched.data) if fetched is not None else \
                    self.client.get_first(bucket, key, self.options.first_bytes)
            except StoreError as exc:
                if exc.errno != errno.ENOENT:
                    if exc.code != "ServiceUnavailable":
                        raise
                    unknown = exc  # still a directory if the nodes that answer list one (below)
            else:
                attr = self._attr_from_stat(info, data)
                if attr.kind == FILE and data:
                    self.first_bytes.put(path, info.etag, data)
                return attr
        # Missing names are the common case here (every create looks its name up first): one LIST
        # answers "missing" and "implicit directory"; a marker object costs a HEAD for its metadata
        # only when the listing did not carry it (metadata=true not answered).
        prefix = key.rstrip("/") + "/"
        page = self.client.list_page(bucket, prefix, "/", max_keys=1)
        if not page.objects and not page.prefixes:
            if unknown is not None and self._listed(bucket, key):
                raise unknown  # the nodes that answer list it, yet it cannot be read now: EIO, not ENOENT
            return None
        if page.objects and page.objects[0].key == prefix:
            if page.objects[0].metadata is not None:
                return self._dir_attr(page.objects[0])
            try:  # the marker holds the directory's mode and owner
                return self._dir_attr(self.client.head(bucket, prefix))
            except FileNotFoundError:
                pass
        return self._dir_attr(None)

    def _dir_attr(self, marker: ObjectStat | None) -> Attr:
        if marker is None:
            return Attr(DIR, mtime=self.started, marker=False, from_listing=True)
        attr = Attr(DIR, 0, marker.last_modified, etag=marker.etag, marker=True,
                    from_listing=marker.metadata is None, meta=marker.metadata)
        if marker.content_type:  # a HEAD (a listing has none): a chmod copies the marker with them
            attr.content_type, attr.stored = marker.content_type, dict(marker.headers)
        if marker.metadata:
            apply_meta(attr, marker.metadata)
            attr.kind = DIR
        return attr

    def _open_attr(self, open_file: OpenFile) -> Attr:
        base = open_file.base
        attr = Attr(FILE, open_file.size, open_file.mtime or (base.mtime if base else time.time()),
                    etag=base.etag if base else "", meta=open_file.meta)
        apply_meta(attr, open_file.meta)
        attr.kind = FILE
        return attr

    def to_stat(self, attr: Attr) -> dict:
        """A stat dict (st_mode, st_size, ... with times in ns) for the FUSE binding."""
        opts = self.options
        if attr.kind == DIR:
            mode = stat.S_IFDIR | (attr.mode if attr.mode is not None else 0o777 & ~opts.umask)
            nlink = 2
        elif attr.kind == LINK:
            mode, nlink = stat.S_IFLNK | 0o777, 1
        else:
            mode = stat.S_IFREG | (attr.mode if attr.mode is not None else 0o666 & ~opts.umask)
            nlink = 1
        size = attr.size
        if attr.kind == LINK and attr.target is not None:
            size = len(attr.target.encode(errors="surrogateescape"))
        mtime_ns = int(attr.mtime * 1e9)
        if attr.mtime_ns is not None and abs(attr.mtime_ns - mtime_ns) < 10_000:  # else mtime changed since
            mtime_ns = attr.mtime_ns
        return {
            "st_mode": mode, "st_nlink": nlink, "st_size": size,
            "st_uid": opts.uid if attr.uid is None else attr.uid,
            "st_gid": opts.gid if attr.gid is None else attr.gid,
            "st_mtime": mtime_ns, "st_ctime": mtime_ns, "st_atime": mtime_ns,
            "st_blocks": (size + BLOCK - 1) // BLOCK, "st_blksize": IO_SIZE,
        }

    # Directories --------------------------------------------------------------

    def readdir(self, path: str) -> Iterator[tuple[str, Attr]]:
        """The entries of a directory, page by page as the listing arrives."""
        attr = self.lookup(path)
        if attr.kind != DIR:
            raise err(errno.ENOTDIR, path)
        base = path.rstrip("/")
        with self._table_lock:  # files created here and not uploaded yet: listed after the rest
            pending = {p[len(base) + 1:]: f for p, f in self._open.items()
                       if parent_of(p)[0] == path and f.base is None}
        listing = self.dirs.get(path)
        if path == "/":
            entries = self._list_buckets()
        elif listing is not None:
            entries = iter(list(listing.entries.items()))
        else:
            entries = self._list_dir(path)
        for name, entry in entries:
            if pending:
                pending.pop(name, None)  # uploaded meanwhile: listed once
            yield name, entry
        for name, open_file in pending.items():
            if not open_file.unlinked:
                yield name, self._open_attr(open_file)

    def _list_buckets(self) -> Iterator[tuple[str, Attr]]:
        for name, created in self.client.list_buckets():
            attr = Attr(DIR, mtime=created, marker=True)
            self.attrs.put("/" + name, attr)
            yield name, attr

    def _list_dir(self, path: str) -> Iterator[tuple[str, Attr]]:
        bucket, key = self.split(path)
        prefix = key + "/" if key else ""
        base = path.rstrip("/")
        stamp = self.attrs.stamp()
        collected: dict[str, Attr] | None = {}
        # Files of this page and the one before: a prefix "a/" shows nothing when a file "a" came
        # just before it (the file wins, as in docs/fuse.md). Only names listed close together can
        # meet like that, so no set of every name is kept.
        files: set[str] = set()
        hidden: list[str] = []  # keys (and prefixes) no name on the mount can reach
        for page in self.client.iter_list(bucket, prefix, "/"):
            recent, files = files, set()
            for info in page.objects:
                name = info.key[len(prefix):]
                if not name or name in (".", ".."):
                    if name:
                        hidden.append(info.key)
                    continue  # the directory's own marker
                child = f"{base}/{name}"
                attr = self._attr_from_stat(info)
                known = self.attrs.get(child)
                if known is not None and known is not MISSING and known.etag == info.etag and not known.from_listing:
                    attr = known  # same object: keep the metadata a lookup fetched
                self.attrs.put(child, attr, stamp)
                if collected is not None:
                    collected[name] = attr
                files.add(name)
                yield name, attr
            for common in page.prefixes:
                name = common[len(prefix):-1]
                if not name or "/" in name or name in (".", ".."):
                    hidden.append(common)
                    continue
                if name in files or name in recent:
                    continue
                child = f"{base}/{name}"
                attr = self.attrs.get(child)
                if attr is None or attr is MISSING or attr.kind != DIR:
                    attr = Attr(DIR, mtime=self.started, marker=None, from_listing=True)
                    self.attrs.put(child, attr, stamp)
                if collected is not None:
                    if collected.get(name, attr).kind != FILE:  # a file and a prefix with one name: the file wins
                        collected[name] = attr
                    if len(collected) > self.dirs.max_entries:
                        collected = None
                yield name, attr
            if collected is not None and len(collected) > self.dirs.max_entries:
                collected = None
        self.attrs.renew(stamp)  # fresh from the end of the listing, not its start
        if hidden:
            self._warn_hidden(path, bucket, hidden)
        if collected is not None:
            self.dirs.put(path, collected)

    @staticmethod
    def is_hidden_key(name: str) -> bool:
        """A child name (the part of a key or common prefix after its directory's prefix) no path on
        the mount can reach: ".", ".." or an empty path segment."""
        return name.rstrip("/") in ("", ".", "..") and name != ""

    def _warn_hidden(self, path: str, bucket: str, keys: list[str]) -> None:
        """Keys with a ".", ".." or empty path segment cannot be shown: the directory looks empty and
        rmdir says ENOTEMPTY. Say which, once a minute per directory (docs/fuse.md, Known limits)."""
        now = time.monotonic()
        with self._table_lock:
            if now - self._hidden_warned.get(path, -HIDDEN_WARN_SECONDS) < HIDDEN_WARN_SECONDS:
                return
            if len(self._hidden_warned) >= 1000:
                self._hidden_warned = {p: t for p, t in self._hidden_warned.items()
                                       if now - t < HIDDEN_WARN_SECONDS}
            self._hidden_warned[path] = now
        named = ", ".join(repr(f"{bucket}/{key}") for key in keys[:10])
        more = f" and {len(keys) - 10} more" if len(keys) > 10 else ""
        log.warning("%s: the mount cannot show %d key(s) or prefix(es) with a '.', '..' or empty path segment: "
                    "%s%s; the directory cannot be removed (ENOTEMPTY) while they exist: rename or delete them "
                    "with an S3 client", path, len(keys), named, more)

    def _forget(self, path: str, tree: bool = False) -> None:
        parent, name = parent_of(path)
        if tree:
            self.attrs.invalidate_tree(path)
            self.dirs.invalidate_tree(path)
        self.attrs.put_missing(path)
        self.dirs.discard(parent, name)
        self._content_changed(path)
        if tree:
            self.ahead.changed(path, tree=True)

    def _remember(self, path: str, attr: Attr) -> None:
        parent, name = parent_of(path)
        self.ahead.changed(path)
        self.attrs.put(path, attr)
        self.dirs.add(parent, name, attr)

    def _content_changed(self, path: str) -> None:
        """This mount changed (or is changing) the bytes of ``path``: what was fetched of them goes."""
        self.first_bytes.invalidate(path)
        self.ahead.changed(path)

    # The mount ----------------------------------------------------------------------

    def statfs(self) -> dict:
        blocks = 1 << 40  # the object store has no fixed size: report 4 PiB of 4 KiB blocks free
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": blocks, "f_bfree": blocks, "f_bavail": blocks,
                "f_files": 1 << 32, "f_ffree": 1 << 32, "f_favail": 1 << 32, "f_namemax": 1024}

    def close(self) -> None:
        """Upload what is still dirty, then free the spool and the threads."""
        with self._table_lock:
            handles = list(self._handles)
        for fh in handles:
            try:
                self.release(fh)
            except Exception as exc:  # keep closing the others
                log.error("closing file handle %d at unmount: %s", fh, exc)
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.ahead.close()
        self.spool_dir.cleanup()
        self.client.close()

