"""The file a restore finds where the archive has one: the same bytes, a version written after the
backup (kept), or a damaged object file (replaced by the backup's copy).

An object file is damaged, not newer, when its header does not parse, or when its length is not the
one its header gives (cut short, or written into). Anything else that differs is a valid version of
its own and is never replaced without ``--overwrite`` (docs/operations.md, "Restore").

Two copies of one version (same key, time and ETag) with other bytes: one of them is damaged, and
either may be the backup's (a backup copies what it finds, bit rot included). ``judge_same_version``
tells which by the copies' lengths and by the data's MD5 against a single PUT's ETag; when it cannot
tell (a multipart ETag is not the data's MD5), the file here is kept.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from dataclasses import dataclass

from gateway_plugins import fslayout, fsutil

from .tree import CHUNK, MD5_ETAG, Installer, make_dirs, publish_new, write_atomically

SAME_VERSION = "the backup's version (same time and ETag) with other bytes"


class BackupCopyDamaged(Exception):
    """The backup's copy of an object is the damaged one: the file here is kept."""


@dataclass(frozen=True)
class Present:
    """An existing file at a place the archive has a file for, read through one open file."""

    sha256: str
    identity: tuple  # device, inode, size, mtime: a rename over it (a client's PUT) changes it
    header: dict | None  # an object file's header, when it parses
    problem: str | None  # why an object file is damaged, judged on the file alone


def find_present(path: str, obj: bool) -> Present | None:
    """What is at ``path``: its hash and, for an object file, whether it is whole. None if nothing."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            return None
        header = problem = None
        if obj:
            header, problem = _object_file(fd, st.st_size)
        digest = hashlib.sha256()
        position = 0
        while chunk := os.pread(fd, CHUNK, position):
            digest.update(chunk)
            position += len(chunk)
    finally:
        os.close(fd)
    return Present(digest.hexdigest(), _identity(st), header, problem)


def _identity(st: os.stat_result) -> tuple:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _object_file(fd: int, size: int) -> tuple[dict | None, str | None]:
    """(header, None) for an object file that is whole; (header or None, what is wrong) otherwise:
    its header does not parse, or its length is not the one the header gives (the file was cut
    short, or written into). Such a file is not a newer version, whatever its header says."""
    first = os.pread(fd, min(size, fslayout.FIRST_READ), 0)
    try:
        parsed = fslayout.decode_header(first)
        if parsed is None:  # a long header: read the rest, if the file is that long at all
            _, length = fslayout.PREFIX.unpack_from(first)
            if fslayout.PREFIX.size + length > size:
                return None, (f"its header is cut short (the header says it is {length:,} bytes, the file holds "
                              f"{size - fslayout.PREFIX.size:,})")
            parsed = fslayout.decode_header(os.pread(fd, fslayout.PREFIX.size + length, 0))
    except (fslayout.CorruptObject, ValueError) as exc:
        return None, f"its header does not parse ({exc})"
    header, offset = parsed if parsed is not None else (None, 0)
    if not _valid_header(header):
        return None, "its header does not parse (a field is missing or of the wrong type)"
    if offset + header["size"] != size:
        what = "cut short" if offset + header["size"] > size else "longer than its header says"
        return header, f"{what}: the header says {header['size']:,} bytes of data, the file holds {size - offset:,}"
    return header, None


def _valid_header(header) -> bool:
    """The fields the gateway reads from an object's header, of the right types."""
    return (isinstance(header, dict) and isinstance(header.get("key"), str) and isinstance(header.get("etag"), str)
            and isinstance(header.get("time"), (int, float)) and isinstance(header.get("size"), int)
            and not isinstance(header.get("size"), bool) and header["size"] >= 0
            and isinstance(header.get("meta", {}), dict))


def damage(present: Present, backup_header: dict | None) -> str | None:
    """Why the file present is damaged rather than a version written after the backup; None when it
    is a valid version of its own (kept). SAME_VERSION when it is the backup's very version (same
    key, time and ETag) with other bytes: which copy is damaged is judge_same_version's to tell."""
    if present.problem is not None:
        return present.problem
    if present.header is not None and backup_header is not None and all(
            present.header.get(k) == backup_header.get(k) for k in ("key", "time", "etag")):
        return SAME_VERSION
    return None


def judge_same_version(path: str, backup_first: bytes, backup_size: int, overwrite: bool) -> str | None:
    """Of two copies of one version with other bytes (damage() said SAME_VERSION), why the file at
    ``path`` is the damaged one (the backup's copy then replaces it; replace_damaged checks that
    copy's data too), or BackupCopyDamaged saying why it is kept. ``backup_first``: the first bytes of
    the backup's copy, ``backup_size`` its length. Never a guess against a file that may be whole:
    without a way to tell, it is kept unless ``overwrite`` asked for the backup's copies."""
    parsed = fslayout.decode_header(backup_first)
    if parsed is not None and parsed[1] + parsed[0].get("size", -1) != backup_size:
        raise BackupCopyDamaged("the backup's copy is not the length its header gives (damaged when the backup "
                                "was taken)")
    fits = data_fits_etag(path)
    if fits is False:
        return "its data does not match its ETag (damaged on this disk)"
    if fits is True:
        raise BackupCopyDamaged("the backup's copy differs from this file, whose data matches its ETag")
    if overwrite:
        return "the backup's version (same time and multipart ETag) with other bytes (--overwrite)"
    raise BackupCopyDamaged("the backup's copy of this version differs from it and a multipart ETag cannot tell "
                            "which is damaged; --overwrite takes the backup's")


def data_fits_etag(path: str) -> bool | None:
    """Whether an object file's data hashes to its ETag; None when that cannot be told (a multipart
    upload's ETag is not the MD5 of the data). A file without a readable header does not fit."""
    try:
        with open(path, "rb") as f:
            header, offset, _ = fslayout.read_header(f.fileno())
            etag = header.get("etag") if isinstance(header, dict) else None
            if not isinstance(etag, str) or not MD5_ETAG.fullmatch(etag):
                return None
            f.seek(offset)
            md5 = hashlib.md5()
            while chunk := f.read(CHUNK):
                md5.update(chunk)
    except (fslayout.CorruptObject, ValueError):
        return False
    return md5.hexdigest() == etag


def replace_damaged(installer: Installer, relpath: str, chunks, member: tarfile.TarInfo, expected: str,
                     present: Present) -> bool:
    """Put the backup's copy over a damaged file; False (and nothing changed) when the file was
    replaced since it was judged: a client's PUT made a new version, which stays. BackupCopyDamaged
    (nothing changed) when the backup's copy does not match its ETag either.

    The copy is written and checked aside first, then the file is looked at again and, if it is
    the damaged one still, renamed over at once: a window of one stat, not of the whole copy."""
    final = installer.path(relpath)
    staged = installer.temp_path("-staged")  # a dead restore's leftovers are removed as its temps
    write_atomically(staged, installer.temp_path(), chunks, mtime=member.mtime,
                     expect_sha256=expected, fsync=installer.fsync, owner=installer.owner)
    try:
        if data_fits_etag(staged) is False:
            raise BackupCopyDamaged("the backup's copy does not match its ETag either: both are damaged")
        try:
            now = _identity(os.stat(final))
        except FileNotFoundError:
            now = None  # deleted meanwhile: the backup's copy goes back, as for any missing file
        if now is not None and now != present.identity:
            return False
        if now is None:  # a DELETE may have pruned the directory too
            make_dirs(os.path.dirname(final), installer.owner)
        try:
            (os.replace if now is not None else publish_new)(staged, final)
        except FileExistsError:
            return False
        return True
    finally:
        fsutil.unlink_quietly(staged)
