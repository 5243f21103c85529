"""The local backend: objects as files under cv-storage (see fslayout.py).

The files are the truth: a second gateway started on the same directory sees
every object, with nothing to rebuild. Writes go to a temp file under
``.gateway/tmp/<host>/`` on the same filesystem, are fsynced and renamed into
place, so a reader never sees a partial object.

Small objects are read inside the event loop: for page-cache hits a direct
os.read costs microseconds, less than handing it to a worker thread (see
../shared/CALIBRATION.md). fsync runs in a worker thread of a small pool of its own:
it waits for the disk, and concurrent PUTs that sync in parallel share the
filesystem's journal commits (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import json
import logging
import os
import resource
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from gateway import errors, mounts
from gateway.backend import (
    MULTIPART_BUCKET, Backend, BucketInfo, ByteRange, Capabilities, ListPage, ObjectInfo, ObjectMeta,
    ObjectReader, OpenFile, paginate, pread_chunks, pread_exact,
)
from gateway.hookspecs import hookimpl
from gateway.payload import Payload

from . import fslayout, fsutil, readcache
from .fslayout import BUCKET_FILE, NAME_FILE, OBJ_SUFFIX

log = logging.getLogger(__name__)
READ_CHUNK = 1024 * 1024
# Payloads up to this size are gathered in memory and written with one write().
BUFFER_LIMIT = 1024 * 1024
# What all PUTs together may gather in memory (each up to BUFFER_LIMIT, written with its header in one
# write): past it, a PUT streams to its temp file as a large one does. 400 clients stalled near the end
# of a 1 MiB body held 400 MB, and nothing bounded how many could.
GATHERED_LIMIT = 64 * 1024 * 1024
HEADER_SLACK = 1024  # room reserved for etag, size and checksums in streamed writes
# A rename into place that finds its directory gone makes it again and retries this often: another
# request (or server, on shared storage) may prune it each time, deleting the last object there.
PUBLISH_ATTEMPTS = 5
# How often making a key's directories is retried when one of them is pruned meanwhile.
DIRECTORY_RACE_RETRIES = 10
# Threads that fsync new objects. fsync waits for the disk, not the CPU; with several in flight
# the filesystem commits them together (ext4 here: 16 parallel write+fsync+rename loops reach
# about 9x one loop's rate), so concurrent PUTs are not serialized behind one another's fsync.
FSYNC_THREADS = 16
# The bytes of recently read small objects kept in memory (objects that fit the first read of a
# file, up to about 64 KiB: face and event images). A hit costs a stat() instead of open + read + close and a
# copy: about 3.5 µs of a 4 KiB GET (docs/performance.md).
READ_CACHE_BYTES = 256 * 1024 * 1024
# Larger objects up to READ_CHUNK are kept as open files instead (sent with sendfile): at most
# this many, and at most a quarter of the process's open-file limit.
READ_CACHE_FILES = 4096


def default_read_cache_files() -> int:
    """READ_CACHE_FILES, or a quarter of the process's open-file limit when that is lower (the rest
    is for connections and writes). ``gateway serve`` raises the soft limit first (cli.py)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return READ_CACHE_FILES
    return max(0, min(READ_CACHE_FILES, soft // 4))


class LocalBackend(Backend):
    """Options: ``root`` (the cv-storage directory), ``fsync`` (default true),
    ``fsync_dirs`` (also fsync the directory after a rename; default false)."""

    capabilities = Capabilities(range_reads=True, atomic_put=True, shared=False, listing="walk",
                                listing_metadata=True)
    eager_reads = True  # reads are plain system calls: nothing waits
    # Names on disk are the layout's names. A subclass for a filesystem that must spell them
    # otherwise (sharedfs through smbnetfs) overrides _disk_name and _layout_name and sets this
    # False; while it is True, object paths are built without calling them (the GET path).
    name_encoding_identity = True

    def __init__(self, name: str = "local", root: str = "./cv-storage", fsync: bool = True,
                 fsync_dirs: bool = False, read_cache_bytes: int | None = None, read_cache_files: int | None = None,
                 **options):
        super().__init__(name, **options)
        self.read_cache_configured = read_cache_bytes is not None  # else start() may turn the cache off
        if read_cache_bytes is None:
            read_cache_bytes = READ_CACHE_BYTES
        self.root = os.path.abspath(os.fspath(root))
        self.fsync = fsync
        self.fsync_dirs = fsync_dirs
        if isinstance(read_cache_bytes, bool) or not isinstance(read_cache_bytes, int) or read_cache_bytes < 0:
            raise ValueError(f"backends.{name}.read_cache_bytes: {read_cache_bytes!r} is not a byte count "
                             "(a whole number, 0 turns the cache of small objects off)")
        if read_cache_files is not None and (isinstance(read_cache_files, bool) or not isinstance(read_cache_files, int)
                                             or read_cache_files < 0):
            raise ValueError(f"backends.{name}.read_cache_files: {read_cache_files!r} is not a number of files "
                             "(a whole number, 0 keeps no files open)")
        self.read_cache_files_configured = read_cache_files is not None
        if read_cache_files is None:
            read_cache_files = default_read_cache_files()
        # Recently read objects, checked against a stat() of their file on every use (readcache.py).
        self.small_objects = (readcache.SmallObjects(read_cache_bytes, read_cache_files) if read_cache_bytes
                              else None)
        self.host = socket.gethostname() or "localhost"
        self.tmp_dir = os.path.join(self.root, ".gateway", "tmp", self.host)
        self._counter = itertools.count()
        # Who writes the temp files: the pid plus its start time (see fsutil.process_start).
        self._temp_owner = f"{os.getpid()}.{fsutil.process_start(os.getpid()) or 0}"
        # Temp files of failed writes that could not be removed then (the disk failing, the failure
        # that failed the write): removed after the next write that works, or by the next sweep.
        # Left to start-up cleanup, each would stay as large as its object until a restart.
        self._leftover_temps: set[str] = set()
        # Object path -> [PUTs of it in progress here, the newest (time, ETag) one of them published]
        # (put(): the newer of two concurrent writes stays, whichever finishes last).
        self._writing: dict[str, list] = {}
        self._gathered = 0  # bytes of PUT bodies gathered in memory now (GATHERED_LIMIT)

    # Life cycle ---------------------------------------------------------------

    async def start(self) -> None:
        try:
            os.makedirs(self.tmp_dir, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"backend {self.name!r}: root {self.root!r} is not usable: {exc.strerror}") from None
        self.clean_temp_files()
        self._check_read_cache()

    async def close(self) -> None:
        if self.small_objects is not None:
            self.small_objects.clear()  # its open files: nothing keeps the filesystem busy after a close

    def _check_read_cache(self) -> None:
        """Turn the default cache of small objects off when the root is on a network filesystem.

        Its entries are checked with stat(), which an NFS or SMB client may answer from its
        attribute cache for seconds, so another server's overwrite could go unseen; open(), which
        reads without the cache, revalidates. Shared storage wants the sharedfs backend anyway
        (docs/shared-storage.md); a read_cache_bytes set in the configuration is kept as it is, but
        then without open files unless read_cache_files is set too (an open file on SMB can block
        another client's delete or rename; a deleted one on NFS lingers as a .nfsXXXX file).
        """
        if self.small_objects is None:
            return
        mount = mounts.mount_of(self.root)
        if mount is None or not mount.network:
            return
        if self.read_cache_configured:
            if not self.read_cache_files_configured:
                self.small_objects.max_files = 0
        else:
            self.small_objects = None
            log.warning("backend %r: %s is on a %s filesystem: the cache of small objects is off (its stat() "
                        "checks may be answered from the client's cache). For storage shared between servers "
                        "use the sharedfs backend; set read_cache_bytes to keep the cache anyway.",
                        self.name, self.root, mount.fstype)

    def clean_temp_files(self) -> int:
        """Remove temp files that this host's dead processes left behind; return how many.

        Files of live processes stay: another gateway on this host (or another
        instance in this process) may be writing them right now.
        """
        removed = self.remove_leftover_temps()
        stale, _ = fsutil.remove_stale_temp_files(self.tmp_dir)
        if stale:
            log.info("removed %d stale temp files from %s", stale, self.tmp_dir)
        return removed + stale

    def remove_leftover_temps(self) -> int:
        """Remove the temp files of failed writes that could not be removed when they failed; return
        how many went. Those that still cannot be removed stay listed for the next try."""
        removed = 0
        for path in list(self._leftover_temps):
            try:
                os.unlink(path)
                removed += 1
            except FileNotFoundError:
                pass
            except OSError:
                continue
            self._leftover_temps.discard(path)
        if removed:
            log.info("backend %r: removed %d temp files of writes that failed while the storage failed",
                     self.name, removed)
        return removed

    async def check_writable(self) -> None:
        probe, fd = self._create_temp()
        try:
            with open(fd, "wb") as f:
                f.write(b"ok")
        finally:
            os.unlink(probe)

    # Paths ------------------------------------------------------------------

    def _bucket_dir(self, bucket: str) -> str:
        if not bucket or "/" in bucket or "\x00" in bucket or bucket in (".", "..") or (
            bucket.startswith(".") and bucket != MULTIPART_BUCKET
        ):
            raise errors.InvalidBucketName(BucketName=bucket)
        return os.path.join(self.root, bucket)

    def _disk_name(self, name: str) -> str:
        """How one layout name (an escaped segment, ``x%obj``, %name, %bucket.json) is spelt on disk.

        Bucket and temp file names are not layout names: S3 bucket names and
        the temp names are plain [a-z0-9.-] and need no encoding.
        """
        return name

    def _layout_name(self, name: str) -> str:
        """The layout name a name listed on disk stands for: the inverse of _disk_name."""
        return name

    def _object_path(self, bucket: str, key: str) -> str:
        relpath = fslayout.key_to_relpath(key)
        if not self.name_encoding_identity:
            relpath = "/".join([self._disk_name(name) for name in relpath.split("/")])
        return os.path.join(self._bucket_dir(bucket), relpath)

    def _layout_file(self, directory: str, name: str) -> str:
        """The path of one of the layout's own files (%name, %bucket.json) in ``directory``."""
        return os.path.join(directory, self._disk_name(name))

    def _missing(self, bucket: str, key: str) -> errors.GatewayError:
        if not fsutil.is_dir(self._bucket_dir(bucket)):
            return errors.NoSuchBucket(BucketName=bucket)
        return errors.NoSuchKey(Key=key)

    # Buckets ----------------------------------------------------------------

    async def create_bucket(self, bucket: str) -> None:
        path = self._bucket_dir(bucket)
        try:
            os.mkdir(path)
        except FileExistsError:
            raise errors.BucketAlreadyOwnedByYou(BucketName=bucket) from None
        except FileNotFoundError:
            raise self._root_gone() from None
        try:
            self._write_layout_file(path, BUCKET_FILE, json.dumps({"name": bucket, "created": time.time()}))
        except BaseException:
            # Half a bucket (a full disk): take the directory back, or the retry would answer
            # BucketAlreadyOwnedByYou for a bucket that was never made.
            shutil.rmtree(path, ignore_errors=True)
            raise

    async def delete_bucket(self, bucket: str) -> None:
        path = self._bucket_dir(bucket)
        if not fsutil.is_dir(path):
            raise errors.NoSuchBucket(BucketName=bucket)
        if fslayout.has_objects(self._entries, path):
            raise errors.BucketNotEmpty(BucketName=bucket)
        # Errors are raised, not ignored: on a read-only filesystem, or with a file the gateway's user
        # may not remove, the bucket stayed while the client was told 204. (What could go before the
        # error is the layout's own files and empty directories: no object.)
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            pass  # deleted by another request meanwhile
        except OSError as exc:
            if exc.errno == errno.ENOTEMPTY:  # an object PUT into it meanwhile
                raise errors.BucketNotEmpty(BucketName=bucket) from None
            raise

    async def head_bucket(self, bucket: str) -> BucketInfo:
        path = self._bucket_dir(bucket)
        try:
            with open(self._layout_file(path, BUCKET_FILE)) as f:
                return BucketInfo(bucket, json.load(f)["created"])
        except (OSError, ValueError, KeyError):
            # A bucket directory made by hand (or copied without the marker) is still a bucket.
            try:
                return BucketInfo(bucket, os.stat(path).st_mtime)
            except FileNotFoundError:
                raise errors.NoSuchBucket(BucketName=bucket) from None

    async def list_buckets(self) -> list[BucketInfo]:
        buckets = []
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except FileNotFoundError:
            raise self._root_gone() from None
        for entry in entries:
            if entry.is_dir() and not entry.name.startswith("."):
                buckets.append(await self.head_bucket(entry.name))
        return buckets

    # Reading ----------------------------------------------------------------

    def _info(self, header: dict) -> ObjectInfo:
        try:
            return ObjectInfo(
                header["key"], header["size"], header["etag"], header["time"],
                ObjectMeta.from_json(header["meta"]), header.get("checksums", {}),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise fslayout.CorruptObject(f"object header lacks a valid field: {exc}") from None

    def _load(self, fd: int, path: str) -> tuple[ObjectInfo, int, bytes]:
        """Read an open object file's header: (info, data offset, first bytes); a damaged file is an InternalError."""
        try:
            header, offset, first = fslayout.read_header(fd)
            return self._info(header), offset, first
        except (fslayout.CorruptObject, ValueError) as exc:
            log.error("%s is not a valid object file (%s); move it away or restore it from a backup", path, exc)
            raise errors.InternalError(f"The stored object is damaged: {exc}.") from None

    async def get(self, bucket: str, key: str, byte_range: ByteRange | None = None) -> ObjectReader:
        reader = self._read(bucket, key, byte_range)
        if reader is None:
            raise self._missing(bucket, key)
        return reader

    async def get_if_present(self, bucket: str, key: str, byte_range: ByteRange | None = None) -> ObjectReader | None:
        # A cluster node's local miss before a relay: one failed open, no bucket check, no exception
        # raised through the callers (was ~7.5 µs of a relayed GET's ~100 on the relaying node).
        return self._read(bucket, key, byte_range)

    def _read(self, bucket: str, key: str, byte_range: ByteRange | None) -> ObjectReader | None:
        """get()'s work; None when the object is not there."""
        # The hot path of the whole gateway (docs/performance.md): a recently read object is a
        # stat() and a lookup; otherwise one open, usually one read, and the header parsed only the
        # first time these exact header bytes are seen.
        path = readcache.object_path(self, bucket, key)
        small = self.small_objects
        if small is not None:
            hit = self._small_hit(small, path, bucket, key)
            if hit is not None:
                info, data = hit
                start, stop = byte_range.resolve(info.size) if byte_range is not None else (0, info.size)
                if type(data) is bytes:
                    return ObjectReader(info, start, stop, data=data if byte_range is None else data[start:stop])
                data.acquire()
                return ObjectReader(info, start, stop, _close=data.release, file=data,
                                    file_position=data.offset + start)
        fd = _open_if_present(path)
        if fd is None:
            return None
        try:
            info, offset, first = self._first_read(fd, path)
            start, stop = byte_range.resolve(info.size) if byte_range else (0, info.size)
            whole_in_first = offset + info.size <= len(first)
            send_files = small is not None and small.max_files > 0  # on by default on local disks only
            if send_files and not whole_in_first and info.size <= READ_CHUNK:
                # Kept open for sendfile (readcache.SmallObjects); this reader holds it too.
                file = OpenFile(fd, offset)
                small.offer(path, os.fstat(fd), info, file)
                return ObjectReader(info, start, stop, _close=file.release, file=file, file_position=offset + start)
            if offset + stop <= len(first):
                if small is not None and whole_in_first:
                    whole = first[offset: offset + info.size]
                    small.offer(path, os.fstat(fd), info, whole)
                    data = whole if byte_range is None else whole[start:stop]
                else:
                    data = first[offset + start: offset + stop]
                os.close(fd)
                return ObjectReader(info, start, stop, data=data)
            if stop - start <= READ_CHUNK:
                if send_files:
                    # Up to 1 MiB of a larger object (a ranged read: the FUSE mount reads this way):
                    # sent from the file too, which stays open only as long as this reader.
                    file = OpenFile(fd, offset)
                    return ObjectReader(info, start, stop, _close=file.release, file=file,
                                        file_position=offset + start)
                # Up to 1 MiB: one pread into one bytes object, sent as one body message.
                data = pread_exact(fd, stop - start, offset + start)
                os.close(fd)
                return ObjectReader(info, start, stop, data=data)
        except BaseException:
            _close_quietly(fd)
            raise
        return ObjectReader(info, start, stop, _chunks=pread_chunks(fd, offset + start, offset + stop, READ_CHUNK),
                            _close=lambda: _close_quietly(fd))

    def open_file(self, bucket: str, key: str) -> tuple[ObjectInfo, int, int] | None:
        # The object file itself: an overwrite renames a new file over the name and a delete
        # unlinks it, so the descriptor keeps reading the version opened.
        path = readcache.object_path(self, bucket, key)
        fd = _open_if_present(path)
        if fd is None:
            return None
        try:
            info, offset, _ = self._first_read(fd, path)
        except BaseException:
            _close_quietly(fd)
            raise
        return info, fd, offset

    async def head(self, bucket: str, key: str) -> ObjectInfo:
        info = self._head(bucket, key)
        if info is None:
            raise self._missing(bucket, key)
        return info

    async def head_if_present(self, bucket: str, key: str) -> ObjectInfo | None:
        return self._head(bucket, key)

    def _head(self, bucket: str, key: str) -> ObjectInfo | None:
        # Like _read(): a cached small object after a stat(), else the file's header (parsing remembered).
        path = readcache.object_path(self, bucket, key)
        small = self.small_objects
        if small is not None:
            hit = self._small_hit(small, path, bucket, key)
            if hit is not None:
                return hit[0]
        fd = _open_if_present(path)
        if fd is None:
            return None
        try:
            # Not recorded in the cache of small objects: a HEAD does not read the data, and a client
            # that checks many objects (a sync tool) would push out the ones being read.
            return self._first_read(fd, path)[0]
        finally:
            os.close(fd)

    def _first_read(self, fd: int, path: str) -> tuple[ObjectInfo, int, bytes]:
        """The first FIRST_READ bytes of an open object file: (info, data offset, those bytes),
        the header parsed only the first time these exact header bytes are seen."""
        first = os.read(fd, fslayout.FIRST_READ)
        header = readcache.header_bytes(first)  # None when the header is longer than this read
        cached = readcache.headers.get(header)
        if cached is not None:
            return cached[0], cached[1], first
        os.lseek(fd, 0, os.SEEK_SET)
        info, offset, first = self._load(fd, path)
        readcache.headers.put(header, (info, offset))
        return info, offset, first

    def _small_hit(self, small: readcache.SmallObjects, path: str, bucket: str, key: str):
        """(info, data) of an unchanged cached small object; None: read the file."""
        try:
            return small.lookup(path)
        except _ABSENT:  # deleted since it was cached
            raise self._missing(bucket, key) from None
        except OSError:
            return None  # the open that follows reports it as it always does

    # Writing ----------------------------------------------------------------

    def _temp_path(self) -> str:
        return os.path.join(self.tmp_dir, f"{self._temp_owner}-{next(self._counter)}-{os.urandom(4).hex()}")

    def _create_temp(self) -> tuple[str, int]:
        """A new temp file (path, descriptor open for writing). Its directory is made again when it is
        gone (the data directory emptied, or a copy mounted over it without .gateway/, as
        docs/storage-layout.md allows): every write was a 500 until a restart. Never the data
        directory itself: gone, it is a disk not mounted, and writing there would fill another one."""
        tmp = self._temp_path()
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            if not self._root_present():
                raise self._root_gone() from None
            os.makedirs(self.tmp_dir, exist_ok=True)
        return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

    def _root_present(self) -> bool:
        """Whether the data directory is there to write in (sharedfs: and the share mounted on it)."""
        return fsutil.is_dir(self.root)

    def _root_gone(self) -> errors.GatewayError:
        return errors.BackendUnavailable(
            f"Backend {self.name!r}: its data directory {self.root} is gone (a disk or share not mounted, or "
            "the directory deleted). Mount or restore it; the request can be retried.")

    async def put(self, bucket: str, key: str, payload: Payload, meta: ObjectMeta) -> ObjectInfo:
        final = self._object_path(bucket, key)
        bucket_dir = self._bucket_dir(bucket)
        if not fsutil.is_dir(bucket_dir):
            raise errors.NoSuchBucket(BucketName=bucket)
        meta_json = meta.to_json()
        tmp, fd = self._create_temp()
        # Two PUTs of one key here at once: the one with the later time stays, as S3 ("the request with
        # the latest timestamp wins") and a cluster's overwrites (cluster/versions.py) order versions,
        # whichever fsync ends first. Renamed over a newer version, an older one would undo a decision
        # other nodes already acted on (they dropped their copies for the newer one): the key was lost.
        writing = self._writing.setdefault(final, [0, None])
        writing[0] += 1
        buffered_size = 0  # counted in self._gathered while gathered
        try:
            buffered: list[bytes] | None = []
            reserved = 0
            position = 0
            async for chunk in payload:
                if buffered is not None:
                    buffered.append(chunk)
                    buffered_size += len(chunk)
                    self._gathered += len(chunk)
                    if buffered_size <= BUFFER_LIMIT and self._gathered <= GATHERED_LIMIT:
                        continue
                    # Too big to gather (or too much gathered at once): reserve room for the header and
                    # stream the rest.
                    probe = fslayout.encode_header(key, 0, "", 0.0, meta_json, {})
                    reserved = len(probe) - fslayout.PREFIX.size + HEADER_SLACK
                    position = fslayout.PREFIX.size + reserved
                    chunk, buffered = b"".join(buffered), None
                    self._gathered -= buffered_size
                    buffered_size = 0
                position += _write_all(fd, chunk, position)
            info = ObjectInfo(key, payload.size, payload.etag, time.time(), meta, payload.checksums)
            header = fslayout.encode_header(key, info.size, info.etag, info.last_modified, meta_json,
                                            dict(info.checksums), pad_to=reserved)
            if buffered is not None:
                _write_all(fd, header + b"".join(buffered), 0)
            else:
                _write_all(fd, header, 0)
            if self.fsync:
                # The worker closes the file too: if this request is cancelled while the fsync
                # runs, the descriptor stays valid until the thread is done with it.
                synced, fd = fd, -1
                await asyncio.get_running_loop().run_in_executor(_fsync_pool(), _fsync_and_close, synced)
            else:
                os.close(fd)
                fd = -1
            version = (info.last_modified, info.etag)
            if writing[1] is not None and version < writing[1]:
                self._discard_temp(tmp)  # a newer version of the key, written at the same time, is in place
            else:
                self._publish(tmp, final, bucket_dir, key)
                writing[1] = version
        except BaseException:
            if fd >= 0:
                os.close(fd)
            self._discard_temp(tmp)
            raise
        finally:
            self._gathered -= buffered_size
            writing[0] -= 1
            if not writing[0]:
                self._writing.pop(final, None)
        if self._leftover_temps:  # the storage works again: what failed writes left goes now
            self.remove_leftover_temps()
        return info

    def _discard_temp(self, tmp: str) -> None:
        """Remove the temp file of a write that failed; when that fails too (the failure that failed the
        write, still going on), it is removed later (_remove_later)."""
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        except OSError:
            self._remove_later(tmp)

    def _remove_later(self, tmp: str) -> None:
        """After the next write that works, or at the next sweep (remove_leftover_temps)."""
        self._leftover_temps.add(tmp)

    def _publish(self, tmp: str, final: str, bucket_dir: str, key: str) -> None:
        parent = os.path.dirname(final)
        for _ in range(PUBLISH_ATTEMPTS):
            try:
                os.replace(tmp, final)
                if self.small_objects is not None:
                    self.small_objects.discard(final)  # its memory now; a stat() would refuse it anyway
                break
            except FileNotFoundError:
                # The directory is missing, or a concurrent DELETE removed it after we made it.
                if not fsutil.is_dir(bucket_dir):
                    raise errors.NoSuchBucket(BucketName=os.path.basename(bucket_dir)) from None
                self._make_parents(bucket_dir, key)
            except (NotADirectoryError, IsADirectoryError) as exc:
                raise errors.InvalidArgument(f"key conflicts with the storage layout: {exc.strerror}") from None
            except OSError as exc:
                if exc.errno == errno.ENAMETOOLONG:
                    raise errors.KeyTooLongError(
                        "The key's path under the storage root is longer than the filesystem allows; "
                        "use a shorter key (or a shorter root directory)."
                    ) from None
                raise
        else:
            raise errors.ServiceUnavailable(
                f"Could not store {key!r}: its directory was made again {PUBLISH_ATTEMPTS} times and was gone "
                "again each time the object was renamed into it (other requests or servers deleting the last "
                "objects there); retry the request.")
        # Layout names, not the path: on disk an encoding may spell the marker otherwise.
        if "%h" in fslayout.key_to_relpath(key).rpartition("/")[0]:
            # Check again after the rename: a concurrent DELETE may have removed a %name file
            # just before our object arrived in its directory.
            self._make_parents(bucket_dir, key)
        if self.fsync_dirs:
            dir_fd = os.open(parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def _make_parents(self, bucket_dir: str, key: str) -> None:
        """Create the key's directories, again when another request or server prunes one of them meanwhile."""
        for _ in range(DIRECTORY_RACE_RETRIES):
            try:
                self._make_parents_once(bucket_dir, key)
                return
            except FileNotFoundError:
                if not fsutil.is_dir(bucket_dir):
                    raise errors.NoSuchBucket(BucketName=os.path.basename(bucket_dir)) from None
        raise errors.ServiceUnavailable(f"Could not create the directories of {key!r}: another request or server "
                                        "kept removing them; retry the request.")

    def _make_parents_once(self, bucket_dir: str, key: str) -> None:
        path = bucket_dir
        for segment in key.split("/")[:-1]:
            name = fslayout.escape_segment(segment)
            path = os.path.join(path, self._disk_name(name))
            os.makedirs(path, exist_ok=True)
            if "%h" in name and not os.path.exists(self._layout_file(path, NAME_FILE)):
                # A hashed (long) directory name remembers its full segment for listings.
                self._write_layout_file(path, NAME_FILE, segment)

    def _write_layout_file(self, directory: str, name: str, text: str) -> None:
        """Write one of the layout's own files whole, through a temp file and a rename, so that
        a reader (maybe on another server) sees all of it or nothing."""
        tmp, fd = self._create_temp()
        try:
            with open(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, self._layout_file(directory, name))
        except BaseException:
            self._discard_temp(tmp)
            raise

    # Deleting ---------------------------------------------------------------

    async def delete(self, bucket: str, key: str) -> None:
        path = self._object_path(bucket, key)
        bucket_dir = self._bucket_dir(bucket)
        if self.small_objects is not None:
            self.small_objects.discard(path)
        try:
            await self._unlink_object(path, key)
        except OSError as exc:
            if not isinstance(exc, _ABSENT) and exc.errno != errno.ENAMETOOLONG:
                raise
            if not fsutil.is_dir(bucket_dir):
                raise errors.NoSuchBucket(BucketName=bucket) from None
            return
        self._prune_directories(os.path.dirname(path), key)

    async def _unlink_object(self, path: str, key: str) -> None:
        """Remove an object's file (sharedfs waits while another server holds it open)."""
        os.unlink(path)

    def _prune_directories(self, parent: str, key: str) -> None:
        """Remove directories the delete of ``key`` left empty, deepest (``parent``) first, up to the bucket.

        Another request or server may publish into a directory while we prune
        it: rmdir then fails (not empty) and we stop. A hashed directory's
        %name file, removed just before, is written again so listings still
        see the directory's full name.
        """
        for segment in reversed(key.split("/")[:-1]):
            removed_name_file = False
            try:
                if [self._layout_name(name) for name in os.listdir(parent)] == [NAME_FILE]:
                    os.unlink(self._layout_file(parent, NAME_FILE))
                    removed_name_file = True
                os.rmdir(parent)
            except OSError:
                if removed_name_file and os.path.isdir(parent):
                    try:
                        self._write_layout_file(parent, NAME_FILE, segment)
                    except OSError:
                        log.warning("could not restore %s; listings skip that directory",
                                    self._layout_file(parent, NAME_FILE))
                break
            parent = os.path.dirname(parent)

    # Listing ----------------------------------------------------------------

    async def list(self, bucket, prefix="", delimiter="", start_after="", max_keys=1000) -> ListPage:
        bucket_dir = self._bucket_dir(bucket)
        if not fsutil.is_dir(bucket_dir):
            raise errors.NoSuchBucket(BucketName=bucket)
        entries = fslayout.walk(self._entries, self._read_info, bucket_dir, "", prefix, start_after, delimiter == "/")
        return paginate(entries, prefix, delimiter, start_after, max_keys)

    def _entries(self, directory: str) -> list[fslayout.Entry]:
        """A directory's objects and subdirectories, as (sort key, segment, path, is_dir), in key order."""
        try:
            scanned = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return []
        layout_name = self._layout_name
        return fslayout.sorted_entries(
            ((layout_name(entry.name), entry.path, entry.is_dir()) for entry in scanned),
            self._header_key_segment,
            lambda path: self._read_name_file(path) or self._segment_from_objects(path),
        )

    # Listing helpers: "not there" (deleted while we list) leaves an entry out; any other error of the
    # filesystem is raised, because a listing that quietly drops objects on a failing mount is what
    # a sync tool (rclone sync, aws s3 sync --delete) would act on.

    def _read_name_file(self, directory: str) -> str | None:
        try:
            with open(self._layout_file(directory, NAME_FILE), encoding="utf-8") as f:
                return f.read()
        except _ABSENT:
            return None
        except UnicodeDecodeError:
            return None  # damaged: the name comes from an object below instead

    def _segment_from_objects(self, directory: str) -> str | None:
        """A hashed directory's full name, from the key of any object below it (its %name file is missing)."""
        for parent, _, names in os.walk(directory, onerror=_raise_unless_gone):
            for name in names:
                if self._layout_name(name).endswith(OBJ_SUFFIX):
                    info = self._read_info(os.path.join(parent, name))
                    if info is not None:
                        depth = os.path.relpath(parent, directory).count(os.sep) + (parent != directory)
                        return info.key.split("/")[-(depth + 2)]
        return None

    def _header_key_segment(self, path: str) -> str | None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except _ABSENT:
            return None
        try:
            return fslayout.read_header(fd)[0]["key"].rsplit("/", 1)[-1]
        except (fslayout.CorruptObject, ValueError, KeyError, TypeError):
            log.warning("skipping %s: not a valid object file", path)
            return None
        finally:
            os.close(fd)

    def _read_info(self, path: str) -> ObjectInfo | None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None  # deleted while we listed
        try:
            return self._info(fslayout.read_header(fd)[0])
        except (fslayout.CorruptObject, ValueError):
            log.warning("skipping %s: not a valid object file", path)
            return None
        finally:
            os.close(fd)


# How os.open/unlink say that an object is not there.
_ABSENT = (FileNotFoundError, NotADirectoryError)


def _open_if_present(path: str) -> int | None:
    """A read-only descriptor of the object file at ``path``; None when there is none (a name too
    long for the filesystem cannot have been stored either)."""
    try:
        return os.open(path, os.O_RDONLY)
    except _ABSENT:
        return None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            return None
        raise


def _raise_unless_gone(exc: OSError) -> None:
    """os.walk's onerror: a directory removed while we walk is skipped; any other error is raised."""
    if not isinstance(exc, _ABSENT):
        raise exc


def _write_all(fd: int, data: bytes, position: int) -> int:
    view = memoryview(data)
    written = 0
    while written < len(view):
        written += os.pwrite(fd, view[written:], position + written)
    return written


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _fsync_pool() -> ThreadPoolExecutor:
    """The fsync threads, made on first use (one pool per process, shared by every backend)."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(FSYNC_THREADS, thread_name_prefix="local-fsync")
    return _pool


def _fsync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


@hookimpl
def register_backends(register):
    register("local", LocalBackend)
