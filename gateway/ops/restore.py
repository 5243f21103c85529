"""``gateway restore``: check a whole archive, then put its files back.

1. **Check** (always, and all that ``--check`` does; archive.py, which writes
   nothing): read the archive from start to end, hash every file against the
   SHA-256 in its header, and compare the counts with the summary written
   last. A damaged or cut-short archive stops here, before a single file is
   touched.
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
   other bytes and it is the copy whose data does not match the ETag) is not a
   newer version: the backup's copy replaces it, and it is listed as damaged;
   when the backup's copy is the damaged one, the file here is kept and listed
   (restore_damage.py). Node files (config, TLS) that exist are never
   replaced, not even with ``--overwrite``. Nothing the backup does not hold
   is deleted.

Checks of the destination that need only the manifest (the archive's first
member) run before the whole archive is read: ``peek_manifest`` (archive.py)
and ``check_destination`` (here), which only look.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import sys
import tarfile
from dataclasses import dataclass, field

from gateway_plugins import fslayout

from .archive import ArchiveInfo, ArchiveUnreadable, _open
from .backup import FILES, PATH_HEADER, SHA_HEADER, STORAGE
from .peers import PeerVersions, RegistryUnreadable, current_role, read_cluster, registry_snapshot
from .progress import Progress, human_bytes, plural
from .restore_damage import SAME_VERSION, BackupCopyDamaged, damage, find_present, judge_same_version, replace_damaged
from .stores import OpsError, Store, check_share_mounted, file_stores, node_name, sqlite_registry_path
from .tree import Installer, file_sha256, is_object, object_header, owner_for, read_chunks, write_atomically

SHOW = 20  # differing objects listed one by one; the rest are counted


@dataclass
class RestoreResult:
    restored: int = 0
    already: int = 0
    bytes: int = 0
    kept: list[str] = field(default_factory=list)  # differing objects left as they were (no --overwrite)
    layout_kept: int = 0  # differing layout files (a %bucket.json of a bucket made again since) left as they are
    replaced: int = 0
    damaged: list[str] = field(default_factory=list)  # damaged object files the backup's copy replaced
    backup_damaged: list[str] = field(default_factory=list)  # kept: the backup's copy is (or may be) the damaged one
    newer_elsewhere: list[str] = field(default_factory=list)  # another node holds a newer version: left out
    node_files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


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
            raise OpsError(message + f". Run the restore on {manifest['node']}, or pass --force to take them here"
                           + _same_server_advice(settings, manifest["node"]))
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
    if result.layout_kept:
        summary += (f", {plural(result.layout_kept, 'layout file')} left as found (e.g. the record of a bucket "
                    "made again since)")
    if result.backup_damaged:
        summary += f", {len(result.backup_damaged):,} kept as they are (the backup's copy is damaged)"
    if result.newer_elsewhere:
        summary += (f", {len(result.newer_elsewhere):,} left out (another node holds a newer version: "
                    "overwritten since the backup)")
    progress.done(summary)
    for line in result.damaged[:SHOW]:
        progress.note(f"damaged, replaced from the backup: {line}")
    if len(result.damaged) > SHOW:
        progress.note(f"damaged, replaced from the backup: ... and {len(result.damaged) - SHOW:,} more")
    for line in result.backup_damaged[:SHOW]:
        progress.note(f"kept, the backup's copy is damaged: {line}")
    if len(result.backup_damaged) > SHOW:
        progress.note(f"kept, the backup's copy is damaged: ... and {len(result.backup_damaged) - SHOW:,} more")
    for line in result.newer_elsewhere[:SHOW]:
        progress.note(f"newer on another node, left out: {line}")
    if len(result.newer_elsewhere) > SHOW:
        progress.note(f"newer on another node, left out: ... and {len(result.newer_elsewhere) - SHOW:,} more")
    if peers is not None:
        for peer, reason in sorted(peers.unreachable.items()):
            progress.note(f"warning: could not ask node {peer} for newer versions ({reason}); objects restored after "
                          "that were not checked against it: if it holds a newer version of one, reads may return "
                          "either. Once it answers, run `gateway cluster repair` with this node's settings: it "
                          "retires the older of two copies of a key (a restore run again would leave objects "
                          "already restored as they are)")
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
                        installer.make_dirs(relpath)
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
    if problem == SAME_VERSION:  # one of the two copies is damaged: which?
        try:
            problem = judge_same_version(final, first, member.size, overwrite)
        except BackupCopyDamaged as exc:
            _backup_damaged(final, relpath, header, str(exc), chunks, result)
            return
    if present is not None and problem is None and not overwrite:
        _keep(final, relpath, result)  # a valid version other than the backup's: written after it
        return
    asks_peers = peers is not None and header is not None and not relpath.startswith(".")
    if asks_peers and _newer_elsewhere(peers, relpath, header, result):
        # In a cluster, an overwrite through another node retired this node's copy: a newer
        # version there must not be shadowed by the backup's older one (peers.py).
        for _ in chunks:  # the stream goes on past this member's bytes
            pass
        return
    if problem is not None and not overwrite:
        try:
            replaced = replace_damaged(installer, relpath, chunks, member, expected, present)
        except BackupCopyDamaged as exc:
            _backup_damaged(final, relpath, header, f"{problem}, and {exc}", chunks, result)
            return
        if not replaced:
            _keep(final, relpath, result)  # replaced meanwhile (a client's PUT): that version stays
            return
    else:
        try:
            # Without --overwrite, an object a client writes while this one is being copied wins.
            installer.install(relpath, chunks, mtime=member.mtime, expect_sha256=expected, replace=overwrite)
        except FileExistsError:
            _keep(final, relpath, result)
            return
    if asks_peers and _newer_elsewhere(peers, relpath, header, result):
        # Asked again, the copy in place: a PUT through another node while it was written found no copy
        # here to retire, and the backup's older one would shadow it for reads through this node.
        _remove_if_ours(installer, relpath, expected)
        return
    result.restored += 1
    result.bytes += member.size
    if problem is not None:
        name = f"{relpath.split('/', 1)[0]}/{header['key']}" if header else relpath
        result.damaged.append(f"{name} ({final}): {problem}")
    elif present is not None:
        result.replaced += 1


def _newer_elsewhere(peers: PeerVersions, relpath: str, header: dict, result: RestoreResult) -> bool:
    """Whether another node has a newer version of the object (then noted in ``result``)."""
    bucket = relpath.split("/", 1)[0]
    newer = peers.newer(bucket, header["key"], header["time"], header["etag"])
    if newer is None:
        return False
    result.newer_elsewhere.append(f"{bucket}/{header['key']} (node {newer.node} has a version of "
                                  f"{_utc(newer.last_modified)}, the backup's is of {_utc(header['time'])})")
    return True


def _remove_if_ours(installer: Installer, relpath: str, sha256: str) -> None:
    """Remove the file the restore put at ``relpath``, unless a client's PUT through this node replaced
    it since (then it is that client's version, and stays)."""
    final = installer.path(relpath)
    try:
        ours = os.stat(final).st_ino
    except FileNotFoundError:
        return
    # The same file before and after it was hashed: a PUT renamed over it meanwhile is another inode.
    if file_sha256(final) == sha256 and os.stat(final).st_ino == ours:
        installer.remove(relpath)


def _backup_damaged(final: str, relpath: str, header: dict | None, why: str, chunks, result: RestoreResult) -> None:
    """The file here is kept, since the backup's copy of it is damaged (or may be)."""
    for _ in chunks:  # the stream goes on past this member's bytes
        pass
    name = f"{relpath.split('/', 1)[0]}/{header['key']}" if header else relpath
    result.backup_damaged.append(f"{name} ({final}): {why}")


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
    if not is_object(relpath):
        # A layout file (a bucket made again since the backup has its own %bucket.json): no object, and
        # no version a client wrote to put back with --overwrite (it was listed as a kept object).
        result.layout_kept += 1
        return
    header = object_header(final)
    result.kept.append(f"{relpath.split('/', 1)[0]}/{header['key']} ({final})" if header else final)


def _same_server_advice(settings, node: str) -> str:
    """What to do when this may be ``node`` itself at a new address: a node keeps its id in its storage
    (.gateway/node-id, which backups leave out), so a new disk at a new address has none."""
    from ..cluster.settings_check import node_id_file

    path = node_id_file(settings)
    if not settings.role or settings.node_id or path is None or os.path.exists(path):
        return ""
    return (f". If this is {node} itself at a new address (a new disk has no {path}, where a node keeps its id), "
            f"give it its id: GATEWAY_NODE_ID={node} (or node_id in its config) for this restore; the restore "
            "keeps it there for `gateway serve`")


def remember_restored_node_id(info: ArchiveInfo, settings, stream=None) -> None:
    """After an objects-only backup was restored to the node it came from: keep that node's id in
    its storage when none is kept there yet (a new disk), so that `gateway serve` comes back under it
    at whatever address, without GATEWAY_NODE_ID."""
    from ..cluster.settings_check import node_id_file, remember_node_id, remembered_node_id

    node = info.manifest.get("node")
    if (info.kind != "objects" or not settings.role or node != node_name(settings)
            or node_id_file(settings) is None or remembered_node_id(settings)):
        return
    remember_node_id(settings, node)
    (stream or sys.stderr).write(f"kept node id {node} in {node_id_file(settings)}: the node keeps it at any "
                                 "address\n")


def restore_missing_settings_files(info: ArchiveInfo, config_file: str | None, stream=None) -> list[str]:
    """Before the settings are read: put back the config file (at ``config_file``) and the TLS
    files (at their original paths) that are missing; the settings refuse to load without them.
    Files that exist are left for the restore proper, which keeps them."""
    stream = stream or sys.stderr
    done = []
    if not config_file:
        return done  # restoring objects only (--data-dir): the node's files stay in the archive
    files = sorted(info.node_files.items(), key=lambda item: item[0] != "config")  # the config first: it names the rest
    for what, (original, data) in files:
        if what == "config":
            target = config_file
        else:
            # Where the settings will look (the config, or GATEWAY_TLS_*), never the path the archive
            # names: that is the archive's word, and a tampered one run as root could write anywhere.
            target = configured_path(config_file, what)
            if target is None:
                continue  # the restore proper says so, naming the member
        target = os.path.abspath(target)
        if os.path.exists(target):
            continue
        mode = 0o644 if what in ("tls_cert", "tls_ca") else 0o600
        write_atomically(target, f"{target}.{os.getpid()}.restore-tmp", [data],
                         expect_sha256=hashlib.sha256(data).hexdigest(), mode=mode,
                         owner=owner_for(os.path.dirname(target)))
        stream.write(f"restored the {what.replace('_', ' ')} file to {target} (it was missing)\n")
        done.append(target)
    return done


def configured_path(config_file: str, what: str) -> str | None:
    """The path the settings will read ``what`` (tls_cert, tls_key, tls_ca) from: GATEWAY_TLS_*, else
    the config file's setting; None when neither names one."""
    from ..config import config_table

    value = os.environ.get(f"GATEWAY_{what.upper()}") or config_table(config_file).get(what)
    return value if isinstance(value, str) and value else None


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
        # Where the settings look for it; never the path the archive names (the archive's word).
        target = config_file if what == "config" else str(getattr(settings, what, None) or "")
    else:
        target = None
    if not target:
        named = {"registry": "no SQLite registry", "config": "no config file"}.get(what, f"no {what} file")
        progress.note(f"not restored: the {what.replace('_', ' ')} file {original} (member {member.name}), since "
                      f"this node's settings name {named if config_file or what == 'registry' else 'no config file'}")
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
    write_atomically(target, tmp, read_chunks(tar.extractfile(member), member.size), expect_sha256=expected, mode=mode,
                     owner=owner_for(os.path.dirname(target)))  # the registry the gateway's user writes, too
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
