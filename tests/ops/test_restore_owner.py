"""Files a tool run as root (restore, migrate) puts into a store that the gateway's own user owns are
that user's, and a store the gateway's user cannot read is a 503 that says so, not a 500 with a
traceback.

The runbook restores as root into /var/lib/cv-storage, which the unit's `User=cv-gateway` owns:
the files came back root:root 640/750, and every request on them was a 500. Real gateways, the
real CLI; the unreadable store is made real by a gateway run without CAP_DAC_OVERRIDE (setpriv).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from botocore.exceptions import ClientError

from gateway.testing.server import GatewayProcess

SERVICE_UID = SERVICE_GID = 65534  # nobody / nogroup: the gateway's own user in production


def gateway_cmd(*args) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run([sys.executable, "-m", "gateway", *map(str, args)], capture_output=True, text=True,
                          env=clean, timeout=180, cwd="/")


def owners(root) -> dict[str, tuple[int, int]]:
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.lstat(os.path.join(directory, name))
            found[os.path.relpath(os.path.join(directory, name), root)] = (st.st_uid, st.st_gid)
    return found


@pytest.fixture(autouse=True)
def _root():
    assert os.geteuid() == 0, "these tests give files to another user: run them as root (CI does)"


def test_a_restore_as_root_gives_the_files_to_the_stores_owner(tmp_path):
    data = tmp_path / "cv-storage"
    with GatewayProcess(data) as gw:
        s3 = gw.client()
        s3.create_bucket(Bucket="faces")
        for i in range(5):
            s3.put_object(Bucket="faces", Key=f"cam{i}/0001.jpg", Body=os.urandom(2000 + i))
    archive = tmp_path / "full.tar"
    assert gateway_cmd("backup", "-q", "--data-dir", data, archive).returncode == 0
    shutil.rmtree(data)
    data.mkdir()
    os.chown(data, SERVICE_UID, SERVICE_GID)  # the store the service user owns, emptied (a lost disk)
    result = gateway_cmd("restore", "--data-dir", data, archive)
    assert result.returncode == 0, result.stderr
    found = owners(data)
    assert any(path.endswith("0001.jpg%obj") for path in found), found
    wrong = {path: owner for path, owner in found.items() if owner != (SERVICE_UID, SERVICE_GID)}
    assert not wrong, wrong


class WithoutDacOverride(GatewayProcess):
    """Root, but bound by file modes as any other user."""

    def command(self):
        return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--", *super().command()]


def test_a_store_the_gateway_cannot_read_is_a_503_naming_the_fix(tmp_path):
    data = tmp_path / "cv-storage"
    with GatewayProcess(data) as gw:
        s3 = gw.client()
        for bucket in ("open", "locked"):
            s3.create_bucket(Bucket=bucket)
            s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    for directory, dirs, files in os.walk(data / "locked"):  # files another user owns, modes 700/600
        for name in dirs + files:
            os.chown(os.path.join(directory, name), SERVICE_UID, SERVICE_GID)
    os.chown(data / "locked", SERVICE_UID, SERVICE_GID)
    os.chmod(data / "locked", 0o700)

    with WithoutDacOverride(data) as gw:
        s3 = gw.client()
        for call in (lambda: s3.get_object(Bucket="locked", Key="k"),
                     lambda: s3.put_object(Bucket="locked", Key="new", Body=b"y")):
            with pytest.raises(ClientError) as info:
                call()
            error = info.value.response["Error"]
            assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503, error
            assert "refused this gateway's user access" in error["Message"] and "chown" in error["Message"], error
        assert s3.get_object(Bucket="open", Key="k")["Body"].read() == b"x"  # still up, the rest works
        log = gw.log()
    assert "Traceback" not in log, log[-3000:]


def _written_store(tmp_path):
    data = tmp_path / "cv-storage"
    with GatewayProcess(data) as gw:
        s3 = gw.client()
        s3.create_bucket(Bucket="faces")
        s3.create_bucket(Bucket="empty")
        for i in range(5):
            s3.put_object(Bucket="faces", Key=f"cam{i}/day/0001.jpg", Body=os.urandom(2000 + i))
    return data


def test_a_migration_as_root_gives_the_share_to_its_owner(tmp_path):
    """Migrated as root:root 644/755 onto a share the gateway's user owns, the gateways on the share
    could read the objects but not write a new key into a migrated directory, nor make a bucket's
    first key: the share's owner gets everything migrate makes, as a restore does."""
    data = _written_store(tmp_path)
    share = tmp_path / "share"
    share.mkdir()
    os.chown(share, SERVICE_UID, SERVICE_GID)
    result = gateway_cmd("migrate", "--quiet", "--to", share, "--data-dir", data)
    assert result.returncode == 0, result.stdout + result.stderr
    found = owners(share)
    assert any(path.endswith("0001.jpg%obj") for path in found) and "empty" in found, found
    wrong = {path: owner for path, owner in found.items() if owner != (SERVICE_UID, SERVICE_GID)}
    assert not wrong, wrong


def test_a_share_that_refuses_chown_still_gets_every_object(tmp_path):
    """NFS with root_squash or CIFS with uid= refuse a chown (EPERM): the share decides the owner, and
    the migration goes on (made real by running it without CAP_CHOWN)."""
    data = _written_store(tmp_path)
    share = tmp_path / "share"
    share.mkdir()
    os.chown(share, SERVICE_UID, SERVICE_GID)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    result = subprocess.run(["setpriv", "--bounding-set", "-chown", "--inh-caps", "-chown", "--",
                             sys.executable, "-m", "gateway", "migrate", "--quiet", "--to", str(share),
                             "--data-dir", str(data)], capture_output=True, text=True, env=clean, timeout=180, cwd="/")
    assert result.returncode == 0, result.stdout + result.stderr
    objects = [path for path in owners(share) if path.endswith("%obj")]
    assert len(objects) == 5, objects
    assert {owners(share)[path] for path in objects} == {(0, 0)}  # what the share made them


def test_a_directory_the_gateway_may_not_write_is_named_in_the_503(tmp_path):
    """The rename of a PUT's temp file into a directory the gateway's user may not write was reported
    with the temp file's path alone (fine), not the directory that refused it."""
    data = tmp_path / "cv-storage"
    with GatewayProcess(data) as gw:
        gw.client().create_bucket(Bucket="locked")
    os.chown(data / "locked", SERVICE_UID, SERVICE_GID)
    os.chmod(data / "locked", 0o555)
    with WithoutDacOverride(data) as gw:
        with pytest.raises(ClientError) as info:
            gw.client().put_object(Bucket="locked", Key="new.jpg", Body=b"y")
        error = info.value.response["Error"]
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503, error
        assert str(data / "locked" / "new.jpg") in error["Message"], error
