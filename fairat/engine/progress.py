"""Visible long work: a live line with an ETA on a terminal, a heartbeat line in logs.

Why both: on a terminal a person wants to see the job move; in a CI log or a Kubeflow pod a
carriage-return progress bar is noise, but a job silent for minutes looks hung, so a plain line is
printed at most every ``every_s`` seconds and at the end.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """``with Progress("evaluate pgd+cw", total=10) as p: ... p.advance()``."""

    def __init__(self, label: str, total: int, unit: str = "blocks", enabled: bool = True,
                 stream: TextIO | None = None, every_s: float = 30.0) -> None:
        self.label, self.total, self.unit, self.enabled = label, max(total, 0), unit, enabled
        self.stream = stream or sys.stderr
        self.live = enabled and getattr(self.stream, "isatty", lambda: False)()
        self.every_s, self.done = every_s, 0
        self.start = self.last = time.perf_counter()

    def __enter__(self) -> "Progress":
        if self.enabled and not self.live:
            self._line(f"{self.label}: started, {self.total} {self.unit}")
        return self

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        text = f"{self.label}: {self.done}/{self.total} {self.unit}, {_clock(elapsed)} elapsed"
        if 0 < self.done < self.total:
            text += f", ETA {_clock(elapsed / self.done * (self.total - self.done))}"
        return text

    def advance(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.live:
            self.stream.write("\r" + self.line() + "\033[K")
            self.stream.flush()
        elif now - self.last >= self.every_s:
            self._line(self.line())
            self.last = now

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def __exit__(self, *exc: object) -> None:
        if not self.enabled:
            return
        if self.live:
            self.stream.write("\r" + self.line() + "\033[K\n")
            self.stream.flush()
        else:
            self._line(self.line() + (" (stopped)" if exc[0] else ", done"))
