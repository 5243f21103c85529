"""The progress line of a long operation: files and bytes done out of the total, rate, time left.

On a terminal the line is redrawn in place every half second; otherwise (a log
file, ``| tee``, systemd) a full line is written every 10 seconds, so a log
shows that the operation is alive without filling up.

The totals are counted by a walk before the work starts; the gateway may write files meanwhile,
so the work can find more than was counted. The total then grows to what was found: the line
never says "378 / 359 files, 101%".
"""

from __future__ import annotations

import sys
import time


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def human_seconds(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    def __init__(self, label: str, total_files: int = 0, total_bytes: int = 0, stream=None,
                 quiet: bool = False, clock=time.monotonic, unit: str = "files", count_bytes: bool = True):
        self.label = label
        self.unit = unit  # what the count counts ("files"; "keys" for a walk that moves no bytes)
        self.count_bytes = count_bytes
        self.total_files = total_files
        self.total_bytes = total_bytes
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.clock = clock
        self.files = self.bytes = 0
        self.started = clock()
        self._tty = getattr(self.stream, "isatty", lambda: False)()
        self._every = 0.5 if self._tty else 10.0
        self._last = self.started

    def add(self, files: int = 1, nbytes: int = 0) -> None:
        self.files += files
        self.bytes += nbytes
        if self.total_files and self.files > self.total_files:
            self.total_files = self.files  # written after the count (see the module's docstring)
        if self.total_bytes and self.bytes > self.total_bytes:
            self.total_bytes = self.bytes
        now = self.clock()
        if now - self._last >= self._every:
            self._last = now
            self._write(self.line(now), final=False)

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or self.clock()) - self.started, 1e-6)
        parts = [f"{self.label}: {self.files:,}" + (f" / {self.total_files:,}" if self.total_files else "")
                 + f" {self.unit}"]
        if not self.count_bytes:
            return f"{parts[0]}, {self.files / elapsed:,.0f} {self.unit}/s"
        parts.append(human_bytes(self.bytes) + (f" / {human_bytes(self.total_bytes)}" if self.total_bytes else ""))
        if self.total_bytes:
            parts.append(f"{100 * self.bytes / self.total_bytes:.0f}%")
        rate = self.bytes / elapsed
        parts.append(f"{human_bytes(rate)}/s")
        if self.total_bytes and rate > 0 and self.bytes < self.total_bytes:
            parts.append(f"{human_seconds((self.total_bytes - self.bytes) / rate)} left")
        return ", ".join(parts)

    def done(self, summary: str = "") -> None:
        """End the progress line, with the totals and how long it took."""
        took = human_seconds(self.clock() - self.started)
        self._write(f"{self.line()}; took {took}" + (f". {summary}" if summary else ""), final=True)

    def interrupt(self) -> None:
        """End a line being redrawn on a terminal, so that an error printed next has its own line."""
        if self._tty and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()

    def note(self, message: str) -> None:
        """A line of its own (a warning, a skipped file) that the progress line does not overwrite."""
        if self._tty and not self.quiet:
            self.stream.write("\r\033[K")
        self.stream.write(message + "\n")
        self.stream.flush()

    def _write(self, text: str, final: bool) -> None:
        if self.quiet and not final:
            return
        if self._tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
