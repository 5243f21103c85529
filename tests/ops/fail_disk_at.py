"""Run ``python -m gateway ...`` with a faulty disk failed just before one function of the tool runs:
a disk failure at an exact step of a command, without sleeping and guessing when it gets there.

    python fail_disk_at.py SWITCH MODULE:QUALNAME [gateway arguments ...]

SWITCH is the faulty disk's switch file (gateway.testing.faulty_disk.FaultyDisk.switch): it is
created when MODULE's QUALNAME (``Class.method`` or ``function``) is first called. Said on stderr,
so that a test can tell the failure happened.
"""

from __future__ import annotations

import importlib
import runpy
import sys
from pathlib import Path


def fail_before(switch: Path, target: str) -> None:
    module_name, _, qualname = target.partition(":")
    owner = importlib.import_module(module_name)
    *path, name = qualname.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)

    def failing_first(*args, **kwargs):
        if not switch.exists():
            switch.touch()
            sys.stderr.write(f"[test: the disk fails before {qualname}]\n")
        return original(*args, **kwargs)

    setattr(owner, name, failing_first)  # a function or a plain method (not a staticmethod)


if __name__ == "__main__":
    switch, target, *arguments = sys.argv[1:]
    fail_before(Path(switch), target)
    sys.argv = ["gateway", *arguments]
    runpy.run_module("gateway", run_name="__main__", alter_sys=True)
