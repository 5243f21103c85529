"""``gateway restore``: check a whole archive, then put its files back.

1. **Check** (always, and all that ``--check`` does): read the archive from
   start to end, hash every file against the SHA-256 in its header, and
   compare the counts with the summary written last. A damaged or cut-short
   archive stops here, before a single file is touched.
2. **Where**: a full backup goes to the primary (or a stand-alone gateway);
   an objects-only backup goes back to the server it came from, because those
   objects exist nowhere else. ``--force`` overrides both, saying so.
3. **Restore**: every file is written to a temp file, hashed again, fsynced and
   renamed into place, so a running gateway serves either its old copy or the
   backup's, never a mix. A file that is already there with the same bytes is
   left alone (running the same restore twice is safe, and a restore that was
   stopped can be run again). One that differs, an object written after the
   backup, is **kept** and listed; ``--overwrite`` takes the backup's copy
   instead. An object file that is damaged (its header does not parse, its
   length is not the one its header gives, or it has the backup's header with
   other bytes) is not a newer version: the backup's copy replaces it, and it
   is listed as damaged (restore_damage.py). Node files (config, TLS) that exist are never
   replaced, not even with ``--overwrite``. Nothing the backup does not hold
   is deleted.

Checks of the destination that need only the manifest (the archive's first
member) run before the whole archive is read: ``peek_manifest`` and
``check_destination``, which only look.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import os
import stat
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from gateway.errors import FAILED_ERRNOS

from gateway_plugins import fslayout

from .backup import FILES, FORMAT, MANIFEST, PATH_HEADER, SHA_HEADER, STORAGE, SUMMARY
from .peers import PeerVersions, RegistryUnreadable, current_role, read_cluster, registry_snapshot
from .progress import Progress, human_bytes, plural
from .restore_damage import damage, find_present, replace_damaged
from .stores import OpsError, Store, check_share_mounted, file_stores, node_name, sqlite_registry_path
from .tree import CHUNK, Installer, check_relpath, file_sha256, is_object, object_header, read_chunks, write_atomically

SHOW = 20  # differing objects listed one by one; the rest are counted
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


@dataclass
class RestoreResult:
    restored: int = 0
    already: int = 0
    bytes: int = 0
    kept: list[str] = field(default_factory=list)  # differing files left as they were (no --overwrite)
    replaced: int = 0
    damaged: list[str] = field(default_factory=list)  # damaged object files the backup's copy replaced
    newer_elsewhere: list[str] = field(default_factory=list)  # another node holds a newer version: left out
    node_files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


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


def check_destination(info: ArchiveInfo, settings, force: bool) -> tuple[dict[str, Store], list[str]]:
    """Which local store each store of the archive goes to, and notes; OpsError when this node is
    not where this backup belongs (unless ``force``)."""
    manifest, notes = info.manifest, []
    here = node_name(settings)
    role = settings.role
    if info.kind == "full" and role not in (None, "primary"):
        role = current_role(settings, notes)  # a failover or `cluster promote` may have made it the primary
    if info.kind == "full" and role not in (None, "primary"):
        message = (f"this is a full backup (of node {manifest['node']}); it is restored on the primary, and this "
                   f"node is {role}")
        if not force:
            raise OpsError(message + ". Run the restore on the primary, or pass --force to restore it here")
        notes.append(message + "; restoring anyway (--force)")
    if info.kind == "objects" and manifest["node"] != here:
        message = (f"this objects-only backup came from node {manifest['node']} and this node is {here}: a redundant "
                   "server's objects are restored to that server")
        if not force:
            raise OpsError(message + f". Run the restore on {manifest['node']}, or pass --force to take them here")
        notes.append(message + "; restoring here anyway (--force)")
    if settings.role == "proxy":
        raise OpsError("this node is a proxy and stores no objects: restore on the primary or a redundant server")
    stores, _ = file_stores(settings)
    by_name = {s.name: s for s in stores}
    wanted = [s["name"] for s in manifest["stores"]]
    mapping = {}
    if len(wanted) == 1 and len(stores) == 1 and wanted[0] not in by_name:
        mapping[wanted[0]] = stores[0]  # one store each side: the backend was renamed
        notes.append(f"the backup's store {wanted[0]!r} goes to this node's only store {stores[0].name!r}")
    else:
        missing = [name for name in wanted if name not in by_name]
        if missing:
            raise OpsError(f"the backup holds the store(s) {', '.join(map(repr, missing))}, which this node does not "
                           f"have (file stores here: {', '.join(map(repr, by_name)) or 'none'}): configure "
                           "[backends.NAME] with type local or sharedfs for each, then run the restore again")
        mapping = {name: by_name[name] for name in wanted}
    for store in mapping.values():
        check_share_mounted(store)
        check_writable(store)
    return mapping, notes


def check_writable(store: Store) -> None:
    """OpsError when the restore could not write into ``store``: its root (or the closest part of the
    path to its temp directory that exists) is a file, is on a read-only filesystem, or is not this
    user's to write. Only looks: nothing is created before the archive is checked."""
    where = f"the store {store.name!r} (--data-dir, or root in [backends.{store.name}] of the config)"
    if os.path.lexists(store.root) and not os.path.isdir(store.root):
        raise OpsError(f"{store.root} is a file, not a directory, and it is the root of {where}: give the cv-storage "
                       "directory there; nothing was restored")
    probe = os.path.join(store.root, ".gateway", "tmp")
    while not os.path.lexists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise OpsError(f"{probe} is a file, not a directory, on the way to {where} at {store.root}: move it away or "
                       "give another directory; nothing was restored")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OpsError(f"cannot write in {probe} ({where} at {store.root}): {_advice(probe)}; nothing was restored")


def _advice(path: str, exc: OSError | None = None) -> str:
    """Why a path cannot be written and what to do, in place of a bare errno."""
    code = exc.errno if exc is not None else None
    try:
        read_only = code == errno.EROFS or (code is None and bool(os.statvfs(path).f_flag & os.ST_RDONLY))
    except OSError:
        read_only = False
    if read_only:
        return "its filesystem is mounted read-only: remount it read-write (or restore to another disk)"
    if code in (None, errno.EACCES, errno.EPERM):
        return ("this user may not write there: run the restore as the user the gateway runs as, or fix the owner "
                "and permissions of that directory")
    if code == errno.ENOTDIR:
        return ("a part of that path is a file, not a directory: check the store's root (--data-dir, or root in "
                "[backends.NAME] of the config)")
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "the disk (or this user's quota) is full: free space there"
    return ""


def describe_os_error(exc: OSError) -> str:
    """``[Errno 13] Permission denied: '/x'`` as the path, the error and what to do."""
    text = exc.strerror or str(exc)
    if exc.filename:
        text = f"{exc.filename}: {text}"
    advice = _advice(str(exc.filename or ""), exc)
    return f"{text} ({advice})" if advice else text


def restore(archive: str, info: ArchiveInfo, settings, mapping: dict[str, Store], overwrite: bool = False,
            config_file: str | None = None, quiet: bool = False, stream=None) -> RestoreResult:
    stream = stream or sys.stderr
    result = RestoreResult()
    try:
        installers = {name: Installer(store.root, host=store.host_id) for name, store in mapping.items()}
        for installer in installers.values():
            installer.remove_dead_temps()  # what a restore killed earlier left half-written
    except OSError as exc:  # not "every file restored so far is whole": none was
        raise OpsError(f"cannot write to the store: {describe_os_error(exc)}; no object was restored") from None
    progress = Progress("restore", info.files, info.bytes, stream=stream, quiet=quiet)
    peers = _peer_versions(settings, mapping, progress)
    try:
        _restore_members(archive, settings, mapping, installers, overwrite, config_file, result, progress, peers)
    except ArchiveUnreadable as exc:
        progress.interrupt()
        raise OpsError(f"{exc}. Every file restored so far is whole; run the same command again once the archive "
                       "reads, it skips what is already there") from None
    finally:
        if peers is not None:
            peers.close()
    summary = f"{plural(result.restored, 'file')} restored ({human_bytes(result.bytes)}), {result.already:,} already there"
    if result.replaced:
        summary += f", {result.replaced:,} replaced by the backup's copy (--overwrite)"
    if result.damaged:
        summary += f", {len(result.damaged):,} damaged, replaced from the backup"
    if result.kept:
        summary += f", {len(result.kept):,} kept at their current version (they differ from the backup: written after it)"
    if result.newer_elsewhere:
        summary += (f", {len(result.newer_elsewhere):,} left out (another node holds a newer version: "
                    "overwritten since the backup)")
    progress.done(summary)
    for line in result.damaged[:SHOW]:
        progress.note(f"damaged, replaced from the backup: {line}")
    if len(result.damaged) > SHOW:
        progress.note(f"damaged, replaced from the backup: ... and {len(result.damaged) - SHOW:,} more")
    for line in result.newer_elsewhere[:SHOW]:
        progress.note(f"newer on another node, left out: {line}")
    if len(result.newer_elsewhere) > SHOW:
        progress.note(f"newer on another node, left out: ... and {len(result.newer_elsewhere) - SHOW:,} more")
    if peers is not None:
        for peer, reason in sorted(peers.unreachable.items()):
            progress.note(f"warning: could not ask node {peer} for newer versions ({reason}); objects restored after "
                          "that were not checked against it: if it holds a newer version of one, reads may return "
                          "either. Run the restore again once it answers: it asks again before anything is put "
                          "back, and an object already restored stays as it is (check it with a GET through "
                          f"{peer})")
    for path in result.kept[:SHOW]:
        progress.note(f"kept: {path}")
    if len(result.kept) > SHOW:
        progress.note(f"kept: ... and {len(result.kept) - SHOW:,} more")
    if result.kept:
        progress.note("these objects were kept at their current version; run the restore again with --overwrite "
                      "to put the backup's versions back")
    return result


def _restore_members(archive: str, settings, mapping: dict[str, Store],
                     installers: dict[str, Installer], overwrite: bool, config_file: str | None,
                     result: RestoreResult, progress: Progress, peers: PeerVersions | None) -> None:
    """Put each member of the (checked) archive in place."""
    with _open(archive) as tar:
        for member in tar:
            if member.name.startswith(STORAGE + "/"):
                store, _, relpath = member.name[len(STORAGE) + 1:].rstrip("/").partition("/")
                installer = installers[store]
                if member.isdir():
                    if relpath:  # the store's own root is there already
                        os.makedirs(installer.path(relpath), exist_ok=True)
                    continue
                _restore_object(tar, member, installer, relpath, overwrite, result,
                                None if mapping[store].shared else peers)
                progress.add(1, member.size)
            elif member.name.startswith(FILES + "/") and member.isfile():
                what = member.name[len(FILES) + 1:].split("/", 1)[0]
                _restore_node_file(tar, member, what, settings, config_file, archive, result, progress)


def _peer_versions(settings, mapping: dict[str, Store], progress: Progress) -> PeerVersions | None:
    """On a cluster node in local mode: the other storing nodes to ask before an object is put back."""
    if all(store.shared for store in mapping.values()):
        return None  # shared storage: one file for every node, nothing to compare with
    try:
        view = read_cluster(settings)
    except RegistryUnreadable as exc:
        progress.note(f"warning: could not read the cluster registry ({exc}): the other nodes are not asked for "
                      "newer versions, so an object overwritten through another node since the backup may come "
                      "back in its old version here")
        return None
    if view is None or not view.peers:
        return None
    return PeerVersions(settings, view)


def _restore_object(tar: tarfile.TarFile, member: tarfile.TarInfo, installer: Installer, relpath: str,
                    overwrite: bool, result: RestoreResult, peers: PeerVersions | None = None) -> None:
    expected = member.pax_headers[SHA_HEADER]
    final = installer.path(relpath)
    present = find_present(final, is_object(relpath))
    if present is not None and present.sha256 == expected:
        result.already += 1
        return
    chunks = read_chunks(tar.extractfile(member), member.size)
    header = None
    if is_object(relpath) and (present is not None or peers is not None):
        first = b"".join(itertools.islice(chunks, 1))
        chunks = itertools.chain([first], chunks)
        header = _header(first)
    problem = damage(present, header) if present is not None else None
    if present is not None and problem is None and not overwrite:
        _keep(final, relpath, result)  # a valid version other than the backup's: written after it
        return
    if peers is not None and header is not None and not relpath.startswith("."):
        # In a cluster, an overwrite through another node retired this node's copy: a newer
        # version there must not be shadowed by the backup's older one (peers.py).
        newer = peers.newer(relpath.split("/", 1)[0], header["key"], header["time"], header["etag"])
        if newer is not None:
            result.newer_elsewhere.append(
                f"{relpath.split('/', 1)[0]}/{header['key']} (node {newer.node} has a version of "
                f"{_utc(newer.last_modified)}, the backup's is of {_utc(header['time'])})")
            for _ in chunks:  # the stream goes on past this member's bytes
                pass
            return
    if problem is not None and not overwrite:
        if not replace_damaged(installer, relpath, chunks, member, expected, present):
            _keep(final, relpath, result)  # replaced meanwhile (a client's PUT): that version stays
            return
    else:
        try:
            # Without --overwrite, an object a client writes while this one is being copied wins.
            installer.install(relpath, chunks, mtime=member.mtime, expect_sha256=expected, replace=overwrite)
        except FileExistsError:
            _keep(final, relpath, result)
            return
    result.restored += 1
    result.bytes += member.size
    if problem is not None:
        name = f"{relpath.split('/', 1)[0]}/{header['key']}" if header else relpath
        result.damaged.append(f"{name} ({final}): {problem}")
    elif present is not None:
        result.replaced += 1


def _header(first: bytes) -> dict | None:
    try:
        parsed = fslayout.decode_header(first)
    except (fslayout.CorruptObject, ValueError):
        return None
    if parsed is None or not isinstance(parsed[0], dict):
        return None
    header = parsed[0]
    ok = (isinstance(header.get("key"), str) and isinstance(header.get("etag"), str)
          and isinstance(header.get("time"), (int, float)))
    return header if ok else None


def _utc(when: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(when, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _keep(final: str, relpath: str, result: RestoreResult) -> None:
    header = object_header(final) if is_object(relpath) else None
    result.kept.append(f"{relpath.split('/', 1)[0]}/{header['key']} ({final})" if header else final)


def restore_missing_settings_files(info: ArchiveInfo, config_file: str | None, stream=None) -> list[str]:
    """Before the settings are read: put back the config file (at ``config_file``) and the TLS
    files (at their original paths) that are missing; the settings refuse to load without them.
    Files that exist are left for the restore proper, which keeps them."""
    stream = stream or sys.stderr
    done = []
    if not config_file:
        return done  # restoring objects only (--data-dir): the node's files stay in the archive
    for what, (original, data) in sorted(info.node_files.items()):
        target = os.path.abspath(config_file if what == "config" and config_file else original)
        if not original or os.path.exists(target):
            continue
        mode = 0o644 if what in ("tls_cert", "tls_ca") else 0o600
        write_atomically(target, f"{target}.{os.getpid()}.restore-tmp", [data],
                         expect_sha256=hashlib.sha256(data).hexdigest(), mode=mode)
        stream.write(f"restored the {what.replace('_', ' ')} file to {target} (it was missing)\n")
        done.append(target)
    return done


def _restore_node_file(tar: tarfile.TarFile, member: tarfile.TarInfo, what: str, settings, config_file: str | None,
                       archive: str, result: RestoreResult, progress: Progress) -> None:
    """The config, TLS files and registry of a full backup: written where this node's settings look
    for them (the original path when the setting is unset), and only where nothing is yet. One
    that exists is kept, with or without --overwrite (which is about objects): a rotated TLS key or
    an edited config is newer than the backup, and reverting it silently would keep no copy."""
    original = member.pax_headers.get(PATH_HEADER, "")
    if what == "registry":
        target = sqlite_registry_path(settings)
    elif config_file:
        target = config_file if what == "config" else str(getattr(settings, what, None) or original)
    else:
        target = None
    if not target:
        progress.note(f"not restored: the {what.replace('_', ' ')} file {original} (member {member.name}), since "
                      f"this node's settings name {'no SQLite registry' if what == 'registry' else 'no config file'}")
        return
    target = os.path.abspath(target)
    expected = member.pax_headers[SHA_HEADER]
    present = file_sha256(target)
    if present == expected:
        return
    if present is not None:
        extra = ("; gateways re-register at start, so the live registry is usually the one to keep"
                 if what == "registry" else "")
        progress.note(f"kept {target} ({what}), which differs from the backup's copy (member {member.name}){extra}; "
                      f"node files are never replaced, not even with --overwrite: to use the backup's, take it out "
                      f"with `tar -xf {archive} {member.name}` and put it in place yourself")
        return
    tmp = f"{target}.{os.getpid()}.restore-tmp"
    mode = 0o644 if what in ("tls_cert", "tls_ca") else 0o600
    write_atomically(target, tmp, read_chunks(tar.extractfile(member), member.size), expect_sha256=expected, mode=mode)
    result.node_files.append(f"{what}: {target}")
    progress.note(f"restored {what} to {target}")
    if what == "registry":
        _note_restored_nodes(target, progress)


def _note_restored_nodes(path: str, progress: Progress) -> None:
    """Name the nodes a restored registry lists: it is the node list of the backup's time, so a node
    that left since is back in it, and while a listed node does not answer, an object missing from
    the others is a 503 ("may be on an unreachable server"), never a 404."""
    url = f"sqlite://{path}"  # path is absolute: sqlite:///var/lib/...
    try:
        nodes, _ = registry_snapshot(url)
    except RegistryUnreadable as exc:
        progress.note(f"could not read the restored registry {path} ({exc}): check its node list with "
                      f"`gateway cluster status --registry {url}`")
        return
    listed = ", ".join(f"{n.node_id} ({n.role}, {n.address})" for n in sorted(nodes, key=lambda n: n.install_order))
    progress.note(f"the restored registry lists the nodes of the backup's time: {listed or 'none'}. Remove a node "
                  f"that has left the cluster since with `gateway cluster leave --registry {url} --node-id NODE` "
                  "(--force if it held objects): while it is listed and does not answer, objects missing on the "
                  "other nodes answer 503, not 404")
