"""Open files: read-ahead for remote reads, write spooling to a bounded temp dir, uploads.

A file opened for reading reads ranges of the object over HTTP. Sequential
reads switch to one streamed GET to the end of the object, which the
gateway sends ahead of the reader. A random read fetches exactly the bytes
asked for, so ``tail -c 100`` of a 1 GiB object fetches about a page.

A file written to is spooled to an unnamed temp file (never RAM), holding
the whole new content; ``flush``/``fsync``/``close`` upload it, as one PUT
or, from ``multipart_threshold`` up, as a multipart upload. All spools of a
mount share one byte budget; past it writes fail with ENOSPC.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import urllib3

from .cache import Attr
from .client import ObjectClient, StoreError, Unreachable

log = logging.getLogger("gateway.fuse.files")

MiB = 1024 * 1024


@dataclass
class FileOptions:
    stream_window: int = 16 * MiB  # a read this far ahead of a stream still continues it
    multipart_threshold: int = 32 * MiB  # files from this size up are uploaded in parts
    part_size: int = 16 * MiB
    upload_concurrency: int = 4  # parts in flight per upload
    small_put: int = 4 * MiB  # bodies up to this size are read into memory for the PUT


class SpoolDir:
    """The temp directory holding files being written, with a byte budget shared by all spools."""

    def __init__(self, parent: str | None = None, max_bytes: int = 8 * 1024 * MiB):
        if parent:
            os.makedirs(parent, exist_ok=True)
        self.path = tempfile.mkdtemp(prefix="cv-gateway-mount-", dir=parent)
        self.max_bytes = max_bytes
        self.used = 0
        self._lock = threading.Lock()

    def reserve(self, amount: int) -> None:
        with self._lock:
            if amount > 0 and self.used + amount > self.max_bytes:
                log.error("write spool %s is full (%d of %d bytes): raise --spool-size or close files sooner",
                          self.path, self.used, self.max_bytes)
                raise OSError(errno.ENOSPC, "the mount's write spool is full")
            self.used += amount

    def open(self) -> "Spool":
        return Spool(self)

    def cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class Spool:
    """The local copy of a file being written: an unnamed temp file plus its logical size."""

    def __init__(self, spool_dir: SpoolDir):
        self.dir = spool_dir
        self.fd = os.open(spool_dir.path, os.O_TMPFILE | os.O_RDWR, 0o600)
        self.size = 0

    def _resize(self, new_size: int) -> None:
        self.dir.reserve(new_size - self.size)
        self.size = new_size

    def pwrite(self, data: bytes, offset: int) -> int:
        end = offset + len(data)
        if end > self.size:
            self._resize(end)
        return os.pwrite(self.fd, data, offset)

    def pread(self, length: int, offset: int) -> bytes:
        return os.pread(self.fd, max(0, min(length, self.size - offset)), offset)

    def truncate(self, length: int) -> None:
        os.ftruncate(self.fd, length)
        self._resize(length)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self.dir.reserve(-self.size)
            self.size = 0


class OpenFile:
    """One path open in this mount, shared by all its file handles (as an inode would be).

    ``base`` is the object as it was when opened (None for a file created here);
    ``spool`` exists once the file is written to; ``meta`` is the metadata the
    next upload stores.
    """

    def __init__(self, path: str, bucket: str, key: str, base: Attr | None, meta: dict[str, str]):
        self.path, self.bucket, self.key = path, bucket, key
        self.base = base
        self.meta = meta
        self.spool: Spool | None = None
        self.dirty = False
        self.unlinked = False
        self.refs = 0
        self.mtime: float | None = None  # of the last local write or utimens
        self.lock = threading.RLock()

    @property
    def size(self) -> int:
        if self.spool is not None:
            return self.spool.size
        return self.base.size if self.base else 0

    def ensure_spool(self, client: ObjectClient, spool_dir: SpoolDir, keep_content: bool = True) -> Spool:
        """Create the spool, filled with the object's current bytes unless ``keep_content`` is False."""
        if self.spool is None:
            spool = spool_dir.open()
            try:
                if keep_content and self.base is not None and self.base.size > 0:
                    position, size = 0, self.base.size
                    while position < size:  # 8 MiB at a time: bounded memory for any size
                        data = client.get_range(self.bucket, self.key, position, min(size, position + 8 * MiB))
                        if not data:
                            break
                        spool.pwrite(data, position)
                        position += len(data)
            except BaseException:
                spool.close()
                raise
            self.spool = spool
        return self.spool


class RemoteReader:
    """Reads of an object not being written (one per file handle).

    A random read fetches exactly its range. From the second read in
    sequence on, one streamed GET from that offset to the end serves the
    reads: the same single stream a plain HTTP client reads (parallel ranged
    GETs measured slower; docs/fuse.md). The gateway sends ahead into the
    socket buffers while the kernel's own read-ahead keeps requests coming.
    Reads a little out of order are served from a buffer; a jump of more
    than ``stream_window`` ends the stream.
    """

    KEEP_BEHIND = 8 * MiB  # bytes kept behind the furthest read, for the kernel's out-of-order reads

    def __init__(self, client: ObjectClient, bucket: str, key: str, size: int, first: bytes | None,
                 options: FileOptions):
        self.client = client
        self.bucket, self.key, self.size = bucket, key, size
        self.first = first or b""
        self.window = max(options.stream_window, MiB)
        self._next = 0
        self._streak = 0
        self._stream: _Stream | None = None
        self._lock = threading.Lock()

    def read(self, offset: int, length: int) -> bytes:
        if offset >= self.size or length <= 0:
            return b""
        stop = min(self.size, offset + length)
        with self._lock:
            sequential = offset == self._next
            self._streak = self._streak + 1 if sequential else 0
            self._next = stop
            stream = self._stream
            if stream is not None and not stream.serves(offset, self.window):
                stream.close()
                stream = self._stream = None
            if stream is None and stop > len(self.first) and (self._streak >= 1 or offset == len(self.first) > 0):
                stream = self._stream = _Stream(self.client, self.bucket, self.key, offset, self.size,
                                                self.KEEP_BEHIND)
        if stop <= len(self.first):  # fetched with the lookup
            return self.first[offset:stop]
        if stream is None:
            if not sequential:
                self.client.count("random_reads")
            return self.client.get_range(self.bucket, self.key, offset, stop)
        try:
            data = stream.read(offset, stop)
            if len(data) == stop - offset:
                return data
            # A straggler from the kernel's parallel read-ahead, behind what the stream still buffers.
            self.client.count("stream_misses")
            return self.client.get_range(self.bucket, self.key, offset, stop)
        except BaseException:
            with self._lock:
                if self._stream is stream:
                    self._stream = None
            stream.close()
            raise

    def close(self) -> None:
        with self._lock:
            if self._stream is not None:
                self._stream.close()
                self._stream = None


class _Stream:
    """One GET from ``start`` to the end of the object, read by whichever FUSE thread needs the bytes.

    No thread of its own: the gateway streams ahead into the socket buffers and the kernel's
    read-ahead keeps requests coming, so a read finds its bytes arriving. Bytes read for a request
    further ahead (the kernel sends a few at once, in any order) are buffered for the ones behind.
    A background thread with a bounded queue measured slower: every chunk then crossed threads and
    the GIL, which costs most on a loaded machine (docs/fuse.md).
    """

    CHUNK = 256 * 1024

    def __init__(self, client: ObjectClient, bucket: str, key: str, start: int, size: int, keep_behind: int):
        self.client, self.bucket, self.key = client, bucket, key
        self.size, self.keep_behind = size, keep_behind
        self.start = start  # first byte still buffered
        self.end = start  # first byte not received yet
        self.consumed = start  # the furthest byte read
        self.chunks: deque[bytes] = deque()
        self.response = None
        self.closed = False
        self.lock = threading.Lock()
        client.count("streams")

    def serves(self, offset: int, window: int) -> bool:
        return not self.closed and self.start <= offset <= self.end + window

    def read(self, offset: int, stop: int) -> bytes:
        with self.lock:
            if self.closed:
                raise StoreError(errno.EIO, f"{self.bucket}/{self.key}: read-ahead stopped")
            if self.response is None:
                self.response = self.client.request("GET", "GET", self.bucket, self.key, stream=True,
                                                    headers={"range": f"bytes={self.start}-"})
            while self.end < stop:
                try:
                    # Exactly the bytes asked for when they are next: the slice below is then the whole
                    # chunk, which bytes slicing returns without a copy.
                    data = self.response.read(stop - self.end if offset == self.end else self.CHUNK)
                except (urllib3.exceptions.HTTPError, OSError) as exc:
                    log.error("reading %s/%s from the gateway failed: %s", self.bucket, self.key, exc)
                    raise Unreachable(f"reading {self.bucket}/{self.key} from the gateway failed ({exc})") from None
                if not data:
                    raise StoreError(errno.EIO, f"{self.bucket}/{self.key}: the stream ended at byte {self.end} "
                                                f"of {self.size}")
                self.client.count("bytes_in", len(data))
                self.chunks.append(data)
                self.end += len(data)
            if offset < self.start:
                return b""  # already trimmed: the caller fetches it on its own
            data = self._slice(offset, stop)
            self.consumed = max(self.consumed, stop)
            keep_from = self.consumed - self.keep_behind
            while self.chunks and self.start + len(self.chunks[0]) <= keep_from:
                self.start += len(self.chunks.popleft())
            return data

    def _slice(self, offset: int, stop: int) -> bytes:
        parts, position = [], self.start
        for chunk in self.chunks:
            end = position + len(chunk)
            if end > offset and position < stop:
                parts.append(chunk[max(0, offset - position): stop - position])
            if end >= stop:
                break
            position = end
        return b"".join(parts)

    def close(self) -> None:
        self.closed = True
        with self.lock:  # after any read in progress
            if self.response is not None:
                self.response.close()  # an unfinished body cannot go back to the pool
                self.response.release_conn()
                self.response = None
            self.chunks.clear()


def upload(client: ObjectClient, executor: ThreadPoolExecutor, open_file: OpenFile, content_type: str,
           options: FileOptions) -> str:
    """Upload a spooled file as its object; return the new ETag."""
    spool = open_file.spool
    size = spool.size
    bucket, key, meta = open_file.bucket, open_file.key, dict(open_file.meta)
    if size < options.multipart_threshold:
        body = os.pread(spool.fd, size, 0) if size <= options.small_put else _SpoolBody(spool.fd, size)
        return client.put(bucket, key, body, size, meta, content_type)
    part_size = max(options.part_size, -(-size // 9_000))
    upload_id = client.create_multipart(bucket, key, meta, content_type)
    try:
        etags: list[str] = []
        offsets = list(range(0, size, part_size))
        # Parts are read from the spool by the worker that sends them, at most upload_concurrency at a time.
        for batch_start in range(0, len(offsets), options.upload_concurrency):
            batch = offsets[batch_start: batch_start + options.upload_concurrency]
            futures = [
                executor.submit(_send_part, client, bucket, key, upload_id, batch_start + n + 1, spool.fd, offset,
                                min(part_size, size - offset))
                for n, offset in enumerate(batch)
            ]
            etags.extend(future.result() for future in futures)
        return client.complete_multipart(bucket, key, upload_id, etags)
    except BaseException:
        try:
            client.abort_multipart(bucket, key, upload_id)
        except StoreError as exc:
            log.warning("could not abort the multipart upload of %s/%s: %s", bucket, key, exc)
        raise


def _send_part(client, bucket, key, upload_id, number, fd, offset, length) -> str:
    return client.upload_part(bucket, key, upload_id, number, os.pread(fd, length, offset))


class _SpoolBody:
    """A file-like view of the first ``size`` bytes of a spool, for urllib3 to stream (and rewind on retry)."""

    def __init__(self, fd: int, size: int):
        self.fd, self.size, self.position = fd, size, 0

    def read(self, amount: int = -1) -> bytes:
        if amount is None or amount < 0:
            amount = self.size - self.position
        data = os.pread(self.fd, min(amount, self.size - self.position), self.position)
        self.position += len(data)
        return data

    def tell(self) -> int:
        return self.position

    def seek(self, position: int, whence: int = 0) -> int:
        self.position = position if whence == 0 else (self.position + position if whence == 1 else self.size)
        return self.position
