"""The mounts of this process's mount namespace, from /proc/self/mountinfo.

Used where a path's filesystem changes what is safe or fast: the FUSE mount raises the
read-ahead of its own device (fuse/readahead.py), and the local backend turns its cache of small
objects off on a network filesystem, whose ``stat()`` may answer from a client cache
(plugins/local.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import NamedTuple

MOUNTINFO = "/proc/self/mountinfo"

# Filesystems whose metadata another machine can change behind this one's back: a stat() on them
# may answer from the client's attribute cache (NFS: up to acregmax, 60 s by default).
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "gpfs", "beegfs", "afs",
    "ocfs2", "gfs2", "virtiofs",
})


class Mount(NamedTuple):
    mountpoint: str
    device: str  # "major:minor"
    fstype: str  # "ext4", "nfs4", "fuse.smbnetfs", ...

    @property
    def network(self) -> bool:
        """A network or cluster filesystem, or a FUSE one (which may be anything, sshfs or smbnetfs)."""
        return self.fstype in NETWORK_FILESYSTEMS or self.fstype.startswith("fuse")


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts(mountinfo: str = MOUNTINFO) -> Iterator[Mount]:
    """Every mount, in the order they were mounted (nothing when mountinfo cannot be read)."""
    try:
        with open(mountinfo) as f:
            lines = f.readlines()
    except OSError:
        return
    for line in lines:
        fields = line.split()
        # id parent major:minor root mountpoint options [optional fields...] - fstype source super-options
        if len(fields) < 7 or "-" not in fields[6:]:
            continue
        separator = fields.index("-", 6)
        if separator + 1 >= len(fields):
            continue
        yield Mount(_unescape(fields[4]), fields[2], fields[separator + 1])


def mount_of(path: str, mountinfo: str = MOUNTINFO) -> Mount | None:
    """The mount that holds ``path``: the deepest mount point at or above it (the last one
    mounted there when several are stacked), or None when mountinfo cannot be read."""
    path = os.path.realpath(path)
    found = None
    for mount in mounts(mountinfo):
        point = mount.mountpoint
        inside = path == point or path.startswith(point if point.endswith("/") else point + "/")
        if inside and (found is None or len(point) >= len(found.mountpoint)):
            found = mount
    return found
