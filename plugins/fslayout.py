"""How keys map to paths under cv-storage, and the object file format.

Kept apart from the local backend so the shared-filesystem backend, backup
and migration tools read and write exactly the same layout.
See docs/storage-layout.md.

Paths: ``<root>/<bucket>/<seg>/<seg>/<last-seg>%obj``. Every ``/`` in a key
is a directory, so ``a`` (file ``a%obj``) and ``a/b`` (directory ``a``) live
side by side. Segments are escaped so that no key can leave the root:

- ``%`` becomes ``%25`` and NUL ``%00``; the names ``.`` and ``..`` become
  ``%2E`` and ``%2E%2E``; the empty segment (``a//b``, a trailing ``/``) is
  ``%_``. Escaping only ever produces ``%`` plus two hex digits or ``%_``, so
  the markers ``%obj``, ``%h``, ``%tmp`` and ``%bucket.json`` can never be the
  name of a user's segment.
- A segment longer than LONG_NAME bytes is cut and given a hash
  (``<start>%h<sha256>``); its full text lives in the object's header (files)
  or in a ``%name`` file inside the directory.

Listing: sorted_entries() says what each name in a directory stands for and
walk() goes through a bucket in key order; the local backends (os.scandir)
and the smb backend (smbclient) both use them, with their own file access.

Object file: ``CVO1`` + 4-byte big-endian header length + JSON header (key,
size, etag, time, meta, checksums; padded with spaces) + the bytes. Data and
metadata are one file, so one rename publishes both at once, even when two
servers write the same key on shared storage.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.backend import ObjectInfo

MAGIC = b"CVO1"
PREFIX = struct.Struct(">4sI")
OBJ_SUFFIX = "%obj"
NAME_FILE = "%name"
BUCKET_FILE = "%bucket.json"
LONG_NAME = 200  # bytes; most filesystems allow 255 per name
# Reading this much at open covers the header and a whole 15-50 KB image.
FIRST_READ = 64 * 1024


class CorruptObject(Exception):
    """A file under cv-storage that does not have the object format."""


def escape_segment(segment: str) -> str:
    if segment == "":
        return "%_"
    if segment == ".":
        return "%2E"
    if segment == "..":
        return "%2E%2E"
    if "%" in segment:
        segment = segment.replace("%", "%25")
    if "\x00" in segment:
        segment = segment.replace("\x00", "%00")
    if len(segment) > LONG_NAME // 4 and len(segment.encode()) > LONG_NAME:
        digest = hashlib.sha256(segment.encode()).hexdigest()[:32]
        head = segment.encode()[:LONG_NAME - 40].decode("utf-8", "ignore")
        # Never cut inside an escape: drop a trailing partial "%2" or "%".
        cut = head.rfind("%", max(0, len(head) - 2))
        if cut >= 0:
            head = head[:cut]
        return f"{head}%h{digest}"
    return segment


def unescape_segment(name: str) -> str | None:
    """The segment a name stands for, or None when the full name lives elsewhere (hashed)."""
    if "%" not in name:
        return name
    if name == "%_":
        return ""
    if "%h" in name:
        return None
    return name.replace("%2E", ".").replace("%00", "\x00").replace("%25", "%")


def key_to_relpath(key: str) -> str:
    """The object's file path relative to its bucket directory."""
    parts = key.split("/")
    if len(parts) == 1:
        return escape_segment(key) + OBJ_SUFFIX
    return "/".join([escape_segment(p) for p in parts[:-1]] + [escape_segment(parts[-1]) + OBJ_SUFFIX])


def encode_header(key: str, size: int, etag: str, mtime: float, meta: dict, checksums: dict, pad_to: int = 0) -> bytes:
    header = json.dumps(
        {"key": key, "size": size, "etag": etag, "time": mtime, "meta": meta, "checksums": checksums},
        separators=(",", ":"), ensure_ascii=False,
    ).encode()
    if pad_to:
        if len(header) > pad_to:
            raise ValueError("header does not fit the reserved space")
        header = header.ljust(pad_to)
    return PREFIX.pack(MAGIC, len(header)) + header


def decode_header(first: bytes) -> tuple[dict, int] | None:
    """Parse the header from the file's first bytes: (header, data offset), or None if more bytes are needed."""
    if len(first) < PREFIX.size:
        raise CorruptObject("file is shorter than the object header")
    magic, length = PREFIX.unpack_from(first)
    if magic != MAGIC:
        raise CorruptObject("file does not start with the CVO1 object header")
    end = PREFIX.size + length
    if len(first) < end:
        return None
    return json.loads(first[PREFIX.size:end]), end


def read_header(fd: int) -> tuple[dict, int, bytes]:
    """Read the header of an open object file: (header, data offset, first bytes read)."""
    first = os.read(fd, FIRST_READ)
    parsed = decode_header(first)
    if parsed is None:
        _, length = PREFIX.unpack_from(first)
        first = first + os.pread(fd, PREFIX.size + length - len(first), len(first))
        parsed = decode_header(first)
        if parsed is None:
            raise CorruptObject("object header is truncated")
    header, offset = parsed
    return header, offset, first


# Listing --------------------------------------------------------------------

# One name in a listed directory: (sort key, key segment, path, is_dir). The sort key is the
# segment's UTF-8 bytes, with "/" after a directory's, so entries sort in S3 key order.
Entry = tuple[bytes, str, str, bool]


def sorted_entries(scanned: Iterable[tuple[str, str, bool]], file_segment: Callable[[str], str | None],
                   dir_segment: Callable[[str], str | None]) -> list[Entry]:
    """A directory's objects and subdirectories, in key order.

    ``scanned`` holds (layout name, path, is_dir) for each name in the
    directory. A hashed (long) name's full segment comes from
    ``file_segment(path)`` (the object's header) or ``dir_segment(path)``
    (the directory's %name file); None leaves that entry out. The layout's
    own files (%name, %bucket.json) are neither objects nor directories.
    """
    found = []
    for name, path, is_dir in scanned:
        if name.endswith(OBJ_SUFFIX) and not is_dir:
            segment = unescape_segment(name[: -len(OBJ_SUFFIX)])
            if segment is None:
                segment = file_segment(path)
                if segment is None:
                    continue
            found.append((segment.encode(), segment, path, False))
        elif is_dir:
            segment = unescape_segment(name)
            if segment is None:
                segment = dir_segment(path)
                if segment is None:
                    continue
            found.append(((segment + "/").encode(), segment, path, True))
    found.sort()
    return found


def walk(entries: Callable[[str], list[Entry]], read_info: Callable[[str], ObjectInfo | None], directory: str,
         key_prefix: str, prefix: str, start_after: str, dirs_as_prefixes: bool) -> Iterator[ObjectInfo | str]:
    """Objects (ObjectInfo) under ``directory`` and, with ``dirs_as_prefixes``, rolled-up directories
    ("a/b/" strings), in key order, skipping what cannot match ``prefix`` or comes up to ``start_after``.

    ``entries(directory)`` lists one directory (sorted_entries); ``read_info(path)`` reads an
    object's header, or gives None to leave it out (deleted meanwhile, damaged).
    """
    start_bytes = start_after.encode()
    prefix_bytes = prefix.encode()
    # A stack of open directory listings, not recursion: a key of 1,000 "/" is 1,000 nested
    # directories (each empty segment one), deeper than Python's recursion limit.
    stack = [(iter(entries(directory)), key_prefix)]
    while stack:
        listing, key_prefix = stack[-1]
        for _, segment, path, is_dir in listing:
            full = (key_prefix + segment + ("/" if is_dir else "")).encode()
            # Skip what cannot match the prefix: neither side is a prefix of the other.
            if not (full.startswith(prefix_bytes) or (is_dir and prefix_bytes.startswith(full))):
                continue
            if is_dir:
                if full < start_bytes and not start_bytes.startswith(full):
                    continue  # the whole subtree sorts before start_after
                if dirs_as_prefixes and full.startswith(prefix_bytes) and len(full) > len(prefix_bytes) \
                        and full.rfind(b"/", len(prefix_bytes), len(full) - 1) < 0:
                    if has_objects(entries, path):
                        yield full.decode()
                    continue
                stack.append((iter(entries(path)), full.decode()))
                break  # into the subdirectory; this listing goes on where it stopped afterwards
            elif full > start_bytes:
                info = read_info(path)
                if info is not None:
                    yield info
        else:
            stack.pop()


def has_objects(entries: Callable[[str], list[Entry]], directory: str) -> bool:
    """Whether any object lies below ``directory`` (empty directories left by a race do not count)."""
    pending = [directory]  # not recursion, as walk()
    while pending:
        for _, _, path, is_dir in entries(pending.pop()):
            if not is_dir:
                return True
            pending.append(path)
    return False
