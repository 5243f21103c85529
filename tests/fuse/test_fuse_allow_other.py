"""--allow-other on a real mount: another user can list and read with it, and is refused without it.

The mount runs as root here, so /etc/fuse.conf needs no ``user_allow_other``
(that line only lets non-root users pass allow_other to fusermount). The other
user is ``nobody``, reached with setpriv. Mount points live under pytest's
tmp_path, whose parents are private to root (0700): the commands run as nobody
start in the mount point (chdir happens as root, before setpriv drops the
privileges) and use relative paths, so only the FUSE mount decides.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

NOBODY = 65534
BODY = b"seen by another user\n"


def _as_nobody(args: list[str], cwd) -> subprocess.CompletedProcess:
    if os.geteuid() != 0:
        pytest.fail("the --allow-other tests switch to user nobody and need root", pytrace=False)
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is missing: run `make test-deps`"
    return subprocess.run([setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *args],
                          cwd=cwd, capture_output=True, timeout=60, check=False,
                          env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})


@pytest.fixture
def shared_file(fuse_gw, bucket):
    fuse_gw.client().put_object(Bucket=bucket, Key="dir/hello.txt", Body=BODY)
    return f"{bucket}/dir"


def test_allow_other_lets_another_user_list_and_read(mount_factory, shared_file):
    mount = mount_factory(["--allow-other"])
    assert _as_nobody(["id", "-u"], mount.path).stdout.decode().split() == [str(NOBODY)]
    listed = _as_nobody(["ls", shared_file], mount.path)
    assert listed.returncode == 0, listed.stderr.decode()
    assert listed.stdout.decode().split() == ["hello.txt"]
    read = _as_nobody(["cat", f"{shared_file}/hello.txt"], mount.path)
    assert read.returncode == 0, read.stderr.decode()
    assert read.stdout == BODY
    # The kernel still checks modes (default_permissions): root's 0755 directory is not nobody's to write.
    write = _as_nobody(["touch", f"{shared_file}/new.txt"], mount.path)
    assert write.returncode != 0 and b"Permission denied" in write.stderr, write.stderr.decode()
    assert not (mount.path / shared_file / "new.txt").exists()


def test_without_allow_other_another_user_is_refused(mount_factory, shared_file):
    mount = mount_factory()
    # The mount works for its owner ...
    assert (mount.path / shared_file / "hello.txt").read_bytes() == BODY
    # ... and refuses everyone else with EACCES, from the mount's root on.
    for args in (["ls", "."], ["ls", shared_file], ["cat", f"{shared_file}/hello.txt"]):
        result = _as_nobody(args, mount.path)
        assert result.returncode != 0, f"{args} as nobody succeeded: {result.stdout!r}"
        assert b"Permission denied" in result.stderr, f"{args}: {result.stderr.decode()}"
