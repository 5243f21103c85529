"""Attributes from object metadata, and small path helpers shared by the filesystem modules.

Metadata names follow rclone: ``mode`` (octal st_mode, type bits included), ``uid``, ``gid``, ``mtime``
(seconds since the epoch, with a fraction).
"""

from __future__ import annotations

import math
import mimetypes
import os
import re
import stat

from .cache import FILE, LINK, Attr

# Symlinks are stored as objects holding their target, so no symlink is larger than PATH_MAX.
SYMLINK_MAX = 4096


def err(code: int, what: str) -> OSError:
    return OSError(code, f"{os.strerror(code)}: {what}")


MAX_KEY_BYTES = 1024  # S3's limit on the UTF-8 length of a key


def is_utf8(path: str) -> bool:
    """False for a name with bytes that are not UTF-8 (the binding hands them over surrogate-escaped)."""
    try:
        path.encode()
    except UnicodeEncodeError:
        return False
    return True


def parent_of(path: str) -> tuple[str, str]:
    parent, _, name = path.rpartition("/")
    return parent or "/", name


def maybe_symlink(attr: Attr) -> bool:
    """A small file known only from a listing may be a symlink: listings carry no metadata to tell."""
    return attr.from_listing and attr.kind == FILE and attr.size <= SYMLINK_MAX


# Any S3 client can write these metadata, so every value is checked before it reaches a stat:
# out of range, it would make the lookup, and any listing of its directory, fail.
MODE_MAX = 0o177777  # type bits and permissions
ID_MAX = 2 ** 32 - 2  # uid_t; 2**32 - 1 is (uid_t)-1, "no change" to chown
MTIME_LIMIT = 9.2e9  # seconds either side of 1970 that a nanosecond count in 64 bits can hold


def apply_meta(attr: Attr, meta: dict[str, str]) -> None:
    """Fill mode, uid, gid, mtime (and the kind, for symlinks) from stored metadata; ignore bad values."""
    mode = meta.get("mode")
    if mode:
        try:
            value = int(mode, 8)
        except ValueError:
            value = None
        if value is not None and 0 <= value <= MODE_MAX:
            attr.mode = value & 0o7777
            if stat.S_ISLNK(value):
                attr.kind = LINK
    for name in ("uid", "gid"):
        text = meta.get(name, "")
        if text.isascii() and text.isdigit() and len(text) <= 10 and int(text) <= ID_MAX:
            setattr(attr, name, int(text))
    mtime = meta.get("mtime")
    if mtime:
        try:
            value = float(mtime)
        except ValueError:
            value = None
        if value is not None and math.isfinite(value) and abs(value) < MTIME_LIMIT:
            attr.mtime = value
            attr.mtime_ns = parse_time_ns(mtime)


_DECIMAL = re.compile(r"([+-]?)(\d+)(?:\.(\d*))?")


def parse_time_ns(text: str) -> int | None:
    """'1577836800.123456789' -> 1577836800123456789, exactly (digits past the ninth are dropped);
    None for anything but plain decimal seconds (then the float is all there is)."""
    match = _DECIMAL.fullmatch(text.strip())
    if match is None:
        return None
    sign, whole, fraction = match.groups()
    ns = int(whole) * 10 ** 9 + int((fraction or "")[:9].ljust(9, "0"))
    return -ns if sign == "-" else ns


def format_time(seconds: float) -> str:
    return f"{seconds:.9f}"


def format_time_ns(ns: int) -> str:
    """Nanoseconds since 1970 as the seconds stored in ``mtime``, exactly (no float in between)."""
    whole, fraction = divmod(abs(ns), 10 ** 9)
    return f"{'-' if ns < 0 else ''}{whole}.{fraction:09d}"


def content_type(key: str, kind: str) -> str:
    if kind == LINK:
        return "application/x-symlink"
    return mimetypes.guess_type(key)[0] or "binary/octet-stream"
