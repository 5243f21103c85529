"""Attributes from object metadata, and small path helpers shared by the filesystem modules.

Metadata names follow rclone: ``mode`` (octal st_mode, type bits included), ``uid``, ``gid``, ``mtime``
(seconds since the epoch, with a fraction).
"""

from __future__ import annotations

import mimetypes
import os
import stat

from .cache import FILE, LINK, Attr

# Symlinks are stored as objects holding their target, so no symlink is larger than PATH_MAX.
SYMLINK_MAX = 4096


def err(code: int, what: str) -> OSError:
    return OSError(code, f"{os.strerror(code)}: {what}")


def parent_of(path: str) -> tuple[str, str]:
    parent, _, name = path.rpartition("/")
    return parent or "/", name


def maybe_symlink(attr: Attr) -> bool:
    """A small file known only from a listing may be a symlink: listings carry no metadata to tell."""
    return attr.from_listing and attr.kind == FILE and attr.size <= SYMLINK_MAX


def apply_meta(attr: Attr, meta: dict[str, str]) -> None:
    """Fill mode, uid, gid, mtime (and the kind, for symlinks) from stored metadata; ignore bad values."""
    mode = meta.get("mode")
    if mode:
        try:
            value = int(mode, 8)
        except ValueError:
            value = None
        if value is not None:
            attr.mode = value & 0o7777
            if stat.S_ISLNK(value):
                attr.kind = LINK
    for name in ("uid", "gid"):
        text = meta.get(name, "")
        if text.isdigit():
            setattr(attr, name, int(text))
    mtime = meta.get("mtime")
    if mtime:
        try:
            attr.mtime = float(mtime)
        except ValueError:
            pass


def format_time(seconds: float) -> str:
    return f"{seconds:.9f}"


def content_type(key: str, kind: str) -> str:
    if kind == LINK:
        return "application/x-symlink"
    return mimetypes.guess_type(key)[0] or "binary/octet-stream"
