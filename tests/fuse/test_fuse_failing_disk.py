"""A mount whose gateway's disk fails (gateway/testing/faulty_disk.py): a file created through the
mount whose upload failed is not shown afterwards (gateway/fuse/handles.py, release)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from gateway.fuse.testing import MountProcess
from gateway.testing.faulty_disk import FaultyDisk
from gateway.testing.server import GatewayProcess

WRITE = "import sys\nwith open(sys.argv[1], 'wb') as f:\n    f.write(b'x' * 300000)\n"


def test_a_new_file_whose_upload_failed_is_not_listed_as_an_empty_file_afterwards(tmp_path):
    """Before, close() said EIO, as it should, but the directory entry create() had cached stayed:
    `ls` showed the file, 0 bytes, for the listing TTL, while the gateway had no such object."""
    with FaultyDisk(tmp_path / "backing", tmp_path / "disk") as disk, \
            GatewayProcess(disk.path / "cv-storage") as gw:
        gw.client().create_bucket(Bucket="faces")
        gw.client().put_object(Bucket="faces", Key="kept.jpg", Body=b"k" * 1000)
        with MountProcess(gw, tmp_path / "mnt") as mnt:
            folder = mnt.path / "faces"
            assert os.listdir(folder) == ["kept.jpg"]  # listed, so the mount caches the directory
            disk.fail()
            write = subprocess.run([sys.executable, "-c", WRITE, str(folder / "new.jpg")], capture_output=True,
                                   text=True, timeout=60)
            assert write.returncode != 0 and "Input/output error" in write.stderr, write.stderr
            time.sleep(1)  # the kernel's RELEASE comes after close() returned: its upload fails too
            disk.heal()
            assert "Contents" not in gw.client().list_objects_v2(Bucket="faces", Prefix="new")
            assert sorted(os.listdir(folder)) == ["kept.jpg"], "a file that was never stored is listed"
            assert not (folder / "new.jpg").exists()
            assert (folder / "kept.jpg").read_bytes() == b"k" * 1000
