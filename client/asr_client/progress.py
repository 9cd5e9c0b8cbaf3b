"""A one-line progress bar over the files of a CLI run, drawn on stderr (no dependency for it).

Drawn by default only where a person watches (stderr is a terminal): in a pipe
or a log, carriage-return redraws are noise. Forced on (``--progress``) where
stderr is not a terminal, it writes one plain line per finished file instead,
which logs (and tests) can read.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 24


class Progress:
    def __init__(self, total: int, enabled: bool | None = None, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.total = total
        self.done = 0
        self.tty = self.stream.isatty()
        self.enabled = self.tty if enabled is None else enabled
        self.started = time.monotonic()
        self._shown = ""  # the bar now on screen ("" when none is)

    def _line(self, name: str) -> str:
        filled = WIDTH * self.done // max(1, self.total)
        elapsed = time.monotonic() - self.started
        return f"[{'#' * filled}{'.' * (WIDTH - filled)}] {self.done}/{self.total} {elapsed:.1f}s {name}"

    def _draw(self, line: str) -> None:
        # \x1b[K clears what a longer previous line left behind.
        self.stream.write("\r" + line + "\x1b[K")
        self._shown = line
        self.stream.flush()

    def start(self, name: str) -> None:
        """``name`` is being worked on."""
        if self.enabled and self.tty:
            self._draw(self._line(name))

    def finish(self, name: str) -> None:
        """``name`` is done, well or not."""
        self.done += 1
        if not self.enabled:
            return
        if not self.tty:
            self.stream.write(self._line(name) + "\n")
            self.stream.flush()
            return
        self._draw(self._line(name))
        if self.done == self.total:
            self.stream.write("\n")
            self._shown = ""
            self.stream.flush()

    def write(self, text: str, stream: TextIO | None = None) -> None:
        """``text`` (a result on stdout, an error on stderr) printed above the bar, which is then redrawn.

        Without this, on one terminal a result would start on the bar's line.
        """
        shown = self._shown
        if shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
        out = stream or self.stream
        out.write(text)
        out.flush()
        if shown:
            self._draw(shown)
