"""The progress lines of backup, restore and migrate (gateway/ops/progress.py), with an injected clock."""

from __future__ import annotations

import io
import itertools

from gateway.ops.progress import Progress
from gateway.ops.tree import count_files


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def ticking(step: float):
    """A clock that moves ``step`` seconds on every reading."""
    counter = itertools.count()
    return lambda: next(counter) * step


def test_a_log_gets_a_whole_line_every_ten_seconds_and_the_totals_at_the_end():
    out = io.StringIO()
    progress = Progress("backup (full)", total_files=4, total_bytes=4096, stream=out, clock=ticking(6.0))
    for _ in range(4):
        progress.add(1, 1024)
    progress.done("4 objects")
    lines = out.getvalue().splitlines()
    assert lines[:-1] and all(line.startswith("backup (full): ") for line in lines)
    assert len(lines[:-1]) == 2, lines  # 6 s apart: every other add crosses 10 s
    assert lines[-1].startswith("backup (full): 4 / 4 files, 4.0 KiB / 4.0 KiB, 100%")
    assert "took 0:" in lines[-1] and lines[-1].endswith(". 4 objects")
    assert "\r" not in out.getvalue()


def test_a_terminal_line_is_redrawn_in_place_and_quiet_prints_only_the_end():
    tty = Tty()
    progress = Progress("restore", total_files=2, total_bytes=2, stream=tty, clock=ticking(1.0))
    progress.add(1, 1)
    progress.add(1, 1)
    progress.done()
    assert tty.getvalue().count("\r\033[K") == 3 and tty.getvalue().endswith("\n")
    quiet = io.StringIO()
    progress = Progress("restore", total_files=2, stream=quiet, quiet=True, clock=ticking(60.0))
    progress.add(1, 1)
    progress.done()
    assert len(quiet.getvalue().splitlines()) == 1 and "took" in quiet.getvalue()


def test_counting_a_large_store_says_so_before_the_first_progress_line(tmp_path):
    """The walk that finds the totals takes minutes on a large NFS store: it reports as it goes."""
    for i in range(30):
        (tmp_path / "bucket").mkdir(exist_ok=True)
        (tmp_path / "bucket" / f"{i}%obj").write_bytes(b"x" * 100)
    out = io.StringIO()
    files, nbytes = count_files([str(tmp_path)], "migrate", out, clock=ticking(1.0))
    assert (files, nbytes) == (30, 3000)
    lines = out.getvalue().splitlines()
    assert lines and all(line.startswith("migrate: counting: ") for line in lines), lines
    silent = io.StringIO()
    assert count_files([str(tmp_path)], "migrate", silent, quiet=True, clock=ticking(1.0)) == (30, 3000)
    assert silent.getvalue() == ""
