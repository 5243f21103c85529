"""Reading and checking a backup archive, without writing anything (docs/operations.md, "Restore").

``check_archive`` reads the archive from start to end, hashes every file against the SHA-256 in its
header, and compares the counts with the summary written last: a damaged or cut-short archive is
refused here, before a restore touches a single file. ``peek_manifest`` reads the manifest (the
first member) alone, so that a destination that is wrong whatever the archive holds is refused
before the whole archive is read, and ``check_rereadable`` refuses a pipe, which a restore could
read only once. A read of the archive that fails raises ArchiveUnreadable, which names the
archive, not the file being written at that moment.

Separate from restore.py, which writes (the destination checks and the restore itself), because
``gateway restore --check`` and the early checks read an archive without writing anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from gateway.errors import FAILED_ERRNOS

from .backup import FILES, FORMAT, MANIFEST, PATH_HEADER, SHA_HEADER, STORAGE, SUMMARY
from .progress import Progress, human_bytes
from .stores import OpsError
from .tree import CHUNK, check_relpath, is_object, read_chunks

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
CONFIG_LIMIT = 1024 * 1024  # node files held in memory while the archive is checked are this small
PRE_SETTINGS_FILES = ("config", "tls_cert", "tls_key", "tls_ca")  # the settings refuse to load without them
NODE_FILES = {*PRE_SETTINGS_FILES, "registry"}


@dataclass
class ArchiveInfo:
    manifest: dict
    summary: dict
    objects: int = 0
    files: int = 0
    bytes: int = 0
    # Small files of a full backup that the settings need before they can be read: what ->
    # (original path, bytes) for the config file and the TLS files it names.
    node_files: dict[str, tuple[str, bytes]] = field(default_factory=dict)

    @property
    def config(self) -> tuple[str, bytes] | None:
        return self.node_files.get("config")

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    def damage_warnings(self, shown: int = 20) -> list[str]:
        """The object files the backup found damaged when it was taken (summary.json): they are in
        the archive as they were, and a restore puts them back so."""
        raw = self.summary.get("damaged")
        listed = [d for d in raw if isinstance(d, str)] if isinstance(raw, list) else []
        count = self.summary.get("damaged_count", len(listed))
        if not isinstance(count, int) or count <= 0:
            return []
        what = "1 object file was" if count == 1 else f"{count:,} object files were"
        lines = [f"{what} damaged when this backup was taken; in it as they were, they are restored so (the "
                 "gateway cannot serve them correctly: put them back from an older backup, or delete the objects):"]
        lines += [f"  {d}" for d in listed[:shown]]
        if count > min(len(listed), shown):
            lines.append(f"  ... and {count - min(len(listed), shown):,} more")
        return lines

    def describe(self) -> str:
        m = self.manifest
        return (f"{m['kind']} backup of node {m['node']} ({m.get('role') or 'stand-alone'}, host {m['hostname']}), "
                f"taken {m['created']} by gateway {m['gateway_version']}: {self.objects:,} objects, "
                f"{human_bytes(self.bytes)}")


class ArchiveUnreadable(OpsError):
    """Reading the archive failed (its disk, its NFS server): said as such, never blamed on the file
    of the store being written at that moment, nor taken for a damaged archive."""

    def __init__(self, archive: str, exc: OSError):
        super().__init__(f"cannot read the archive {archive}: {exc.strerror or exc} (errno {exc.errno}): the disk "
                         "holding it failed; check it (`dmesg`), or copy the archive to another disk and restore "
                         "from there")


class _ArchiveReader:
    """The archive's open file, for tarfile: a read that fails raises ArchiveUnreadable. Bare, its
    OSError names no file, and a restore reported it against the store file it was writing."""

    def __init__(self, f, archive: str):
        self._f, self._archive = f, archive

    def read(self, size: int = -1) -> bytes:
        try:
            return self._f.read(size)
        except OSError as exc:
            raise ArchiveUnreadable(self._archive, exc) from None


@contextlib.contextmanager
def _open(archive: str) -> Iterator[tarfile.TarFile]:
    try:
        f = open(archive, "rb")
    except FileNotFoundError:
        raise OpsError(f"{archive} does not exist") from None
    except OSError as exc:
        if exc.errno in FAILED_ERRNOS:
            raise ArchiveUnreadable(archive, exc) from None
        raise OpsError(f"{archive} is not a backup archive (not a tar file: {exc})") from None
    with f, _open_tar(_ArchiveReader(f, archive), archive) as tar:
        yield tar


def _open_tar(reader: _ArchiveReader, archive: str) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=reader, mode="r|*", bufsize=CHUNK)
    except (tarfile.TarError, OSError) as exc:
        if _starts_with(archive, ZSTD_MAGIC):
            raise OpsError(f"{archive} looks zstd-compressed (it starts with zstd's magic bytes), and restore reads "
                           f"gzip, bz2 and xz archives but not zstd: decompress it first (`zstd -d {archive}` or "
                           f"`unzstd {archive}`) and restore the .tar that makes") from None
        raise OpsError(f"{archive} is not a backup archive (not a tar file: {exc})") from None


def _starts_with(archive: str, magic: bytes) -> bool:
    """Whether a regular file starts with ``magic`` (a pipe is never read here: it would lose bytes)."""
    try:
        if not os.path.isfile(archive):
            return False
        with open(archive, "rb") as f:
            return f.read(len(magic)) == magic
    except OSError:
        return False


def peek_manifest(archive: str) -> dict | None:
    """The manifest of a regular-file archive, read from its first member alone (checksum and fields
    checked), so that a destination that is wrong whatever the archive holds is refused before the
    whole archive is read. None when it cannot be read this way: check_archive then says why."""
    if not os.path.isfile(archive):
        return None
    try:
        with _open(archive) as tar:
            member = tar.next()
            if member is None or member.name != MANIFEST:
                return None
            return _parse_manifest(tar, member, archive)
    except (OpsError, tarfile.TarError, OSError, EOFError):
        return None


def check_rereadable(archive: str) -> None:
    """OpsError unless the archive can be read twice, as a restore does: the check reads all of it
    before anything is written, then the restore reads it again. A pipe (``/dev/stdin`` fed by
    ``ssh ... cat``, a process substitution) is empty the second time; said up front, not after
    the whole archive went through the check."""
    save = "save it to a file first (e.g. `ssh backup-host cat cv.tar > /var/tmp/cv.tar`) and restore that"
    try:
        st = os.stat(archive)
    except FileNotFoundError:
        return  # said by check_archive, with the rest
    if not stat.S_ISREG(st.st_mode):
        raise OpsError(f"{archive} is a pipe or a device, not a file: the restore reads the archive twice (all of "
                       f"it is checked before anything is written), and a pipe gives it once; {save}. "
                       "`--check` reads it once and takes a pipe")


def _data_follows(tar: tarfile.TarFile) -> bool:
    """Whether anything but zeros follows where tarfile stopped reading (up to 1 MiB is looked at)."""
    try:
        rest = tar.fileobj.read(1 << 20)
    except (OSError, EOFError, tarfile.TarError):
        return False
    return bool(rest.strip(b"\0"))


def check_archive(archive: str, quiet: bool = False, stream=None) -> ArchiveInfo:
    """Read the whole archive and verify it; OpsError naming the first problems if it is damaged."""
    stream = stream or sys.stderr
    total = os.path.getsize(archive) if os.path.isfile(archive) and not _compressed(archive) else 0
    progress = Progress("checking the archive", 0, total, stream=stream, quiet=quiet)
    manifest = summary = None
    info = ArchiveInfo({}, {})
    problems = []
    read = 0
    stores: set[str] = set()
    seen: set[str] = set()
    try:
        with _open(archive) as tar:
            for member in tar:
                if manifest is None:
                    if member.name != MANIFEST:
                        raise OpsError(f"{archive} is not a cv-gateway backup: it does not start with {MANIFEST}")
                    manifest = _parse_manifest(tar, member, archive)
                    stores = {store["name"] for store in manifest["stores"]}
                    continue
                if member.name == SUMMARY:
                    summary = _read_json(tar, member, archive)
                    if not isinstance(summary, dict) or not all(
                            isinstance(summary.get(k), int) for k in ("objects", "files", "bytes")):
                        raise OpsError(f"{archive}: its summary is not a cv-gateway backup summary: the archive "
                                       "is damaged")
                    continue
                if summary is not None:
                    problems.append(f"{member.name}: comes after the summary")
                    continue
                _check_member_name(member, stores)
                if member.name in seen:
                    problems.append(f"{member.name}: is in the archive twice")
                    continue
                seen.add(member.name)
                if member.isdir():
                    continue
                if not member.isfile():
                    problems.append(f"{member.name}: not a regular file or directory")
                    continue
                expected = member.pax_headers.get(SHA_HEADER)
                digest = hashlib.sha256()
                what = member.name[len(FILES) + 1:].split("/", 1)[0] if member.name.startswith(FILES + "/") else ""
                keep = what in PRE_SETTINGS_FILES and member.size < CONFIG_LIMIT
                data = [chunk for chunk in read_chunks(tar.extractfile(member), member.size, digest) if keep]
                if digest.hexdigest() != expected:
                    problems.append(f"{member.name}: the bytes do not match their checksum")
                    continue
                if keep:
                    info.node_files[what] = (member.pax_headers.get(PATH_HEADER, ""), b"".join(data))
                if member.name.startswith(STORAGE + "/"):
                    info.files += 1
                    info.bytes += member.size
                    info.objects += is_object(member.name)
                # Bytes of the archive read so far, headers and padding included: the total is its size.
                position = member.offset_data + member.size
                progress.add(1, position - read)
                read = position
            # tarfile takes a damaged header after the first for the end of the archive: more data
            # after it means a damaged middle, not an archive cut short (another cause, another fix).
            damaged_middle = summary is None and manifest is not None and _data_follows(tar)
    except tarfile.TarError as exc:
        raise OpsError(f"{archive} is damaged ({exc}) after {info.files:,} files: it was cut short or corrupted; "
                       "nothing was restored. Use another backup") from None
    except OpsError as exc:
        if "ended" in str(exc):
            raise OpsError(f"{archive} is cut short (a file in it {exc}); nothing was restored. "
                           "Use another backup") from None
        raise
    if manifest is None:
        raise OpsError(f"{archive} is empty")
    if summary is None and damaged_middle:
        raise OpsError(f"{archive} is damaged: a header after {info.files:,} good files cannot be read, and the "
                       "archive goes on after it (a corrupted copy, whole in length); nothing was restored. "
                       "Use another backup")
    if summary is None:
        raise OpsError(f"{archive} has no summary at its end: it was cut short (the backup did not finish, or the "
                       "copy is incomplete); nothing was restored. Use another backup")
    if (summary.get("objects"), summary.get("files"), summary.get("bytes")) != (info.objects, info.files, info.bytes):
        problems.append(f"the summary lists {summary.get('files')} files ({summary.get('objects')} objects, "
                        f"{summary.get('bytes')} bytes); the archive holds {info.files} ({info.objects}, {info.bytes})")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise OpsError(f"{archive} is damaged, nothing was restored: {shown}")
    info.manifest, info.summary = manifest, summary
    if total:  # the summary, the end-of-archive blocks and the padding after the last file: all read
        progress.add(0, max(total - read, 0))
    progress.done("archive OK")
    return info


def _parse_manifest(tar: tarfile.TarFile, member: tarfile.TarInfo, archive: str) -> dict:
    manifest = _read_json(tar, member, archive)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("format"), int):
        raise OpsError(f"{archive}: its manifest is not a cv-gateway backup manifest; the archive "
                       "is damaged or was not made by `gateway backup`")
    if manifest.get("format") != FORMAT:
        raise OpsError(f"{archive} has backup format {manifest.get('format')!r}; this gateway reads "
                       f"format {FORMAT}: restore it with the gateway version that wrote it "
                       f"({manifest.get('gateway_version')})")
    _check_manifest(manifest, archive)
    return manifest


def _compressed(archive: str) -> bool:
    """Whether tar's stream is compressed (then the file's size says nothing about progress)."""
    with open(archive, "rb") as f:
        head = f.read(6)
    return head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ"))


def _read_json(tar: tarfile.TarFile, member: tarfile.TarInfo, archive: str) -> dict:
    try:
        raw = tar.extractfile(member).read()
    except AttributeError as exc:  # not a regular file
        raise OpsError(f"{archive}: {member.name} is not valid JSON ({exc}): the archive is damaged") from None
    # A flipped byte can leave valid JSON that names another node or store. Archives of
    # gateways before the checksum was written have none: their JSON is all there is to check.
    expected = member.pax_headers.get(SHA_HEADER)
    if expected is not None and hashlib.sha256(raw).hexdigest() != expected:
        raise OpsError(f"{archive}: its {member.name.rsplit('/', 1)[-1]} does not match its checksum: the archive is "
                       "damaged; nothing was restored. Use another backup")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise OpsError(f"{archive}: {member.name} is not valid JSON ({exc}): the archive is damaged") from None


def _check_manifest(manifest: dict, archive: str) -> None:
    """A manifest of this format has every field the restore reads."""
    fields = {"kind": str, "node": str, "hostname": str, "created": str, "gateway_version": str, "stores": list}
    wrong = [name for name, kind in fields.items() if not isinstance(manifest.get(name), kind)]
    stores = manifest.get("stores") if isinstance(manifest.get("stores"), list) else []
    if wrong or manifest["kind"] not in ("full", "objects") or not all(
            isinstance(s, dict) and isinstance(s.get("name"), str) for s in stores):
        raise OpsError(f"{archive}: its manifest lacks or garbles {', '.join(wrong) or 'kind or stores'}: the "
                       "archive is damaged or was not made by `gateway backup`")


def _check_member_name(member: tarfile.TarInfo, stores: set[str]) -> None:
    """Refuse anything a restore could not put where it belongs: a store the manifest does not
    list, a node file of an unknown kind, a path that leaves its place."""
    name = member.name.rstrip("/") if member.isdir() else member.name
    for base, allowed in ((STORAGE, stores), (FILES, NODE_FILES)):
        if name.startswith(base + "/"):
            rest = name[len(base) + 1:]
            store, _, relpath = rest.partition("/")
            if store not in allowed:
                raise OpsError(f"refusing the archive member {member.name!r}: {store!r} is not "
                               + ("a store its manifest lists" if base == STORAGE else "a kind of node file")
                               + "; the archive was not made by `gateway backup`, or was altered")
            if relpath or not member.isdir():
                check_relpath(relpath)
            return
    raise OpsError(f"refusing the archive member {member.name!r}: not part of a cv-gateway backup")
