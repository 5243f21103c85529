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
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

from .cache import Attr
from .client import BodyStream, ObjectClient, Stored, StoreError

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

    def pread_into(self, buffer: memoryview, offset: int) -> int:
        wanted = max(0, min(len(buffer), self.size - offset))
        return os.preadv(self.fd, [buffer[:wanted]], offset) if wanted else 0

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
        # A write that failed (the spool was full): the spool lacks bytes the program wrote, so it is
        # never uploaded; every flush and close of the file reports this until its last handle closes.
        self.write_error: OSError | None = None
        # The first bytes fetched with the lookup, kept when the name went away (unlink, renamed
        # over): the object is deleted, but its open handles can still read what was fetched.
        self.first: bytes | None = None
        self.lock = threading.RLock()

    @property
    def size(self) -> int:
        if self.spool is not None:
            return self.spool.size
        return self.base.size if self.base else 0

    def ensure_spool(self, client: ObjectClient, spool_dir: SpoolDir, keep_content: bool = True,
                     keep_bytes: int | None = None) -> Spool:
        """Create the spool, filled with the object's bytes unless ``keep_content`` is False (only
        the first ``keep_bytes`` of them, when the rest is about to be cut off anyway).

        Only the version that was opened (If-Match): the program writes into what it saw, and another
        client may have replaced the object since (within the attribute TTL). Fetched without the
        condition, a replaced object gave the first ``base.size`` bytes of the new version, which the
        upload then stored with the program's bytes: neither version, silently (an append to a 4-byte
        file another client had rewritten stored 4 bytes of its version and the appended line). Now
        such a write fails with EIO (412) and the object keeps the other client's version.

        The bytes kept of a file whose name went away (``first``, see namespace._keep_first_bytes)
        are used when they hold all that is needed: the object itself is gone then (deleted, or
        another object has its key)."""
        if self.spool is None:
            spool = spool_dir.open()
            try:
                if keep_content and self.base is not None and self.base.size > 0:
                    position, size = 0, self.base.size if keep_bytes is None else min(self.base.size, keep_bytes)
                    if self.first is not None and len(self.first) >= size:
                        spool.pwrite(self.first[:size], 0)
                        position = size
                    while position < size:  # 8 MiB at a time: bounded memory for any size
                        data = client.get_range(self.bucket, self.key, position, min(size, position + 8 * MiB),
                                                self.base.etag or None)
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

    A random read fetches exactly its range. A read that continues the
    previous one (or starts at most ``SLACK`` past its end) starts one
    streamed GET to the end of the object, which serves the reads from then
    on: the same single stream a plain HTTP client reads (parallel ranged
    GETs measured slower; docs/fuse.md). The gateway sends ahead into the
    socket buffers while the kernel's requests keep coming. Reads go into
    the caller's buffer (``read_into``): for the mount, libfuse's reply
    buffer, so the next bytes of the stream are received straight into it.
    Reads a little out of order are served from a buffer; a jump of more
    than ``stream_window`` ends the stream.
    """

    KEEP_BEHIND = 8 * MiB  # bytes kept behind the furthest read, for the kernel's out-of-order reads
    SLACK = 8 * MiB  # a first read this far past the previous one still starts a stream (from there)

    def __init__(self, client: ObjectClient, bucket: str, key: str, size: int, first: bytes | None,
                 options: FileOptions, etag: str | None = None):
        self.client = client
        self.bucket, self.key, self.size = bucket, key, size
        # Every GET asks for this version only (If-Match): an object replaced while open fails the read
        # with EIO instead of returning bytes of two versions, or ending early without an error.
        self.etag = etag or None
        self.first = first or b""
        self.window = max(options.stream_window, MiB)
        self._next = 0  # where the last read ended
        self._stream: _Stream | None = None
        self._lock = threading.Lock()

    def read(self, offset: int, length: int) -> bytes:
        buffer = bytearray(max(0, min(length, self.size - offset)))
        filled = self.read_into(offset, memoryview(buffer))
        return bytes(buffer[:filled])

    def read_into(self, offset: int, buffer: memoryview) -> int:
        """Read bytes from ``offset`` into ``buffer``; return how many (fewer only at the end of the object)."""
        if offset >= self.size or len(buffer) == 0:
            return 0
        stop = min(self.size, offset + len(buffer))
        buffer = buffer[: stop - offset]
        with self._lock:
            previous, self._next = self._next, stop
            sequential = offset == previous
            stream = self._stream
            if stream is not None and not stream.serves(offset, self.window):
                stream.close()
                stream = self._stream = None
            # A read that continues the previous one starts a stream, and so does one a little past it
            # (the kernel's parallel read-ahead requests arrive in any order): from the previous end, so
            # that the requests behind it are served too.
            resume = offset if sequential else max(previous, len(self.first))
            if stream is None and stop > len(self.first) and (sequential or 0 <= offset - resume <= self.SLACK):
                stream = self._stream = _Stream(self.client, self.bucket, self.key, min(offset, resume),
                                                self.size, self.KEEP_BEHIND, self.etag)
        if stop <= len(self.first):  # fetched with the lookup
            buffer[:] = self.first[offset:stop]
            return len(buffer)
        if stream is None:
            if not sequential:
                self.client.count("random_reads")
            return self._fetch_range(offset, buffer)
        try:
            if stream.read_into(offset, buffer):
                return len(buffer)
            # A straggler from the kernel's parallel read-ahead, behind what the stream still buffers
            # (or the stream was replaced by a new one meanwhile).
            self.client.count("stream_misses")
            return self._fetch_range(offset, buffer)
        except BaseException:
            with self._lock:
                if self._stream is stream:
                    self._stream = None
            stream.close()
            raise

    def moved(self, bucket: str, key: str, etag: str) -> bool:
        """The object was renamed by this mount (a copy, then a delete of the old key): read the copy
        from now on. Still with this reader's If-Match: a copy of another version (the object was
        replaced before the rename) fails the reads with EIO, as a replaced object does. False then."""
        with self._lock:
            self.bucket, self.key = bucket, key
            stream = self._stream
            if stream is not None:  # an open body goes on; one opened from now on asks for the copy
                stream.bucket, stream.key = bucket, key
        return not self.etag or etag == self.etag

    def _fetch_range(self, offset: int, buffer: memoryview) -> int:
        data = self.client.get_range(self.bucket, self.key, offset, offset + len(buffer), self.etag)
        if len(data) < len(buffer):  # reads never pass self.size: the object is shorter than when opened
            raise OSError(errno.EIO, f"{self.bucket}/{self.key} changed while open: it now ends before byte "
                                     f"{offset + len(buffer)} of {self.size}")
        buffer[:] = data
        return len(data)

    def close(self) -> None:
        with self._lock:
            if self._stream is not None:
                self._stream.close()
                self._stream = None


class _Waiter:
    """A read waiting for the stream to reach it; the read that does fills its buffer."""

    __slots__ = ("buffer", "event", "filled", "offset")

    def __init__(self, offset: int, buffer: memoryview):
        self.offset, self.buffer = offset, buffer
        self.event = threading.Event()
        self.filled = False


class _Stream:
    """One GET from ``start`` to the end of the object, read by the FUSE threads that need the bytes.

    No thread of its own: the gateway streams ahead into the socket buffers and the kernel's requests
    keep coming, so a read finds its bytes arriving, and receives them straight into its buffer.
    The kernel's read-ahead sends a few requests at once, which FUSE's threads take in any order: a
    read ahead of the stream waits (briefly) for the reads behind it, and the thread that reaches it
    receives its bytes into its buffer too, so the socket is read back to back by one thread instead
    of handing over between threads (and the GIL) per MiB. Bytes for a read that never came are kept
    in ``chunks``; bytes received straight into a read's buffer leave a gap there. A background
    thread with a bounded queue measured slower: every chunk then crossed threads (docs/fuse.md).
    """

    WAIT_AHEAD = 8 * MiB  # a read this far ahead of the stream waits for the reads behind it ...
    WAIT_SECONDS = 0.01  # ... this long at most (if they never come, their bytes are buffered)
    FILL_AHEAD = 8 * MiB  # bytes a thread receives for waiting reads before it answers its own

    def __init__(self, client: ObjectClient, bucket: str, key: str, start: int, size: int, keep_behind: int,
                 etag: str | None = None):
        self.client, self.bucket, self.key, self.etag = client, bucket, key, etag
        self.size, self.keep_behind = size, keep_behind
        self.start = start  # bytes before this are forgotten
        self.end = start  # first byte not received yet
        self.consumed = start  # the furthest byte read
        self.chunks: deque[tuple[int, bytearray]] = deque()  # (offset, bytes), ascending, maybe with gaps
        self.body: BodyStream | None = None
        self.closed = False
        self.lock = threading.Lock()
        self.waiters: dict[int, _Waiter] = {}  # by offset
        client.count("streams")

    def serves(self, offset: int, window: int) -> bool:
        """False for a jump of more than ``window`` either way: then a new stream serves better.

        A read a little behind what the stream keeps (a straggler of the kernel's read-ahead) is
        still "served", by a ranged GET of its own, so the stream goes on for the reads around it.
        """
        return not self.closed and self.start - window <= offset <= self.end + window

    def read_into(self, offset: int, buffer: memoryview) -> bool:
        """Fill ``buffer`` with the bytes at ``offset``; False if the stream no longer has them (they
        were forgotten, or went straight into another read's buffer, or the stream was closed): the
        caller then fetches the range on its own."""
        stop = offset + len(buffer)
        with self.lock:
            if self.closed or offset < self.start:
                return False
            if self.body is None:
                self.body = self.client.open_body(self.bucket, self.key, self.start, self.etag)
            if self.end < offset <= self.end + self.WAIT_AHEAD and offset not in self.waiters:
                if self._wait_for(_Waiter(offset, buffer)):
                    self._consumed(stop)
                    return True
                if self.closed or offset < self.start:  # replaced by a new stream meanwhile
                    return False
            if offset > self.end:  # keep the bytes in between for the reads behind this one
                skipped = bytearray(offset - self.end)
                self.client.count("stream_buffered", len(skipped))
                self._receive(memoryview(skipped))
                self.chunks.append((offset - len(skipped), skipped))
            filled = 0
            if offset < self.end:
                filled = min(len(buffer), self.end - offset)
                if not self._copy_buffered(offset, buffer[:filled]):
                    return False
            if filled < len(buffer):  # the next bytes of the stream: straight into the caller's buffer
                self._receive(buffer[filled:])
            self._fill_waiters()
            self._consumed(stop)
            return True

    def _wait_for(self, waiter: _Waiter) -> bool:
        """Wait (lock released) until another read fills ``waiter`` (True) or, at most WAIT_SECONDS, for
        the stream to reach it (False: the caller goes on from where the stream is)."""
        self.waiters[waiter.offset] = waiter
        deadline = time.monotonic() + self.WAIT_SECONDS
        try:
            while not waiter.filled and waiter.offset > self.end and not self.closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.lock.release()
                try:
                    waiter.event.wait(remaining)
                finally:
                    self.lock.acquire()
        finally:
            del self.waiters[waiter.offset]
        return waiter.filled

    def _fill_waiters(self) -> None:
        """Receive the bytes of the reads waiting right behind the stream's end into their buffers.

        Their buffers stay valid: each waiter needs the lock, held here, to return.
        """
        budget = self.FILL_AHEAD
        while not self.closed:
            waiter = self.waiters.get(self.end)
            if waiter is None or waiter.filled:
                return
            if budget <= 0:  # enough: the next one receives its bytes itself
                waiter.event.set()
                return
            self._receive(waiter.buffer)
            waiter.filled = True
            waiter.event.set()
            budget -= len(waiter.buffer)

    def _consumed(self, stop: int) -> None:
        self.consumed = max(self.consumed, stop)
        keep_from = self.consumed - self.keep_behind
        while self.chunks and self.chunks[0][0] + len(self.chunks[0][1]) <= keep_from:
            self.chunks.popleft()
        self.start = max(self.start, keep_from)

    def _receive(self, target: memoryview) -> None:
        received = self.body.readinto(target)
        self.client.count("bytes_in", received)
        self.end += received
        if received < len(target):
            raise StoreError(errno.EIO, f"{self.bucket}/{self.key}: the stream ended at byte {self.end} "
                                        f"of {self.size}")

    def _copy_buffered(self, offset: int, target: memoryview) -> bool:
        position, stop = offset, offset + len(target)
        for chunk_start, chunk in self.chunks:
            chunk_stop = chunk_start + len(chunk)
            if chunk_stop <= position:
                continue
            if chunk_start > position:
                return False  # a gap: those bytes went straight to another read
            take = min(chunk_stop, stop) - position
            target[position - offset: position - offset + take] = \
                memoryview(chunk)[position - chunk_start: position - chunk_start + take]
            position += take
            if position >= stop:
                return True
        return position >= stop

    def close(self) -> None:
        self.closed = True
        with self.lock:  # after any read in progress
            if self.body is not None:
                self.body.close()
                self.body = None
            self.chunks.clear()
            for waiter in self.waiters.values():
                waiter.event.set()


def upload(client: ObjectClient, executor: ThreadPoolExecutor, open_file: OpenFile, content_type: str,
           options: FileOptions, stored: dict[str, str] | None = None) -> Stored:
    """Upload a spooled file as its object; return the new version's ETag and time. ``stored``: the
    stored headers (cache-control, ...) the new version keeps."""
    spool = open_file.spool
    size = spool.size
    bucket, key, meta = open_file.bucket, open_file.key, dict(open_file.meta)
    if size < options.multipart_threshold:
        body = os.pread(spool.fd, size, 0) if size <= options.small_put else _SpoolBody(spool.fd, size)
        return client.put(bucket, key, body, size, meta, content_type, stored=stored)
    part_size = max(options.part_size, -(-size // 9_000))
    upload_id = client.create_multipart(bucket, key, meta, content_type, stored)
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
            # Every part of the batch is waited for, the failed ones too: an abort sent while others were
            # still being written would leave those parts behind it, taking space nobody can free.
            wait(futures)
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
