"""The storage contract every backend plugin implements.

Only the bucket operations and get/put/head/delete/list are abstract.
Copy, exists and multipart uploads are built on them here, so a new backend
is small; a backend may override any of them when it can do better (for
example a native multipart API).

Every method raises :mod:`gateway.errors` classes, never a library's own
exceptions: translate at the plugin edge.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import inspect
import json
import os
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field

from . import errors
from .keyed_locks import KeyedLocks
from .payload import Payload

DEFAULT_CONTENT_TYPE = "binary/octet-stream"
# Standard headers stored with an object and returned on GET/HEAD.
STORED_HEADERS = ("cache-control", "content-disposition", "content-encoding", "content-language", "expires",
                  "x-amz-website-redirect-location")
# Internal bucket where the generic multipart implementation keeps parts.
# Bucket names cannot start with "." in S3, so it never meets a real bucket.
MULTIPART_BUCKET = ".multipart"
MIN_PART_SIZE = 5 * 1024 * 1024


def upload_record(bucket: str, upload_id: str) -> str:
    """The key in MULTIPART_BUCKET of an upload's record (its key, initiation, metadata)."""
    return f"{bucket}/{upload_id}/upload"


def new_upload(bucket: str, key: str, meta: ObjectMeta, checksum_algorithm: str | None) -> tuple[UploadInfo, bytes]:
    """A new multipart upload: its info, and its record's bytes (stored at upload_record)."""
    # The initiation time first (ns, 16 hex digits), so that upload IDs sort in initiation order:
    # ListMultipartUploads pages by (key, upload ID) as S3 does (gateway/api/s3/multipart.py).
    upload_id = f"{time.time_ns():016x}{os.urandom(8).hex()}"
    info = UploadInfo(bucket, key, upload_id, time.time(), meta, checksum_algorithm)
    record = json.dumps(
        {"key": key, "initiated": info.initiated, "meta": meta.to_json(), "checksum_algorithm": checksum_algorithm}
    ).encode()
    return info, record


# A Complete and an Abort of one upload (or two Completes) take turns: run together, both could
# succeed (the object stored though the Abort answered 204), or two part lists both answer 200.
# The one that comes second finds the upload gone and answers as S3 does (NoSuchUpload; a Complete
# of the same parts, 200). Per process: every request of an upload runs on the node holding it.
_UPLOAD_TURNS = KeyedLocks()
UPLOAD_TURN_WAIT = 10.0  # seconds; beyond, 503 SlowDown (SDKs retry it)


def _one_at_a_time(upload_id: str):
    return _UPLOAD_TURNS.hold(upload_id, UPLOAD_TURN_WAIT, lambda: _upload_busy(upload_id))


def _upload_busy(upload_id: str) -> errors.GatewayError:
    return errors.SlowDown(f"The upload {upload_id} is being completed or aborted by another request; retry in a "
                           "moment.")


def is_upload_id(upload_id: str) -> bool:
    """Whether ``upload_id`` can name an upload (hex digits): anything else is NoSuchUpload at once,
    without asking any storage."""
    return bool(upload_id) and all(c in "0123456789abcdef" for c in upload_id)
MAX_PARTS = 10_000


@dataclass(frozen=True)
class ObjectMeta:
    """What a client says about an object when it writes it."""

    content_type: str = DEFAULT_CONTENT_TYPE
    metadata: Mapping[str, str] = field(default_factory=dict)  # x-amz-meta-* without the prefix
    headers: Mapping[str, str] = field(default_factory=dict)  # STORED_HEADERS, lower case

    def to_json(self) -> dict:
        return {"content_type": self.content_type, "metadata": dict(self.metadata), "headers": dict(self.headers)}

    @classmethod
    def from_json(cls, data: Mapping) -> "ObjectMeta":
        return cls(data.get("content_type", DEFAULT_CONTENT_TYPE), data.get("metadata", {}), data.get("headers", {}))


@dataclass(frozen=True)
class ObjectInfo:
    """One object as a backend describes it."""

    key: str
    size: int
    etag: str  # hex, without quotes; "<hex>-N" for multipart objects
    last_modified: float  # seconds since the epoch
    meta: ObjectMeta = field(default_factory=ObjectMeta)
    checksums: Mapping[str, str] = field(default_factory=dict)  # algorithm -> base64

    @property
    def content_type(self) -> str:
        return self.meta.content_type

    @property
    def metadata(self) -> Mapping[str, str]:
        return self.meta.metadata


@dataclass(frozen=True)
class BucketInfo:
    name: str
    created: float


@dataclass(frozen=True)
class Capabilities:
    """Optional powers of a backend (shown in docs/backends.md and ``gateway plugins list``)."""

    range_reads: bool = True  # get() honours byte ranges without reading the prefix
    server_side_copy: bool = False  # copy() does not stream the bytes through the gateway
    native_multipart: bool = False  # multipart uploads use the store's own API
    atomic_put: bool = True  # a reader never sees a partial object
    shared: bool = False  # several gateways may use the same storage at once
    listing: str = "walk"  # how listing costs: walk (per directory), index, remote
    # list() returns every ObjectInfo with its stored meta (as head() would), not a default ObjectMeta:
    # ListObjectsV2 then answers metadata=true (docs/s3-compatibility.md, "Listing metadata").
    listing_metadata: bool = False


@dataclass(frozen=True)
class ByteRange:
    """A parsed Range header: bytes=first-last, bytes=first-, or bytes=-suffix."""

    first: int | None
    last: int | None = None

    def resolve(self, size: int) -> tuple[int, int]:
        """Return [start, stop) for an object of ``size`` bytes; raise InvalidRange."""
        if self.first is None:  # suffix
            length = self.last or 0
            if length <= 0 or size == 0:
                raise errors.InvalidRange(ActualObjectSize=str(size), RangeRequested=f"bytes=-{self.last}")
            return max(0, size - length), size
        if self.first >= size or (self.last is not None and self.last < self.first):
            # (An inverted range never gets here from HTTP: the parser ignores it, as S3 does.)
            raise errors.InvalidRange(ActualObjectSize=str(size), RangeRequested=f"bytes={self.first}-")
        stop = size if self.last is None else min(self.last + 1, size)
        return self.first, stop


class OpenFile:
    """A file descriptor shared by whoever holds a reference: a backend's cache and the readers
    it hands out. Closed when the last reference is released, so a front end that sends from
    it after the cache has let it go (``os.sendfile`` at the end of an event-loop iteration)
    never writes from a descriptor number that was closed and reused meanwhile.

    ``offset``: where the object's bytes start in the file. Used from the event loop thread only.
    """

    __slots__ = ("fd", "offset", "refs")

    def __init__(self, fd: int, offset: int = 0):
        self.fd = fd
        self.offset = offset
        self.refs = 1  # the creator's

    def acquire(self) -> "OpenFile":
        self.refs += 1
        return self

    def release(self) -> None:
        self.refs -= 1
        if self.refs == 0:
            os.close(self.fd)


SEND_CHUNK = 1024 * 1024  # what chunks() reads at a time from an OpenFile
SHORT_FILE = "The object file is shorter than its header says."


def pread_exact(fd: int, length: int, position: int) -> bytes:
    """``length`` bytes of an object file from ``position``. Object files are never written in
    place, so fewer bytes mean a damaged file: an InternalError, never a short answer."""
    data = os.pread(fd, length, position)
    if len(data) != length:
        raise errors.InternalError(SHORT_FILE)
    return data


async def pread_chunks(fd: int, position: int, end: int, chunk: int = SEND_CHUNK) -> AsyncIterator[bytes]:
    """The bytes of an object file from ``position`` to ``end``, ``chunk`` bytes at a time.

    The event loop gets a turn between chunks: read into a local write (a multipart upload
    assembled, a copy within a node), nothing else would wait, and a 1 GiB object held the loop
    for 2.5 s: every request to the node waited, and its own stall watch took it for a stopped
    process (peer writes refused, 503s through the whole cluster)."""
    while position < end:
        data = os.pread(fd, min(chunk, end - position), position)
        if not data:
            raise errors.InternalError(SHORT_FILE)
        position += len(data)
        yield data
        await asyncio.sleep(0)


@dataclass
class ObjectReader:
    """An open object: its info, the byte span being read, and the bytes.

    ``data`` holds the whole span when the backend already has it in memory
    (the small-object fast path). A backend that reads from a local file may
    instead hand out the open file (``file``, the span starting at
    ``file_position``), which an HTTP front end can send with ``sendfile``
    without copying the bytes through Python; ``chunks()`` reads it too.
    Otherwise iterate ``chunks()``. Call ``close()`` (or ``async with``) when done.
    """

    info: ObjectInfo
    start: int
    stop: int
    data: bytes | None = None
    _chunks: AsyncIterator[bytes] | None = None
    _close: object = None
    file: OpenFile | None = None
    file_position: int = 0  # where byte ``start`` is in ``file``

    @property
    def length(self) -> int:
        return self.stop - self.start

    async def chunks(self) -> AsyncIterator[bytes]:
        if self.data is not None:
            if self.data:
                yield self.data
            return
        if self._chunks is not None:
            async for chunk in self._chunks:
                yield chunk
        elif self.file is not None:
            async for chunk in pread_chunks(self.file.fd, self.file_position, self.file_position + self.length):
                yield chunk

    def read_file_span(self) -> bytes:
        """The whole span of a ``file`` reader, in one read (backends hand out files up to 1 MiB)."""
        return pread_exact(self.file.fd, self.length, self.file_position)

    async def read_all(self) -> bytes:
        return b"".join([c async for c in self.chunks()])

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None

    async def __aenter__(self) -> "ObjectReader":
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()


@dataclass
class ListPage:
    objects: list[ObjectInfo]
    common_prefixes: list[str]
    is_truncated: bool = False
    next_marker: str = ""  # the last key or common prefix returned, when truncated
    # Whether every object carries its stored meta; None: as the backend's capabilities.listing_metadata
    # says. Set by a cluster node, whose page merges other nodes' listings.
    metadata: bool | None = None
    # A cluster node's keys listed from a copy it dropped a moment ago for a newer one elsewhere
    # (cluster/superseded.py): not a copy it holds.
    superseded: frozenset[str] = frozenset()


@dataclass(frozen=True)
class PartInfo:
    part_number: int
    size: int
    etag: str
    last_modified: float
    checksums: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class UploadInfo:
    bucket: str
    key: str
    upload_id: str
    initiated: float
    meta: ObjectMeta = field(default_factory=ObjectMeta)
    checksum_algorithm: str | None = None


def paginate(
    objects: Iterable[ObjectInfo | str], prefix: str, delimiter: str, start_after: str, max_keys: int
) -> ListPage:
    """Build a ListPage from ``objects`` sorted by key (as UTF-8 bytes).

    Backends that can iterate their keys in order call this instead of
    writing the delimiter and pagination rules again.
    """
    page = ListPage([], [])
    if max_keys <= 0:
        return page
    for info in objects:
        # A backend may yield a common prefix it rolled up itself (a directory) as a str.
        key = info if isinstance(info, str) else info.key
        if not key.startswith(prefix) or (start_after and key.encode() <= start_after.encode()):
            continue
        entry: str | ObjectInfo = info
        if delimiter and not isinstance(info, str):
            cut = key.find(delimiter, len(prefix))
            if cut >= 0:
                common = key[: cut + len(delimiter)]
                if start_after and common.encode() <= start_after.encode():
                    continue  # returned on an earlier page
                if page.common_prefixes and page.common_prefixes[-1] == common:
                    continue
                entry = common
        if len(page.objects) + len(page.common_prefixes) >= max_keys:
            page.is_truncated = True
            break
        if isinstance(entry, str):
            page.common_prefixes.append(entry)
            page.next_marker = entry
        else:
            page.objects.append(entry)
            page.next_marker = key
    if not page.is_truncated:
        page.next_marker = ""
    return page


def require_completion_checksums(backend: "Backend") -> None:
    """NotImplemented unless ``backend.complete_multipart`` takes ``expected_checksums`` (one that
    overrides it without the parameter, as the s3 backend, cannot check a whole-object checksum)."""
    if "expected_checksums" not in inspect.signature(backend.complete_multipart).parameters:
        raise errors.NotImplementedError_(
            "This bucket's backend cannot check a whole-object checksum when it completes an upload; "
            "complete it without x-amz-checksum-* and compare the object's checksum from a HEAD with "
            "x-amz-checksum-mode: ENABLED.")


class Backend(abc.ABC):
    """Where objects are kept. One instance serves one or more buckets.

    :param name: the instance name from the configuration (``[backends.NAME]``).
    :param options: the rest of that configuration section.
    """

    capabilities = Capabilities()
    min_part_size = MIN_PART_SIZE
    # True when get() and head() run correctly outside an asyncio task until they first suspend
    # (nothing like asyncio.timeout or an aiohttp request before the first real wait): the HTTP
    # front end then starts plain reads eagerly, without a task per request (gateway/eager.py).
    eager_reads = False
    # Not for plugins: True on a cluster node's wrapper, whose get() and head() take ``forward=True``
    # and may then return a Forward instead of relaying (gateway/cluster/forward.py).
    forwards_reads = False

    def __init__(self, name: str = "", **options):
        # Options are the keyword arguments of a backend's __init__; what reaches this one matched
        # none of them: a typo in the config, refused rather than silently ignored.
        if options:
            raise TypeError(f"unknown option{'s' if len(options) > 1 else ''} {', '.join(sorted(options))} "
                            "(check the spelling against docs/backends.md)")
        self.name = name

    # Life cycle -----------------------------------------------------------

    async def start(self) -> None:
        """Connect and check the configuration; raise ValueError naming the bad setting."""

    async def close(self) -> None:
        """Release connections and files. A second call does nothing."""

    async def check_writable(self) -> None:
        """Raise if the storage cannot take writes now (used by /readyz)."""

    # Buckets ----------------------------------------------------------------

    @abc.abstractmethod
    async def create_bucket(self, bucket: str) -> None:
        """Create ``bucket``; raise BucketAlreadyOwnedByYou if it exists."""

    @abc.abstractmethod
    async def delete_bucket(self, bucket: str) -> None:
        """Delete an empty bucket; raise NoSuchBucket or BucketNotEmpty."""

    @abc.abstractmethod
    async def head_bucket(self, bucket: str) -> BucketInfo:
        """Return the bucket's info; raise NoSuchBucket."""

    @abc.abstractmethod
    async def list_buckets(self) -> list[BucketInfo]:
        """All buckets, sorted by name (internal ones starting with "." may be included)."""

    # Objects ----------------------------------------------------------------

    @abc.abstractmethod
    async def get(self, bucket: str, key: str, byte_range: ByteRange | None = None) -> ObjectReader:
        """Open an object for reading; raise NoSuchBucket, NoSuchKey or InvalidRange."""

    @abc.abstractmethod
    async def put(self, bucket: str, key: str, payload: Payload, meta: ObjectMeta) -> ObjectInfo:
        """Store the payload under ``key``, replacing any older version atomically.

        Iterate ``payload`` to the end before committing: it raises when the
        body does not match what the client declared, and then nothing may
        be stored. Raise NoSuchBucket.
        """

    @abc.abstractmethod
    async def head(self, bucket: str, key: str) -> ObjectInfo:
        """Return an object's info; raise NoSuchBucket or NoSuchKey."""

    @abc.abstractmethod
    async def delete(self, bucket: str, key: str) -> None:
        """Delete an object; deleting a missing key is not an error. Raise NoSuchBucket."""

    @abc.abstractmethod
    async def list(
        self, bucket: str, prefix: str = "", delimiter: str = "", start_after: str = "", max_keys: int = 1000
    ) -> ListPage:
        """Keys greater than ``start_after``, in UTF-8 byte order (see :func:`paginate`). Raise NoSuchBucket."""

    # Built on the above -------------------------------------------------------

    async def exists(self, bucket: str, key: str) -> bool:
        try:
            await self.head(bucket, key)
        except errors.NoSuchKey:
            return False
        return True

    async def get_if_present(self, bucket: str, key: str, byte_range: ByteRange | None = None) -> ObjectReader | None:
        """get(), or None when the object is not there, whether or not its bucket is (ask
        head_bucket to tell). A cluster node tries its own storage this way before asking its peers
        (gateway/services/cluster_nodes/), where telling the two apart would be wasted work on
        every relayed read; a backend may override it to skip that work (the local backend does)."""
        try:
            return await self.get(bucket, key, byte_range)
        except (errors.NoSuchKey, errors.NoSuchBucket):
            return None

    def open_file(self, bucket: str, key: str) -> tuple[ObjectInfo, int, int] | None:
        """The object as a file on this host: (info, descriptor, offset of its first byte), or None
        when this backend keeps no objects in local files or the object is not there.

        For local reads (docs/fuse.md, "Local reads"): a FUSE mount on the gateway's host then
        reads a large object from the descriptor, which the gateway passes it over a Unix socket,
        instead of through HTTP. The caller owns (and closes) the descriptor, which must stay
        readable at the same bytes whatever happens to the key later (a backend that replaces an
        object file by renaming a new one over it, as the local backend, gives that for free).
        Called on the event loop: it may do local file system calls, nothing that waits longer."""
        return None

    async def head_if_present(self, bucket: str, key: str) -> ObjectInfo | None:
        """head(), or None when the object is not there (as get_if_present)."""
        try:
            return await self.head(bucket, key)
        except (errors.NoSuchKey, errors.NoSuchBucket):
            return None

    async def copy(
        self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str, meta: ObjectMeta | None = None
    ) -> ObjectInfo:
        """Copy an object; ``meta`` None keeps the source's metadata. Raise NoSuchKey, NoSuchBucket."""
        await self.head_bucket(dst_bucket)
        reader = await self.get(src_bucket, src_key)
        try:
            payload = Payload(
                reader.chunks(),
                expected_size=reader.info.size,
                checksum_algorithms=tuple(reader.info.checksums),
                etag=reader.info.etag if "-" in reader.info.etag else None,
            )
            return await self.put(dst_bucket, dst_key, payload, meta or reader.info.meta)
        finally:
            reader.close()

    # Multipart uploads, kept as objects in MULTIPART_BUCKET ----------------------

    async def _multipart_store(self) -> None:
        try:
            await self.create_bucket(MULTIPART_BUCKET)
        except errors.BucketAlreadyOwnedByYou:
            pass

    @staticmethod
    def _upload_prefix(bucket: str, upload_id: str) -> str:
        return f"{bucket}/{upload_id}/"

    async def create_multipart(
        self, bucket: str, key: str, meta: ObjectMeta, checksum_algorithm: str | None = None
    ) -> UploadInfo:
        await self.head_bucket(bucket)
        await self._multipart_store()
        info, record = new_upload(bucket, key, meta, checksum_algorithm)
        await self.put(
            MULTIPART_BUCKET, upload_record(bucket, info.upload_id), Payload.from_bytes(record), ObjectMeta()
        )
        return info

    async def get_upload(self, bucket: str, upload_id: str, key: str | None = None) -> UploadInfo:
        """Return an upload; raise NoSuchUpload (also when it belongs to another key)."""
        if not is_upload_id(upload_id):
            raise errors.NoSuchUpload(UploadId=upload_id)
        try:
            reader = await self.get(MULTIPART_BUCKET, upload_record(bucket, upload_id))
        except (errors.NoSuchKey, errors.NoSuchBucket):
            raise errors.NoSuchUpload(UploadId=upload_id) from None
        async with reader:
            record = json.loads(await reader.read_all())
        if key is not None and record["key"] != key:
            raise errors.NoSuchUpload(UploadId=upload_id)
        return UploadInfo(
            bucket, record["key"], upload_id, record["initiated"],
            ObjectMeta.from_json(record["meta"]), record.get("checksum_algorithm"),
        )

    async def upload_part(
        self, bucket: str, key: str, upload_id: str, part_number: int, payload: Payload
    ) -> PartInfo:
        await self.get_upload(bucket, upload_id, key)
        part_key = self._upload_prefix(bucket, upload_id) + f"part/{part_number:05d}"
        info = await self.put(MULTIPART_BUCKET, part_key, payload, ObjectMeta())
        try:
            await self.get_upload(bucket, upload_id, key)
        except errors.NoSuchUpload:
            # Aborted (or completed) while this part was written, after the abort listed the parts it
            # removes: this part would stay behind, taking space no client can list or free.
            try:
                await self.delete(MULTIPART_BUCKET, part_key)
            except errors.NoSuchKey:
                pass
            raise
        return PartInfo(part_number, info.size, info.etag, info.last_modified, info.checksums)

    async def list_parts(self, bucket: str, key: str, upload_id: str) -> list[PartInfo]:
        await self.get_upload(bucket, upload_id, key)
        prefix = self._upload_prefix(bucket, upload_id) + "part/"
        parts, marker = [], ""
        while True:
            page = await self.list(MULTIPART_BUCKET, prefix, "", marker, 1000)
            for obj in page.objects:
                number = int(obj.key[len(prefix):])
                parts.append(PartInfo(number, obj.size, obj.etag, obj.last_modified, obj.checksums))
            if not page.is_truncated:
                return parts
            marker = page.next_marker

    async def _upload_ids(self, bucket: str) -> list[str]:
        """The IDs of ``bucket``'s upload directories (a record, parts or both); [] when no upload
        was ever made here."""
        try:
            page = await self.list(MULTIPART_BUCKET, f"{bucket}/", "/", "", MAX_PARTS)
        except errors.NoSuchBucket:
            return []
        return [common[len(bucket) + 1 : -1] for common in page.common_prefixes]

    async def list_uploads(self, bucket: str, prefix: str = "") -> list[UploadInfo]:
        await self.head_bucket(bucket)
        uploads = []
        for upload_id in await self._upload_ids(bucket):
            try:
                upload = await self.get_upload(bucket, upload_id)
            except errors.NoSuchUpload:
                continue  # completed or aborted meanwhile
            if upload.key.startswith(prefix):
                uploads.append(upload)
        return sorted(uploads, key=lambda u: (u.key.encode(), u.initiated))

    async def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        async with _one_at_a_time(upload_id):
            await self.get_upload(bucket, upload_id, key)
            await self._delete_upload(bucket, upload_id)

    async def _delete_upload(self, bucket: str, upload_id: str) -> None:
        prefix = self._upload_prefix(bucket, upload_id)
        page = await self.list(MULTIPART_BUCKET, prefix, "", "", MAX_PARTS + 10)
        # The upload record goes first, so a half-finished cleanup is already invisible.
        await self.delete(MULTIPART_BUCKET, prefix + "upload")
        for obj in page.objects:
            if obj.key != prefix + "upload":  # gone already: a second delete of it could only fail
                await self.delete(MULTIPART_BUCKET, obj.key)

    async def discard_orphaned_parts(self, bucket: str, older_than: float) -> int:
        """Remove the files of ``bucket``'s uploads whose record is gone and that were last written
        before ``older_than`` (seconds since the epoch); return how many uploads were cleaned.

        _delete_upload removes the record first, so a Complete, Abort or DeleteBucket cut short (the
        disk failed, the process was killed) leaves parts no upload points at: no client can list,
        complete or abort them, and a Complete retried answers 200 from the object alone. The upload
        reaper calls this on every sweep. ``older_than`` keeps the parts of an UploadPart that raced
        an Abort until that write has surely finished.
        """
        cleaned = 0
        for upload_id in await self._upload_ids(bucket):
            try:
                await self.get_upload(bucket, upload_id)
                continue  # a live upload: its expiry is the reaper's to judge
            except errors.NoSuchUpload:
                pass
            files = await self.list(MULTIPART_BUCKET, self._upload_prefix(bucket, upload_id), "", "", MAX_PARTS + 10)
            if not files.objects or any(o.last_modified >= older_than for o in files.objects):
                continue
            for obj in files.objects:
                try:
                    await self.delete(MULTIPART_BUCKET, obj.key)
                except errors.NoSuchKey:
                    pass
            cleaned += 1
        return cleaned

    async def discard_uploads(self, bucket: str) -> None:
        """Abort every unfinished upload of ``bucket``, for DeleteBucket: on S3 they go with the bucket.
        Left behind, a bucket made again under the name would list them (and completing one would
        put the old bucket's bytes in the new one); the reaper never finds them (it sweeps the
        buckets that exist)."""
        while True:
            try:
                page = await self.list(MULTIPART_BUCKET, f"{bucket}/", "/", "", MAX_PARTS)
            except errors.NoSuchBucket:
                return  # no upload was ever made here
            for common in page.common_prefixes:
                await self._delete_upload(bucket, common[len(bucket) + 1 : -1])
            if not page.is_truncated:
                return

    async def complete_multipart(
        self, bucket: str, key: str, upload_id: str, parts: list[tuple[int, str]],
        expected_checksums: Mapping[str, str] | None = None,
    ) -> ObjectInfo:
        """Assemble ``parts`` ([(part number, etag)], ascending) into the object.

        ``expected_checksums``: algorithm -> base64 checksum of the whole object the client sent;
        a mismatch is BadDigest and nothing is stored (the upload stays). A backend that overrides
        this method without the parameter gets no such request (the API answers NotImplemented).
        Raise InvalidPartOrder, InvalidPart, EntityTooSmall or NoSuchUpload.
        """
        async with _one_at_a_time(upload_id):
            return await self._complete(bucket, key, upload_id, parts, expected_checksums)

    async def _complete(self, bucket: str, key: str, upload_id: str, parts: list[tuple[int, str]],
                        expected_checksums: Mapping[str, str] | None) -> ObjectInfo:
        upload = await self.get_upload(bucket, upload_id, key)
        if not parts:
            raise errors.MalformedXML("You must specify at least one part.")
        numbers = [n for n, _ in parts]
        if numbers != sorted(set(numbers)):
            raise errors.InvalidPartOrder()
        stored = {p.part_number: p for p in await self.list_parts(bucket, key, upload_id)}
        chosen = []
        for number, etag in parts:
            part = stored.get(number)
            if part is None or part.etag != etag.strip('"'):
                raise errors.InvalidPart(PartNumber=str(number), ETag=etag)
            chosen.append(part)
        for part in chosen[:-1]:
            if part.size < self.min_part_size:
                raise errors.EntityTooSmall(
                    f"Part {part.part_number} is {part.size} bytes; every part but the last must be "
                    f"at least {self.min_part_size} bytes.",
                    ProposedSize=str(part.size), MinSizeAllowed=str(self.min_part_size),
                )
        digest = hashlib.md5(b"".join(bytes.fromhex(p.etag) for p in chosen)).hexdigest()
        etag = f"{digest}-{len(chosen)}"
        prefix = self._upload_prefix(bucket, upload_id) + "part/"

        async def assembled():
            for part in chosen:
                reader = await self.get(MULTIPART_BUCKET, f"{prefix}{part.part_number:05d}")
                try:
                    if reader.info.etag != part.etag:
                        # An UploadPart of this number since the listing above (it does not wait for a
                        # Complete): its bytes are not the part this Complete names, whose ETag the
                        # object's is made of. Nothing is stored (the put fails), the upload stays.
                        raise errors.InvalidPart(PartNumber=str(part.part_number), ETag=part.etag)
                    async for chunk in reader.chunks():
                        yield chunk
                finally:
                    reader.close()

        algorithms = (upload.checksum_algorithm,) if upload.checksum_algorithm else ()
        payload = Payload(
            assembled(), expected_size=sum(p.size for p in chosen), etag=etag, checksum_algorithms=algorithms,
            expected_checksums=dict(expected_checksums or {}),
        )
        info = await self.put(bucket, key, payload, upload.meta)
        await self._delete_upload(bucket, upload_id)
        return info
