"""Blocking file operations on an SMB share, in the cv-storage layout (fslayout.py).

Every function here runs in an SmbPool worker thread. Those that take ``kw``
first get the smbclient keyword arguments of one pooled connection. Each
does a whole unit of work (open, read the header, close) so one thread hop
and one timeout cover it.

Paths are UNC strings (``\\\\server\\share\\path\\bucket\\...``); keys are turned
into relative paths by fslayout.key_to_relpath, so the files are byte for
byte those the local backend writes, and a share mounted as cv-storage and
the same share reached over SMB are interchangeable.
"""

from __future__ import annotations

import errno
import json
import logging
import random
import time

import smbclient
import smbclient.path
import smbclient.shutil
from smbprotocol.exceptions import SMBOSError

from gateway import errors
from gateway.backend import BucketInfo, ByteRange, ObjectInfo, ObjectMeta

from . import fslayout
from .fslayout import BUCKET_FILE, NAME_FILE
from .fsutil import SFM_MAP, sfm_decode, sfm_encode
from .smb_client import ACCESS_DENIED, DELETE_PENDING, SHARING_VIOLATION, progress

log = logging.getLogger(__name__)
HEADER_READ = 4096  # enough for a typical header; HEAD and listings read only this much
READ_CHUNK = 1024 * 1024
# Objects up to this size are read whole and their file closed at once: an open file
# on SMB blocks a rename over it (Windows semantics), so handles must be short-lived.
WHOLE_READ_LIMIT = 1024 * 1024
SHARE_ALL = "rwd"  # let others read, write, rename and delete while we have a file open


# Characters an SMB name cannot carry travel as the private-use characters of fsutil.SFM_MAP.
# Samba's vfs_catia with these mappings (``catia:mappings``) stores them as the real characters,
# so the files on the server's disk are exactly the local backend's.
CATIA_MAPPINGS = ",".join(f"0x{ord(k):02x}:0x{ord(v):04x}" for k, v in SFM_MAP.items())


def join(*parts: str) -> str:
    return "\\".join(p.strip("\\") if i else p.rstrip("\\") for i, p in enumerate(parts) if p)


def is_missing(exc: BaseException) -> bool:
    """Not there, or deleted and only waiting for a reader to close it (gone for every new request)."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOENT, errno.ENOTDIR) or is_delete_pending(exc)


def is_delete_pending(exc: BaseException) -> bool:
    return isinstance(exc, SMBOSError) and exc.ntstatus == DELETE_PENDING


def is_in_use(exc: BaseException) -> bool:
    return isinstance(exc, SMBOSError) and exc.ntstatus in (ACCESS_DENIED, SHARING_VIOLATION)


def exists_dir(kw: dict, path: str) -> bool:
    try:
        return smbclient.path.isdir(path, **kw)
    except OSError as exc:
        if is_missing(exc):
            return False
        raise


def object_info(header: dict) -> ObjectInfo:
    return ObjectInfo(header["key"], header["size"], header["etag"], header["time"],
                      ObjectMeta.from_json(header["meta"]), header.get("checksums", {}))


def _read_exact(handle, length: int) -> bytes:
    parts, left = [], length
    while left > 0:
        chunk = handle.read(left)
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _read_header(handle, first_read: int) -> tuple[dict, int, bytes]:
    first = _read_exact(handle, first_read)
    parsed = fslayout.decode_header(first)
    if parsed is None:
        _, length = fslayout.PREFIX.unpack_from(first)
        first += _read_exact(handle, fslayout.PREFIX.size + length - len(first))
        parsed = fslayout.decode_header(first)
        if parsed is None:
            raise fslayout.CorruptObject("object header is truncated")
    header, offset = parsed
    return header, offset, first


def open_object(kw: dict, path: str, byte_range: ByteRange | None):
    """Open an object: ("data", info, start, stop, bytes) or ("open", info, start, stop, handle, offset).

    The second form leaves the file open for streaming a large span.
    """
    handle = smbclient.open_file(path, mode="rb", buffering=0, share_access=SHARE_ALL, **kw)
    keep_open = False
    try:
        header, offset, first = _read_header(handle, fslayout.FIRST_READ)
        info = object_info(header)
        start, stop = byte_range.resolve(info.size) if byte_range else (0, info.size)
        if offset + stop <= len(first):
            return "data", info, start, stop, first[offset + start: offset + stop]
        if stop - start <= WHOLE_READ_LIMIT:
            handle.seek(offset + start)
            data = _read_exact(handle, stop - start)
            if len(data) != stop - start:
                raise errors.InternalError("object file is shorter than its header says")
            return "data", info, start, stop, data
        keep_open = True
        return "open", info, start, stop, handle, offset
    finally:
        if not keep_open:
            handle.close()


def read_at(handle, position: int, length: int) -> bytes:
    handle.seek(position)
    return _read_exact(handle, length)


def read_info(kw: dict, path: str) -> ObjectInfo:
    with smbclient.open_file(path, mode="rb", buffering=0, share_access=SHARE_ALL, **kw) as handle:
        return object_info(_read_header(handle, HEADER_READ)[0])


# Writing ------------------------------------------------------------------


def open_temp(kw: dict, tmp: str, tmp_dir: str):
    try:
        return smbclient.open_file(tmp, mode="wb", buffering=0, share_access=SHARE_ALL, **kw)
    except OSError as exc:
        if not is_missing(exc):
            raise
    smbclient.makedirs(tmp_dir, exist_ok=True, **kw)  # someone removed .gateway/tmp: make it again
    return smbclient.open_file(tmp, mode="wb", buffering=0, share_access=SHARE_ALL, **kw)


def write_at(handle, position: int, data: bytes) -> None:
    handle.seek(position)
    view = memoryview(data)
    while view:
        written = handle.write(view)
        if not written:
            raise OSError(errno.EIO, "the SMB server accepted no bytes")
        view = view[written:]


def write_small(kw: dict, tmp: str, tmp_dir: str, blob: bytes, flush: bool,
                final: str, bucket_dir: str, key: str, rename_deadline: float) -> None:
    """Write a whole small object to a temp file and publish it: one thread hop for a small PUT."""
    if not exists_dir(kw, bucket_dir):
        raise errors.NoSuchBucket(BucketName=bucket_dir.rsplit("\\", 1)[-1])
    handle = open_temp(kw, tmp, tmp_dir)
    finish_large(kw, handle, blob, flush, tmp, final, bucket_dir, key, rename_deadline)


def finish_large(kw: dict, handle, header: bytes, flush: bool, tmp: str,
                 final: str, bucket_dir: str, key: str, rename_deadline: float) -> None:
    """Write the header at the start of an open temp file, close it and publish it."""
    try:
        write_at(handle, 0, header)
        if flush:
            handle.flush()
    finally:
        handle.close()
    publish(kw, tmp, final, bucket_dir, key, rename_deadline)


def publish(kw: dict, tmp: str, final: str, bucket_dir: str, key: str, deadline: float) -> None:
    """Rename the temp file over the object, making missing directories; retry while a reader holds it."""
    pause = 0.005
    made_parents = 0
    while True:
        try:
            smbclient.replace(tmp, final, **kw)
            return
        except OSError as exc:
            if is_missing(exc) and not is_delete_pending(exc) and made_parents < 5:
                if not exists_dir(kw, bucket_dir):
                    raise errors.NoSuchBucket(BucketName=bucket_dir.rsplit("\\", 1)[-1]) from None
                make_parents(kw, bucket_dir, key)
                made_parents += 1
                continue
            if not (is_in_use(exc) or is_delete_pending(exc)) or time.monotonic() + pause > deadline:
                raise
        # An open file (or one deleted while open) cannot be replaced over SMB: wait for the reader to close it.
        time.sleep(pause * (1 + random.random()))
        pause = min(pause * 2, 0.2)


def make_parents(kw: dict, bucket_dir: str, key: str) -> None:
    path = bucket_dir
    for segment in key.split("/")[:-1]:
        name = fslayout.escape_segment(segment)
        path = join(path, sfm_encode(name))
        smbclient.makedirs(path, exist_ok=True, **kw)
        if "%h" in name:
            # A hashed (long) directory name remembers its full segment for listings.
            name_file = join(path, NAME_FILE)
            try:
                with smbclient.open_file(name_file, mode="xb", **kw) as f:
                    f.write(segment.encode())
            except OSError as exc:
                if exc.errno != errno.EEXIST:
                    raise


def remove_quietly(kw: dict, path: str) -> bool:
    try:
        smbclient.remove(path, **kw)
    except OSError as exc:
        return is_missing(exc)
    return True


# Deleting -----------------------------------------------------------------


def delete_object(kw: dict, path: str, bucket_dir: str, bucket: str) -> None:
    try:
        smbclient.remove(path, **kw)
    except OSError as exc:
        if not is_missing(exc):
            raise
        if not exists_dir(kw, bucket_dir):
            raise errors.NoSuchBucket(BucketName=bucket) from None
        return
    # Remove directories the delete left empty, up to the bucket.
    parent = path.rsplit("\\", 1)[0]
    while parent != bucket_dir and parent.startswith(bucket_dir):
        try:
            names = smbclient.listdir(parent, **kw)
            if names == [NAME_FILE]:
                smbclient.remove(join(parent, NAME_FILE), **kw)
            smbclient.rmdir(parent, **kw)
        except OSError:
            break  # not empty (or a writer just used it): keep it
        parent = parent.rsplit("\\", 1)[0]


# Buckets ------------------------------------------------------------------


def create_bucket(kw: dict, bucket_dir: str, bucket: str) -> None:
    try:
        smbclient.mkdir(bucket_dir, **kw)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise errors.BucketAlreadyOwnedByYou(BucketName=bucket) from None
        raise
    with smbclient.open_file(join(bucket_dir, BUCKET_FILE), mode="w", encoding="utf-8", **kw) as f:
        json.dump({"name": bucket, "created": time.time()}, f)


def head_bucket(kw: dict, bucket_dir: str, bucket: str) -> BucketInfo:
    try:
        with smbclient.open_file(join(bucket_dir, BUCKET_FILE), mode="r", encoding="utf-8",
                                 share_access=SHARE_ALL, **kw) as f:
            return BucketInfo(bucket, json.load(f)["created"])
    except (OSError, ValueError, KeyError) as exc:
        if isinstance(exc, OSError) and not is_missing(exc):
            raise
    # A bucket directory made by hand (or copied without the marker) is still a bucket.
    try:
        return BucketInfo(bucket, smbclient.stat(bucket_dir, **kw).st_mtime)
    except OSError as exc:
        if is_missing(exc):
            raise errors.NoSuchBucket(BucketName=bucket) from None
        raise


def list_buckets(kw: dict, root: str) -> list[BucketInfo]:
    names = sorted(e.name for e in smbclient.scandir(root, **kw) if e.is_dir() and not e.name.startswith("."))
    found = []
    for name in names:
        try:
            found.append(head_bucket(kw, join(root, name), name))
        except errors.NoSuchBucket:
            continue  # deleted while we listed
        progress()
    return found


def delete_bucket(kw: dict, bucket_dir: str, bucket: str) -> None:
    if not exists_dir(kw, bucket_dir):
        raise errors.NoSuchBucket(BucketName=bucket)
    if has_objects(kw, bucket_dir):
        raise errors.BucketNotEmpty(BucketName=bucket)
    smbclient.shutil.rmtree(bucket_dir, ignore_errors=True, **kw)


# Listing ------------------------------------------------------------------


def entries(kw: dict, directory: str) -> list[fslayout.Entry]:
    """A directory's objects and subdirectories, as (sort key, segment, path, is_dir), in key order."""
    try:
        scanned = list(smbclient.scandir(directory, **kw))
    except OSError as exc:
        if is_missing(exc):
            return []
        raise
    progress()
    return fslayout.sorted_entries(
        ((sfm_decode(entry.name), join(directory, entry.name), entry.is_dir()) for entry in scanned),
        lambda path: _header_key_segment(kw, path),
        lambda path: _read_name_file(kw, path),
    )


# A long name's full text: "not there" (removed while we list) leaves the entry out; any other
# error fails the listing, which must never quietly lack objects (see local.py's listing helpers).

def _header_key_segment(kw: dict, path: str) -> str | None:
    info = _listed_info(kw, path)
    return None if info is None else info.key.rsplit("/", 1)[-1]


def _read_name_file(kw: dict, directory: str) -> str | None:
    try:
        with smbclient.open_file(join(directory, NAME_FILE), mode="r", encoding="utf-8", **kw) as f:
            return f.read()
    except OSError as exc:
        if not is_missing(exc):
            raise
        return None
    except UnicodeDecodeError:
        return None


def walk(kw: dict, directory: str, key_prefix: str, prefix: str, start_after: str, dirs_as_prefixes: bool):
    """Objects (ObjectInfo) and rolled-up directories (str) in key order: fslayout.walk over the share."""
    return fslayout.walk(lambda path: entries(kw, path), lambda path: _listed_info(kw, path), directory,
                         key_prefix, prefix, start_after, dirs_as_prefixes)


def _listed_info(kw: dict, path: str) -> ObjectInfo | None:
    try:
        info = read_info(kw, path)
        progress()  # a listing reads one header per object: each read is one call's worth of timeout
        return info
    except OSError as exc:
        if not is_missing(exc):
            raise
        return None  # deleted while we listed
    except (fslayout.CorruptObject, ValueError, KeyError):
        log.warning("skipping %s: not a valid object file", path)
        return None


def has_objects(kw: dict, directory: str) -> bool:
    return fslayout.has_objects(lambda path: entries(kw, path), directory)


# Start-up -------------------------------------------------------------------


def clean_temp_files(kw: dict, tmp_dir: str, is_stale) -> int:
    """Remove temp files of this host that ``is_stale(name)`` says nobody is writing; return how many."""
    removed = 0
    for entry in smbclient.scandir(tmp_dir, **kw):
        if is_stale(entry.name) and remove_quietly(kw, join(tmp_dir, entry.name)):
            removed += 1
        progress()
    return removed


def case_sensitive(kw: dict, tmp_dir: str, probe: str) -> bool:
    """True when the share tells ``Name`` and ``name`` apart (S3 keys are case-sensitive)."""
    upper = join(tmp_dir, probe.upper())
    with smbclient.open_file(upper, mode="wb", **kw) as f:
        f.write(b"probe")
    try:
        smbclient.stat(join(tmp_dir, probe.lower()), **kw)
        return False
    except OSError as exc:
        if is_missing(exc):
            return True
        raise
    finally:
        remove_quietly(kw, upper)
