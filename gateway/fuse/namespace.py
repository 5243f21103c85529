"""Names: mkdir, rmdir, unlink, symlinks, rename (copy + delete), and metadata changes (chmod, chown, utimens).

A mixin of GatewayFS (see fs.py), split out to keep modules small.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import re
import stat
import time

from .cache import DIR, FILE, LINK, MISSING, Attr
from .client import ObjectStat, StoreError
from .meta import MAX_KEY_BYTES, MTIME_LIMIT, apply_meta, content_type, err, format_time, format_time_ns, parent_of

log = logging.getLogger("gateway.fuse")

# libfuse's high-level API renames an open file that is unlinked or renamed over to a name like
# this in the same directory (fuse.c, hidden_name: ".fuse_hidden%08x%08x"), and unlinks it at its
# last close.
HIDDEN_NAME = re.compile(r"\.fuse_hidden[0-9a-f]{16}")


class NamespaceOps:
    """Names and metadata, on paths; a mixin of GatewayFS, whose state (caches, tables, client) it uses."""

    def mkdir(self, path: str, mode: int, owner: tuple[int, int] | None = None) -> None:
        self._check_writable()
        self._check_new_name(path, directory=True)
        bucket, key = self.split(path)
        with self._namespace_lock:
            if not key:
                self.client.create_bucket(bucket)
                self._remember(path, Attr(DIR, mtime=time.time(), marker=True))
                return
            meta = self._new_meta(stat.S_IFDIR | (mode & 0o7777), owner, path)
            etag = self.client.put(bucket, key + "/", b"", 0, meta, "application/x-directory").etag
            attr = Attr(DIR, mtime=time.time(), etag=etag, marker=True, meta=meta,
                        content_type="application/x-directory", stored={})
            apply_meta(attr, meta)
            attr.kind = DIR
            self._remember(path, attr)
            self.dirs.put(path, {})

    def rmdir(self, path: str) -> None:
        self._check_writable()
        bucket, key = self.split(path)
        with self._namespace_lock:
            if not bucket:
                raise err(errno.EBUSY, path)
            if not key:
                self.client.delete_bucket(bucket)
                self._forget(path, tree=True)
                return
            attr = self.lookup(path)
            if attr.kind != DIR:
                raise err(errno.ENOTDIR, path)
            prefix = key + "/"
            page = self.client.list_page(bucket, prefix, "/", max_keys=2)
            children = [o.key for o in page.objects if o.key != prefix] + page.prefixes
            if children or self._written_under(path):
                if any(self.is_hidden_key(child[len(prefix):]) for child in children):
                    # Keys the mount cannot show: the directory looks empty, so say why it is not.
                    hidden = [name for name in self._child_keys(bucket, prefix)
                              if self.is_hidden_key(name[len(prefix):])]
                    self._warn_hidden(path, bucket, hidden)
                raise err(errno.ENOTEMPTY, path)
            if any(o.key == prefix and o.size > 0 for o in page.objects):
                # Another client stored bytes under the directory's own name ("dir/"), which the mount
                # cannot show: removing the directory would delete them unseen.
                raise err(errno.ENOTEMPTY,
                          f"{path}: the object {prefix!r} holds data (delete it with an S3 client)")
            self._ensure_marker(parent_of(path)[0], leaving=path)
            if page.objects:
                self.client.delete(bucket, prefix)
            self._forget(path, tree=True)

    def _written_under(self, directory: str, leaving: str | None = None) -> bool:
        """Whether a file under ``directory`` (other than ``leaving``) is open here and not stored yet."""
        with self._table_lock:
            return any(p.startswith(directory + "/") and p != leaving and not f.unlinked
                       for p, f in self._open.items())

    def _child_keys(self, bucket: str, prefix: str) -> list[str]:
        """The keys and common prefixes of one page of a directory's listing (for a log line)."""
        page = self.client.list_page(bucket, prefix, "/")
        return [o.key for o in page.objects if o.key != prefix] + page.prefixes

    def _ensure_marker(self, directory: str, leaving: str) -> None:
        """Give a directory a marker object before its last child (the path ``leaving``, a file's or a
        subdirectory's) goes, so that the directory stays. Only then: a PUT before every removal cost a
        request each, and on a full disk (507) made every rm in such a directory fail, when removing
        files is how one makes room."""
        bucket, key = self.split(directory)
        if not key:
            return
        attr = self.attrs.get(directory)
        if attr is not None and attr is not MISSING and attr.marker:
            return
        prefix = key + "/"
        leaving_key = self.split(leaving)[1]
        # Sorted, the marker comes first: three names tell it, the one leaving and one more child apart.
        page = self.client.list_page(bucket, prefix, "/", max_keys=3)
        has_marker = bool(page.objects) and page.objects[0].key == prefix
        names = [o.key for o in page.objects] + page.prefixes
        others = [name for name in names if name not in (prefix, leaving_key, leaving_key + "/")]
        if not has_marker and not others and not self._written_under(directory, leaving):
            meta = self._new_meta(stat.S_IFDIR | (0o777 & ~self.options.umask), None)
            self.client.put(bucket, prefix, b"", 0, meta, "application/x-directory")
            has_marker = True
        if has_marker and attr is not None and attr is not MISSING:
            attr.marker = True

    # Files: names ---------------------------------------------------------------

    def unlink(self, path: str) -> None:
        self._check_writable()
        bucket, key = self.split(path)
        with self._namespace_lock:
            attr = self.lookup(path)
            if attr.kind == DIR:
                raise err(errno.EISDIR, path)
            if not key:
                raise err(errno.EPERM, path)
            with self._table_lock:
                open_file = self._open.get(path)
            if open_file is not None and open_file.unlinked:  # a hidden name (_hide): the object is gone
                self._forget(path)
                return
            if open_file is not None:
                self._keep_first_bytes(open_file)
                self._detach(open_file)
            self._ensure_marker(parent_of(path)[0], leaving=path)
            if open_file is None or open_file.base is not None:
                self.client.delete(bucket, key)
            self._forget(path)

    def _hide(self, old: str, new: str, open_file) -> None:
        """libfuse's high-level API does not unlink a file that is still open (nor let a rename replace
        it): it renames it to .fuse_hiddenNNN and unlinks that name at the last close. A rename in the
        store would copy the object to a name every client sees (and a crash would leave it, and the
        directory could not be removed meanwhile), so this is an unlink: the object is deleted now,
        and the hidden name lives only in this mount, for the open file's handles, until it closes."""
        bucket, key = self.split(old)
        self._keep_first_bytes(open_file)
        self._ensure_marker(parent_of(old)[0], leaving=old)
        if open_file.base is not None:
            self.client.delete(bucket, key)
        self._detach(open_file)
        with self._table_lock:
            if self._open.get(old) is open_file:
                del self._open[old]
            open_file.path = new  # the object's bucket and key stay: its handles still read them
            self._open[new] = open_file
        self._forget(old)
        self.attrs.put_missing(new)  # after the last close, libfuse's unlink of the name costs no request

    def _keep_first_bytes(self, open_file) -> None:
        """Before the object of an open file is deleted (unlink, a rename over it, or libfuse's rename
        of it to .fuse_hiddenNNN, see _hide): keep what its handles can still read afterwards, the
        first bytes fetched with its lookup, or fetched now for a small object (one GET, only for a
        file that is open while its name goes away; docs/fuse.md).

        A file open for writing that has not been written yet gets its spool now, while its bytes can
        still be fetched: its first write would download them into the spool, and after the delete
        there is nothing left to download (a small file's spool is filled from the bytes kept)."""
        with open_file.lock:
            base = open_file.base
            if base is None or open_file.spool is not None:
                return
            if open_file.first is None:
                first = self.first_bytes.get(open_file.path, base.etag)
                if first is None and base.size <= self.options.first_bytes:
                    try:
                        first = self.client.get_range(open_file.bucket, open_file.key, 0, base.size,
                                                      base.etag or None)
                    except OSError:
                        first = None  # replaced or gone already: its handles' reads fail, as before
                open_file.first = first
            if self._has_writer(open_file):
                try:
                    open_file.ensure_spool(self.client, self.spool_dir)
                except OSError as exc:  # gone already, or the spool is full: its writes fail (logged)
                    log.warning("%s is open for writing and its name goes away, but its content could not "
                                "be kept for its writes (%s)", open_file.path, exc)

    def _detach(self, open_file) -> None:
        """The name of an open file went away: its handles stay usable, it is never uploaded again."""
        with open_file.lock:
            open_file.unlinked = True

    def symlink(self, path: str, target: str, owner: tuple[int, int] | None = None) -> None:
        self._check_writable()
        bucket, key = self.split(path)
        if not key:
            raise err(errno.EPERM, f"{path}: files cannot be created outside a bucket")
        self._check_new_name(path)
        body = target.encode(errors="surrogateescape")
        meta = self._new_meta(stat.S_IFLNK | 0o777, owner, path)
        etag = self.client.put(bucket, key, body, len(body), meta, "application/x-symlink").etag
        attr = Attr(LINK, len(body), time.time(), etag=etag, meta=meta, target=target)
        apply_meta(attr, meta)
        self._remember(path, attr)

    def mknod(self, path: str, mode: int, owner: tuple[int, int] | None = None) -> None:
        """A regular file is created empty (the kernel sends a create for those; libfuse calls mknod
        only without one). FIFOs, sockets and devices cannot be objects: EPERM, "Operation not
        permitted", as for hard links (not ENOSYS, "Function not implemented", which reads as a
        broken mount)."""
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
            raise err(errno.EPERM, f"{path}: FIFOs, sockets and device files cannot be stored as objects")
        self.release(self.create(path, stat.S_IFREG | (mode & 0o7777), os.O_CREAT | os.O_EXCL | os.O_WRONLY, owner))

    def readlink(self, path: str) -> str:
        attr = self.lookup(path)
        if attr.kind != LINK:
            raise err(errno.EINVAL, f"{path} is not a symbolic link")
        if attr.target is None:
            bucket, key = self.split(path)
            attr.target = self.client.get_range(bucket, key, 0, max(attr.size, 1)).decode(errors="surrogateescape")
        return attr.target

    def rename(self, old: str, new: str) -> None:
        """Copy then delete: not atomic, and a directory moves object by object (see docs/fuse.md)."""
        self._check_writable()
        if not self.split(old)[1] or not self.split(new)[1]:
            raise err(errno.EXDEV, "buckets cannot be renamed, and files cannot live outside a bucket")
        self._check_new_name(new)
        with self._namespace_lock:
            if HIDDEN_NAME.fullmatch(new.rpartition("/")[2]) and parent_of(new)[0] == parent_of(old)[0]:
                with self._table_lock:
                    open_file = self._open.get(old)
                if open_file is not None and not open_file.unlinked:
                    self._hide(old, new, open_file)
                    return
            attr = self.lookup(old)
            try:
                target = self.lookup(new)
            except FileNotFoundError:
                target = None
            if target is not None:
                if target.kind == DIR and attr.kind != DIR:
                    raise err(errno.EISDIR, new)
                if target.kind != DIR and attr.kind == DIR:
                    raise err(errno.ENOTDIR, new)
            self._ensure_marker(parent_of(old)[0], leaving=old)
            if attr.kind == DIR:
                self._rename_dir(old, new, target)
            else:
                self._rename_file(old, new, attr)

    def _rename_file(self, old: str, new: str, attr: Attr) -> None:
        old_bucket, old_key = self.split(old)
        new_bucket, new_key = self.split(new)
        with self._table_lock:
            open_file = self._open.get(old)
            replaced = self._open.get(new)
        if open_file is not None:
            with open_file.lock:
                if open_file.dirty and not open_file.unlinked:
                    self._upload(open_file)
        if replaced is not None:
            self._keep_first_bytes(replaced)
        etag = self._move_copy(old_bucket, old_key, new_bucket, new_key, attr)
        self._delete_moved(old_bucket, old_key, attr.etag)
        if replaced is not None:
            # The file renamed over is gone, as after unlink; opens of the name from now on get the
            # new object (not this one's handles and version).
            self._detach(replaced)
        with self._table_lock:
            if replaced is not None and self._open.get(new) is replaced:
                del self._open[new]
            if open_file is not None and self._open.get(old) is open_file:
                del self._open[old]
                open_file.path, open_file.bucket, open_file.key = new, new_bucket, new_key
                self._open[new] = open_file
            else:
                open_file = None
        if open_file is not None and etag:
            self._moved(open_file, {new_key: etag})
        self._forget(old)
        self._content_changed(new)
        moved = dataclasses.replace(attr, etag=etag or attr.etag, marker=False, content_type=None, stored=None)
        self._remember(new, moved)

    def _rename_dir(self, old: str, new: str, target: Attr | None) -> None:
        old_bucket, old_key = self.split(old)
        new_bucket, new_key = self.split(new)
        old_prefix, new_prefix = old_key + "/", new_key + "/"
        if new_bucket == old_bucket and new_prefix.startswith(old_prefix):
            raise err(errno.EINVAL, f"cannot move {old} into itself")
        if target is not None:
            page = self.client.list_page(new_bucket, new_prefix, "/", max_keys=2)
            if [o for o in page.objects if o.key != new_prefix] or page.prefixes:
                raise err(errno.ENOTEMPTY, new)
            if any(o.key == new_prefix and o.size > 0 for o in page.objects):
                # As in rmdir: bytes another client stored under the directory's own name ("dir/"),
                # which the mount cannot show, would be replaced by the moved marker unseen.
                raise err(errno.ENOTEMPTY,
                          f"{new}: the object {new_prefix!r} holds data (delete it with an S3 client)")
        with self._table_lock:
            inside = [f for p, f in self._open.items() if p.startswith(old + "/")]
        for open_file in inside:
            with open_file.lock:
                if open_file.dirty and not open_file.unlinked:
                    self._upload(open_file)
        # Every key first: one that would be too long under the new name must stop the move before
        # anything is copied (a half-done move leaves copies behind).
        listed = {info.key: info for page in self.client.iter_list(old_bucket, old_prefix, "") for info in page.objects}
        keys = list(listed)
        longest = max((len(key.encode()) for key in keys), default=len(old_prefix.encode()))
        if longest - len(old_prefix.encode()) + len(new_prefix.encode()) > MAX_KEY_BYTES:
            raise err(errno.ENAMETOOLONG, f"{new}: a key inside would be longer than {MAX_KEY_BYTES} bytes")
        moved, etags = [], {}
        for key in keys:
            new_key = new_prefix + key[len(old_prefix):]
            etags[new_key] = self._move_copy(old_bucket, key, new_bucket, new_key, listed=listed[key])
            moved.append(key)
        if old_prefix not in moved:  # keep the directory itself, even if it was implicit
            meta = self._new_meta(stat.S_IFDIR | (0o777 & ~self.options.umask), None)
            self.client.put(new_bucket, new_prefix, b"", 0, meta, "application/x-directory")
        for key in moved:
            self._delete_moved(old_bucket, key, listed[key].etag)
        with self._table_lock:
            retargeted = []
            for path in [p for p in self._open if p.startswith(old + "/")]:
                open_file = self._open.pop(path)
                open_file.path = new + path[len(old):]
                open_file.bucket, open_file.key = self.split(open_file.path)
                self._open[open_file.path] = open_file
                retargeted.append(open_file)
        for open_file in retargeted:
            self._moved(open_file, etags)
        self._forget(old, tree=True)
        self.attrs.invalidate_tree(new)
        self.dirs.invalidate_tree(new)
        self.ahead.changed(new, tree=True)
        self.dirs.invalidate(parent_of(new)[0])

    # Metadata -------------------------------------------------------------------

    def _as_stored(self, bucket: str, key: str, attr: Attr | None = None) -> ObjectStat:
        """The object's metadata, Content-Type and stored headers, from ``attr`` when a HEAD or GET
        described it (or this mount wrote it), else from a HEAD: a copy that replaces the metadata
        (chmod, chown, touch, a rename) sends them all again, or S3's REPLACE drops them."""
        if (attr is not None and attr.content_type is not None and attr.meta is not None
                and not attr.from_listing):
            return ObjectStat(key, attr.size, attr.etag, attr.mtime, dict(attr.meta), attr.content_type,
                              dict(attr.stored or {}))
        got = self.client.head(bucket, key)
        return dataclasses.replace(got, metadata=dict(got.metadata or {}))

    def _delete_moved(self, bucket: str, key: str, etag: str | None) -> None:
        """Delete the old name of a moved object, only while it holds the version that was there when
        the move looked (``etag``): one another client wrote during the move stays under the old name
        too, rather than being deleted unseen (an acknowledged PUT lost)."""
        try:
            self.client.delete(bucket, key, if_match=etag)
        except StoreError as exc:
            if exc.code == "NoSuchKey":
                return  # deleted by someone else meanwhile: gone either way
            if exc.code != "PreconditionFailed":
                raise
            log.warning("/%s/%s was written by another client while it was moved: its new version stays "
                        "under the old name too", bucket, key)

    def _move_copy(self, old_bucket: str, old_key: str, new_bucket: str, new_key: str, attr: Attr | None = None,
                   listed: ObjectStat | None = None) -> str:
        """The copy of a rename: the object as it is, with its mtime (stored, when only its
        Last-Modified gave it: the copy's would be the time of the move) and the Content-Type its new
        name suggests when the old one had the type its name suggested (rsync, `sed -i` and editors
        write a temporary name first, then rename it into place)."""
        if listed is not None and listed.metadata is not None and "mtime" in listed.metadata:
            return self.client.copy(new_bucket, old_key, new_key, source_bucket=old_bucket)  # kept as it is
        kept = self._as_stored(old_bucket, old_key, attr)
        kind = LINK if kept.content_type == "application/x-symlink" else FILE
        new_type = kept.content_type
        if kind == FILE and kept.content_type in ("", content_type(old_key, FILE)):
            new_type = content_type(new_key, FILE)
        if "mtime" in kept.metadata and new_type == kept.content_type:
            return self.client.copy(new_bucket, old_key, new_key, source_bucket=old_bucket)
        return self.client.copy(new_bucket, old_key, new_key, _copied_meta(kept), new_type, source_bucket=old_bucket,
                                stored=kept.headers)

    def _new_meta(self, mode: int, owner: tuple[int, int] | None, path: str | None = None) -> dict[str, str]:
        """The metadata of a new entry at ``path``: its mode and owner (the caller's), as a local
        filesystem gives them in a setgid directory (see _inherited)."""
        if path is not None:
            mode, owner = self._inherited(path, mode, owner)
        meta = {"mode": f"{mode:o}", "mtime": format_time(time.time())}
        if owner is not None:
            uid, gid = owner
            if uid != self.options.uid:
                meta["uid"] = str(uid)
            if gid != self.options.gid:
                meta["gid"] = str(gid)
        return meta

    def _inherited(self, path: str, mode: int, owner: tuple[int, int] | None) -> tuple[int, tuple[int, int] | None]:
        """Linux's rule for a new entry in a setgid directory (inode_init_owner; the kernel leaves it
        to a FUSE filesystem): it gets the directory's group, not its creator's, and a subdirectory
        the setgid bit too. A directory known only from its parent's listing (``marker`` None: its
        stored mode is not known) is looked up first: one HEAD of its marker, whose attributes are
        kept."""
        parent = parent_of(path)[0]
        bucket, key = self.split(parent)
        if not key:
            return mode, owner  # the root and buckets keep no mode
        attr = self.lookup(parent)
        if attr.kind == DIR and attr.marker is None:
            attr = self._dir_attr(self._head_if_there(bucket, key + "/"))
            self.attrs.put(parent, attr)
        if attr.kind != DIR or attr.mode is None or not attr.mode & stat.S_ISGID:
            return mode, owner
        uid = owner[0] if owner is not None else self.options.uid
        if stat.S_ISDIR(mode):
            mode |= stat.S_ISGID
        return mode, (uid, self.options.gid if attr.gid is None else attr.gid)

    def _full_meta(self, path: str, attr: Attr) -> dict[str, str]:
        """The object's stored metadata (a HEAD when only a listing described it)."""
        if attr.meta is not None and not attr.from_listing:
            return dict(attr.meta)
        bucket, key = self.split(path)
        if attr.kind == DIR:
            key += "/"  # its marker, if it has one (a listed directory's ``marker`` is None: not known)
        found = self._head_if_there(bucket, key)
        return dict(found.metadata or {}) if found is not None else {}

    def _head_if_there(self, bucket: str, key: str) -> ObjectStat | None:
        """The object's HEAD; None when there is none (a directory without a marker)."""
        try:
            return self.client.head(bucket, key)
        except StoreError as exc:
            if exc.errno != errno.ENOENT:
                raise
            return None

    def set_meta(self, path: str, changes: dict[str, str]) -> None:
        """chmod, chown and utimens: change the stored metadata (a copy of the object onto itself)."""
        self._check_writable()
        bucket, key = self.split(path)
        attr = self.lookup(path)
        if not key:
            return  # buckets and the root keep no metadata; accept quietly (rsync -a sets them)
        with self._table_lock:
            open_file = self._open.get(path)
        if open_file is not None:
            with open_file.lock:
                open_file.meta.update(changes)
                if "mtime" in changes:
                    open_file.mtime = float(changes["mtime"])
                if open_file.dirty or open_file.base is None or open_file.unlinked:
                    return  # stored with the coming upload (or, unlinked, nowhere)
        with self._namespace_lock:
            if attr.kind == DIR:
                kept, meta, etag = self._set_dir_meta(bucket, key, attr, changes)
            else:
                kept = self._as_stored(bucket, key, attr)
                meta = _copied_meta(kept, changes)
                etag = self.client.copy(bucket, key, key, meta, kept.content_type, stored=kept.headers)
            updated = Attr(attr.kind, attr.size, attr.mtime, etag=etag or attr.etag,
                           marker=attr.marker or attr.kind == DIR, target=attr.target, meta=meta)
            updated.content_type, updated.stored = kept.content_type, dict(kept.headers)
            apply_meta(updated, meta)
            updated.kind = attr.kind
            if open_file is not None:
                open_file.base = updated
            self._remember(path, updated)

    def _set_dir_meta(self, bucket: str, key: str, attr: Attr,
                      changes: dict[str, str]) -> tuple[ObjectStat, dict[str, str], str]:
        """chmod, chown or touch of a directory: its marker ``key/`` copied onto itself with ``changes``,
        keeping its bytes, metadata, Content-Type and stored headers (another S3 client may have
        written them), or, when it has none, a new empty marker. A directory known only from its
        parent's listing (``marker`` None: a common prefix says nothing of a marker) or from a lookup
        that found none (``marker`` False, perhaps written since) is asked first (a HEAD): taken for
        one without a marker, it got a new empty one, its stored mode, owner and mtime and any bytes
        gone. Returns what was kept, the new metadata and the new ETag."""
        prefix = key + "/"
        if attr.marker and attr.meta is not None and not attr.from_listing and attr.content_type is not None:
            kept = ObjectStat(prefix, 0, attr.etag, attr.mtime, dict(attr.meta), attr.content_type,
                              dict(attr.stored or {}))
        else:
            kept = self._head_if_there(bucket, prefix)
        meta = dict(kept.metadata or {}) if kept is not None else {}
        meta.setdefault("mode", f"{stat.S_IFDIR | (0o777 & ~self.options.umask):o}")
        meta.update(changes)
        if kept is None:
            etag = self.client.put(bucket, prefix, b"", 0, meta, "application/x-directory").etag
            return ObjectStat(prefix, 0, etag, time.time(), {}, "application/x-directory"), meta, etag
        kept = dataclasses.replace(kept, content_type=kept.content_type or "application/x-directory")
        etag = self.client.copy(bucket, prefix, prefix, meta, kept.content_type, stored=kept.headers)
        return kept, meta, etag

    def chmod(self, path: str, mode: int) -> None:
        attr = self.lookup(path)
        kind_bits = {DIR: stat.S_IFDIR, LINK: stat.S_IFLNK}.get(attr.kind, stat.S_IFREG)
        self.set_meta(path, {"mode": f"{kind_bits | (mode & 0o7777):o}"})

    def chown(self, path: str, uid: int, gid: int) -> None:
        changes = {}
        if uid != -1:
            changes["uid"] = str(uid)
        if gid != -1:
            changes["gid"] = str(gid)
        if changes:
            self.set_meta(path, changes)

    def utimens(self, path: str, mtime_ns: int | None) -> None:
        # The nanoseconds utimensat gave are stored as they are: through a float they came back as
        # another value (cp -p, then the source was "newer" than its copy).
        mtime = format_time(time.time()) if mtime_ns is None else format_time_ns(mtime_ns)
        if not abs(float(mtime)) < MTIME_LIMIT:
            # Stored, it would never be shown (apply_meta ignores it): stat kept the old time and
            # rsync sent the file again at every run. EOVERFLOW, as utimensat for a time its
            # filesystem cannot hold: touch says "Value too large for defined data type".
            raise err(errno.EOVERFLOW, f"{path}: mtimes are kept within ±{MTIME_LIMIT:.2g} s of 1970")
        self.set_meta(path, {"mtime": mtime})


def _copied_meta(kept: ObjectStat, changes: dict[str, str] | None = None) -> dict[str, str]:
    """The metadata of a copy that replaces ``kept``'s (with ``changes``), holding the mtime stat shows:
    one only its Last-Modified gave is stored, or the copy's own would show (the time of a chmod or mv)."""
    meta = {**kept.metadata, **(changes or {})}
    meta.setdefault("mtime", format_time(kept.last_modified))
    return meta
