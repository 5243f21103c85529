"""The mfusepy Operations class: a thin translator from FUSE calls to GatewayFS.

Extended attributes are not implemented on purpose: libfuse then answers
ENOSYS and the kernel stops asking, where ``ls -l`` would otherwise ask for
ACLs and SELinux labels of every entry.

Errors: an OSError with an errno (ENOENT, ENOTEMPTY, EACCES, EIO from the
client, ...) is returned as that errno; anything else is a bug, logged with
its traceback and reported as EIO.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import threading
from contextlib import suppress

import mfusepy as fuse
from mfusepy import FuseOSError, Operations, overrides

from .fs import STATS_PATH, GatewayFS

log = logging.getLogger("gateway.fuse")
# libfuse >= 3.11 passes fi.noflush to the kernel as FOPEN_NOFLUSH: no FLUSH request on close().
HAS_NOFLUSH = any(field[0] == "noflush" for field in fuse.fuse_file_info._fields_)
RENAME_NOREPLACE = 1  # renameat2 flags (linux/fs.h); RENAME_EXCHANGE is 2, RENAME_WHITEOUT 4
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2  # utimensat's markers in tv_nsec (linux/stat.h)


def _translate(method):
    @functools.wraps(method)
    def wrapper(self, *args):
        try:
            return method(self, *args)
        except FuseOSError:
            raise
        except OSError as exc:
            if not exc.errno:
                log.error("%s%r failed: %s", method.__name__, args, exc)
                raise FuseOSError(errno.EIO) from exc
            if exc.errno == errno.EIO:
                log.error("%s%r: %s", method.__name__, args, exc)
            raise FuseOSError(exc.errno) from exc
        except Exception as exc:
            log.exception("%s%r failed unexpectedly", method.__name__, args)
            raise FuseOSError(errno.EIO) from exc

    return wrapper


def _caller() -> tuple[int, int]:
    uid, gid, _pid = fuse.fuse_get_context()
    return uid, gid


class GatewayOperations(Operations):
    use_ns = True  # utimens gets nanoseconds
    # libfuse 2: calls on an open file libfuse has no path for (its directory was removed while it was
    # open: see namespace._hide) get a None path and the handle, instead of failing with ENOENT
    # (libfuse 3 does this by itself).
    flag_nullpath_ok = True

    def __init__(self, fs: GatewayFS):
        self.fs = fs
        self.flush_requests = 0  # FLUSH requests the kernel sent (none for read-only handles: open)
        fs.binding_stats = lambda: {"python_thread_states": _thread_states_kept,
                                    "flush_requests": self.flush_requests,
                                    "libfuse": f"{fuse.fuse_version_major}.{fuse.fuse_version_minor}"}

    @overrides(Operations)
    @_translate
    def getattr(self, path, fh=None):
        if path is None:  # an fstat() of an open file libfuse has no path for: its handle (raw_fi: the fi) says
            return self.fs.to_stat(self.fs.handle_attr(fh.fh if fh is not None else None))
        return self.fs.to_stat(self.fs.lookup(path))

    @overrides(Operations)
    @_translate
    def readdir(self, path, fh):
        yield "."
        yield ".."
        for name, attr in self.fs.readdir(path):
            yield name, {"st_mode": self.fs.to_stat(attr)["st_mode"]}, 0

    @overrides(Operations)
    @_translate
    def readlink(self, path):
        return self.fs.readlink(path)

    @overrides(Operations)
    @_translate
    def mkdir(self, path, mode):
        self.fs.mkdir(path, mode, _caller())
        return 0

    @overrides(Operations)
    @_translate
    def mknod(self, path, mode, dev):
        self.fs.mknod(path, mode, _caller())
        return 0

    @overrides(Operations)
    @_translate
    def rmdir(self, path):
        self.fs.rmdir(path)
        return 0

    @overrides(Operations)
    @_translate
    def unlink(self, path):
        self.fs.unlink(path)
        return 0

    @overrides(Operations)
    @_translate
    def symlink(self, target, source):
        # mfusepy passes (the new link's path, what it points to)
        self.fs.symlink(target, source, _caller())
        return 0

    @overrides(Operations)
    @_translate
    def rename(self, old, new):
        self.fs.rename(old, new)
        return 0

    @overrides(Operations)
    @_translate
    def chmod(self, path, mode):
        if path is not None:  # None: an open file whose name is gone; stored nowhere
            self.fs.chmod(path, mode)
        return 0

    @overrides(Operations)
    @_translate
    def chown(self, path, uid, gid):
        if path is not None:  # None: an open file whose name is gone; stored nowhere
            self.fs.chown(path, uid, gid)
        return 0

    @overrides(Operations)
    @_translate
    def utimens(self, path, times=None):
        if path is not None:  # None: an open file whose name is gone; stored nowhere
            self.fs.utimens(path, times[1] if times else None)
        return 0

    @overrides(Operations)
    @_translate
    def truncate(self, path, length, fi=None):
        self.fs.truncate(path, length, fi.fh if fi is not None else None)
        return 0

    # With raw_fi the binding passes the fuse_file_info: the file handle is fi.fh, and open/create
    # may set per-file flags (direct_io for the stats file, whose size never changes but content does).

    @overrides(Operations)
    @_translate
    def open(self, path, fi):
        fi.fh = self.fs.open(path, fi.flags)
        if path == STATS_PATH or self.fs.direct_io(fi.fh):
            fi.direct_io = 1
        elif self.fs.keeps_cache(fi.fh):  # the same version as the pages cached at the last open
            fi.keep_cache = 1
        if HAS_NOFLUSH and not self.fs.flushes(fi.fh):
            # A read-only handle has nothing to upload: its close() costs no FUSE round trip
            # (one of five for a small file read; docs/fuse.md "Small files").
            fi.noflush = 1
        return 0

    @overrides(Operations)
    @_translate
    def create(self, path, mode, fi=None):
        fi.fh = self.fs.create(path, mode, fi.flags, _caller())
        return 0

    @overrides(Operations)
    @_translate
    def read(self, path, size, offset, fi):
        return self.fs.read(fi.fh, size, offset)

    @_translate
    def read_into(self, path, buffer, offset, fi):
        """``read`` into libfuse's reply buffer (called by GatewayFUSE): no bytes object, no extra copy."""
        return self.fs.read_into(fi.fh, offset, buffer)

    @overrides(Operations)
    @_translate
    def write(self, path, data, offset, fi):
        return self.fs.write(fi.fh, data, offset)

    @overrides(Operations)
    @_translate
    def flush(self, path, fi):
        self.flush_requests += 1  # a statistic: a count lost to a thread switch does not matter
        self.fs.flush(fi.fh)
        return 0

    @overrides(Operations)
    @_translate
    def fsync(self, path, datasync, fi):
        self.fs.fsync(fi.fh)
        return 0

    @overrides(Operations)
    @_translate
    def release(self, path, fi):
        self.fs.release(fi.fh)
        return 0

    @overrides(Operations)
    @_translate
    def statfs(self, path):
        return self.fs.statfs()

    @overrides(Operations)
    def init(self, path):
        self.fs.mounted = True  # the kernel mount is up: a failure from here on is not a failed mount

    def destroy(self, path):
        self.fs.close()


_thread_state_kept = threading.local()
_thread_states_kept = 0  # in the stats file: about the number of worker threads, not of callbacks


def _keep_thread_state() -> None:
    """Keep this libfuse worker thread's Python thread state from one callback to the next.

    libfuse's worker threads are not Python threads: ctypes gives each callback a thread state
    with PyGILState_Ensure and, when the callback returns, PyGILState_Release destroys it again
    (its counter falls to zero). A new thread state costs its allocation and a 16 KiB frame stack
    mapped with mmap and unmapped with munmap, and each munmap in this multithreaded process makes
    the kernel interrupt the other cores to flush their TLBs: 4-5 times per small file read
    (lookup, open, read, flush, release), about a sixth of the daemon's CPU per file
    (docs/fuse.md, "Small files"). One more Ensure, never released, keeps the counter above zero.
    libfuse ends a worker thread only when more than max_idle_threads are idle, which the mount
    sets to max_threads (mount.py): never. Were one ended, its state (a few KiB) would stay allocated
    until the mount exits.
    """
    if not getattr(_thread_state_kept, "done", False):
        ctypes.pythonapi.PyGILState_Ensure()
        _thread_state_kept.done = True  # lives in the thread state: lost (and counted again) if it is not kept
        global _thread_states_kept
        _thread_states_kept += 1  # under the GIL


class GatewayFUSE(fuse.FUSE):
    """mfusepy's FUSE, with a read callback that lends the operations libfuse's own reply buffer.

    mfusepy's ``read`` takes a bytes object from ``Operations.read`` and copies it into libfuse's
    buffer. Here ``Operations.read_into`` receives the buffer as a memoryview and fills it: the
    stream's bytes go from the socket straight into it. The view is released when the callback
    returns; libfuse frees the buffer after sending the reply. (mfusepy registers the method of
    this class named after each libfuse callback, so overriding ``read`` is enough.)
    """

    def _wrapper(self, func, *args, **kwargs):
        _keep_thread_state()
        return super()._wrapper(func, *args, **kwargs)

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        """renameat2(): mfusepy drops the flags and renames plainly, so RENAME_EXCHANGE would have
        replaced the target and lost its data. Only RENAME_NOREPLACE is honoured (the kernel already
        refused a target it knows; a target another client made since is checked here)."""
        if flags & ~RENAME_NOREPLACE:  # RENAME_EXCHANGE, RENAME_WHITEOUT: not supported
            return -errno.EINVAL
        if flags & RENAME_NOREPLACE:
            try:
                self.operations.getattr(new.decode(self.encoding, self.errors))
            except FuseOSError as exc:
                if exc.errno != errno.ENOENT:
                    return -exc.errno
            else:
                return -errno.EEXIST
        return super().rename_fuse_3(old, new, 0)

    def truncate_fuse_3(self, path, length, fip) -> int:
        """ftruncate(): libfuse 3 passes the handle, which mfusepy drops (its libfuse 2 ``ftruncate``
        keeps it). Without it an ftruncate looked like truncate(2) by name, which stores the new size
        at once: the object showed cut while the program was still writing (and each one uploaded the
        whole file)."""
        if not fip:
            return super().truncate_fuse_3(path, length, fip)
        return self.operations.truncate(None if path is None else path.decode(self.encoding, self.errors),
                                        length, fip.contents)

    def utimens_fuse_2(self, path, buf) -> int:
        """utimensat(): libfuse passes "now" (``touch`` of an existing file) and "leave as is" (the
        mtime of ``touch -a``) as UTIME_NOW/UTIME_OMIT in tv_nsec, and mfusepy turned them into times
        about 1.07 s after 1970. Only the mtime is kept, so an omitted mtime changes nothing."""
        if buf:
            nsec = buf.contents.modtime.tv_nsec
            if nsec == UTIME_OMIT:
                return 0
            if nsec == UTIME_NOW:
                buf = None  # mfusepy passes times=None: now
        return super().utimens_fuse_2(path, buf)

    def read(self, path, buf, size, offset, fip):
        if not size:
            return 0
        view = memoryview((ctypes.c_ubyte * size).from_address(ctypes.addressof(buf.contents))).cast("B")
        try:
            return self.operations.read_into(path, view, offset, fip.contents)
        finally:
            with suppress(BufferError):  # still exported (by a traceback): only the view outlives the call
                view.release()
