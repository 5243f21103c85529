"""gateway/testing/faulty_disk.py, the test tool: a passthrough that works as a disk does until told
to fail, then fails every call with EIO, and works again when healed."""

from __future__ import annotations

import errno
import os

import pytest

from gateway.testing.faulty_disk import FaultyDisk


def test_the_faulty_disk_passes_calls_through_fails_them_all_with_eio_on_demand_and_heals(tmp_path):
    with FaultyDisk(tmp_path / "backing", tmp_path / "disk") as disk:
        folder = disk.path / "a" / "b"
        folder.mkdir(parents=True)
        (disk.path / "tmp").write_bytes(b"hello")
        os.replace(disk.path / "tmp", folder / "file")
        os.utime(folder / "file", (1_000_000_000.5, 1_200_000_000.25))  # restore and migrate set times
        assert os.stat(folder / "file").st_mtime == 1_200_000_000.25
        assert (tmp_path / "backing" / "a" / "b" / "file").read_bytes() == b"hello"

        disk.fail()
        for call in (lambda: (folder / "file").read_bytes(), lambda: (disk.path / "new").write_bytes(b"x"),
                     lambda: os.listdir(folder), lambda: os.stat(folder / "file"),
                     lambda: os.unlink(folder / "file")):
            with pytest.raises(OSError) as failed:
                call()
            assert failed.value.errno == errno.EIO

        disk.heal()
        assert os.listdir(folder) == ["file"] and (folder / "file").read_bytes() == b"hello"
    assert not os.path.ismount(tmp_path / "disk")
