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


class AttackProgress:
    """Progress of a multi-attack run (AutoAttack): one line per attack and target batch.

    Why: the suite's attacks differ in cost by 10x and the number of examples each one gets is
    known only when the previous one ends, so a single bar cannot be honest. Each event line
    names the attack, what just happened (chunk, target batch, broken examples), the robust
    accuracy so far and, within an attack, an ETA from its finished chunks. On a terminal the
    line is redrawn in place; in a log, event lines are printed at most every ``every_s`` seconds,
    and an attack's start and end always.

    ``report`` has the signature of fairat.engine.autoattack_fast.Report.
    """

    def __init__(self, label: str, n: int, enabled: bool = True, stream: TextIO | None = None,
                 every_s: float = 30.0) -> None:
        self.label, self.n, self.enabled = label, n, enabled
        self.stream = stream or sys.stderr
        self.live = enabled and getattr(self.stream, "isatty", lambda: False)()
        self.every_s = every_s
        self.start = self.last = time.perf_counter()
        self.attack, self.attack_start, self.todo, self.done = "", self.start, 0, 0

    def __enter__(self) -> "AttackProgress":
        self._emit(f"{self.label} on {self.n} images: started", force=True)
        return self

    def report(self, attack: str, text: str, robust: int, total: int) -> None:
        """One event: ``text`` about ``attack``; ``robust`` of ``total`` examples still robust."""
        now = time.perf_counter()
        if attack != self.attack:
            self.attack, self.attack_start, self.done = attack, now, 0
        force = text.startswith("started") or text == "done"
        if text.startswith("started on "):
            self.todo = int(text.split()[2])
        elif "/" in text and text.endswith("attacked"):
            self.done = int(text.split("/")[0])
        line = (f"{self.label}: {attack} {text}; robust {robust}/{total} "
                f"({100 * robust / max(total, 1):.1f}%), {_clock(now - self.start)} elapsed")
        if 0 < self.done < self.todo and text.endswith("attacked"):
            rate = (now - self.attack_start) / self.done
            line += f", {attack} ETA {_clock(rate * (self.todo - self.done))}"
        self._emit(line, force)

    def _emit(self, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.live:
            self.stream.write("\r" + text + "\033[K" + ("\n" if force else ""))
            self.stream.flush()
        elif force or now - self.last >= self.every_s:
            self.stream.write(text + "\n")
            self.stream.flush()
            self.last = now

    def __exit__(self, *exc: object) -> None:
        elapsed = _clock(time.perf_counter() - self.start)
        self._emit(f"{self.label}: {'stopped' if exc[0] else 'done'}, {elapsed}", force=True)
