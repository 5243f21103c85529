"""Run ``python -m gateway ...`` with a faulty disk failed just before one function of the tool runs:
a disk failure at an exact step of a command, without sleeping and guessing when it gets there.

    python fail_disk_at.py SWITCH MODULE:QUALNAME [--interrupt-before MODULE:QUALNAME] [gateway arguments ...]

SWITCH is the faulty disk's switch file (gateway.testing.faulty_disk.FaultyDisk.switch): it is
created when MODULE's QUALNAME (``Class.method`` or ``function``) is first called. Said on stderr,
so that a test can tell the failure happened. ``--interrupt-before``: Ctrl-C (KeyboardInterrupt, as
Python raises it on SIGINT) when that function is first called, to test what an interrupted
command says when its clean-up meets the failed disk.
"""

from __future__ import annotations

import importlib
import runpy
import sys
from pathlib import Path


def before_first_call(target: str, action) -> None:
    """Run ``action(qualname)`` when MODULE:QUALNAME is first called, then the function itself."""
    module_name, _, qualname = target.partition(":")
    owner = importlib.import_module(module_name)
    *path, name = qualname.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    done = []

    def acting_first(*args, **kwargs):
        if not done:
            done.append(True)
            action(qualname)
        return original(*args, **kwargs)

    setattr(owner, name, acting_first)  # a function or a plain method (not a staticmethod)


def fail_before(switch: Path, target: str) -> None:
    def fail(qualname: str) -> None:
        if not switch.exists():
            switch.touch()
            sys.stderr.write(f"[test: the disk fails before {qualname}]\n")

    before_first_call(target, fail)


def interrupt_before(target: str) -> None:
    def interrupt(qualname: str) -> None:
        sys.stderr.write(f"[test: Ctrl-C before {qualname}]\n")
        raise KeyboardInterrupt

    before_first_call(target, interrupt)


if __name__ == "__main__":
    switch, target, *arguments = sys.argv[1:]
    fail_before(Path(switch), target)
    if arguments[:1] == ["--interrupt-before"]:
        interrupt_before(arguments[1])
        arguments = arguments[2:]
    sys.argv = ["gateway", *arguments]
    runpy.run_module("gateway", run_name="__main__", alter_sys=True)
