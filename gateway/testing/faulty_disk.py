"""A disk that fails on demand, for tests: a FUSE passthrough of a directory that answers every call
with EIO while it is told to (as a dying disk or a hung NFS server answers).

    with FaultyDisk(tmp_path / "backing", tmp_path / "disk") as disk:
        ...                 # tmp_path / "disk" works as the backing directory does
        disk.fail()         # from now on every call under it is EIO
        disk.heal()         # and works again

A read-only remount (gateway.testing.disks) fails writes only, and the kernel offers no way to make
a real filesystem return EIO without a block device to break; this one runs wherever FUSE does. The
filesystem runs in its own process (``python -m gateway.testing.faulty_disk BACKING MOUNTPOINT``)
and fails while the file ``BACKING.fail`` exists (a signal would wait: the process's main thread is
inside libfuse). No kernel caching (direct_io, zero timeouts), so a call fails when the disk does.
Slow (Python, one thread per call): for a few hundred calls.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path


def _operations(root: str):
    import mfusepy

    switch = root + ".fail"

    def checked(method):
        def call(self, path, *args):
            if os.path.exists(switch):
                raise mfusepy.FuseOSError(errno.EIO)
            try:
                return method(self, root + path, *args)
            except OSError as exc:
                raise mfusepy.FuseOSError(exc.errno or errno.EIO) from None
        return call

    class Passthrough(mfusepy.Operations):
        """fusepy's loopback example, every call through ``checked``."""

        @checked
        def getattr(self, path, fh=None):
            st = os.lstat(path)
            return {key: getattr(st, key) for key in (
                "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime", "st_mtime", "st_ctime")}

        @checked
        def readdir(self, path, fh):
            return [".", "..", *os.listdir(path)]

        @checked
        def access(self, path, amode):
            if not os.access(path, amode):
                raise OSError(errno.EACCES, "access")
            return 0

        @checked
        def mkdir(self, path, mode):
            os.mkdir(path, mode)

        @checked
        def rmdir(self, path):
            os.rmdir(path)

        @checked
        def unlink(self, path):
            os.unlink(path)

        @checked
        def rename(self, old, new):
            os.replace(old, root + new)

        @checked
        def chmod(self, path, mode):
            os.chmod(path, mode)

        @checked
        def chown(self, path, uid, gid):
            os.chown(path, uid, gid)

        @checked
        def utimens(self, path, times=None):
            os.utime(path, times)  # (atime, mtime) in seconds, as mfusepy passes them; None: now

        @checked
        def truncate(self, path, length, fh=None):
            os.truncate(path, length)

        @checked
        def open(self, path, flags):
            return os.open(path, flags)

        @checked
        def create(self, path, mode, fi=None):
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

        @checked
        def read(self, path, size, offset, fh):
            return os.pread(fh, size, offset)

        @checked
        def write(self, path, data, offset, fh):
            return os.pwrite(fh, data, offset)

        @checked
        def fsync(self, path, datasync, fh):
            os.fdatasync(fh) if datasync else os.fsync(fh)

        def flush(self, path, fh):
            return 0

        def release(self, path, fh):
            os.close(fh)  # even while failing: the descriptor is ours to give back
            return 0

        @checked
        def statfs(self, path):
            st = os.statvfs(path)
            return {key: getattr(st, key) for key in (
                "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files", "f_flag",
                "f_frsize", "f_namemax")}

    return Passthrough()


def main(backing: str, mount_point: str) -> None:
    import mfusepy

    mfusepy.FUSE(_operations(os.path.realpath(backing)), mount_point, foreground=True, nothreads=False,
                 direct_io=True, attr_timeout=0, entry_timeout=0, negative_timeout=0)


class FaultyDisk:
    """The passthrough mounted at ``mount_point`` in a subprocess; fail() and heal() switch it."""

    def __init__(self, backing: Path, mount_point: Path):
        self.backing, self.path = Path(backing), Path(mount_point)
        self.switch = Path(os.path.realpath(self.backing) + ".fail")
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "FaultyDisk":
        from gateway.fuse.testing import fuse_available

        missing = fuse_available()
        if missing:
            raise AssertionError(f"a faulty disk needs FUSE: {missing}")
        self.backing.mkdir(parents=True, exist_ok=True)
        self.heal()
        self.path.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen([sys.executable, "-m", "gateway.testing.faulty_disk", str(self.backing),
                                         str(self.path)], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while not os.path.ismount(self.path):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise AssertionError(f"the faulty disk did not mount at {self.path}: "
                                     f"{self.process.stderr.read().decode(errors='replace')[-2000:]}")
            time.sleep(0.05)
        return self

    def fail(self) -> None:
        self.switch.touch()

    def heal(self) -> None:
        self.switch.unlink(missing_ok=True)

    def __exit__(self, *exc) -> None:
        from gateway.fuse.testing import unmount

        if self.process is not None:
            self.heal()
            unmount(self.path) or unmount(self.path, lazy=True)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process.stderr.close()


if __name__ == "__main__":
    main(*sys.argv[1:3])
