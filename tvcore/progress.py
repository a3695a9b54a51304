"""A minimal progress bar on stderr, so stdout stays clean for pipes."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO


class Progress:
    """Context manager that draws `label [####....] done/total` on stderr.

    Drawn only when `enabled` (default: stderr is a terminal); throttled to
    ~10 redraws per second. `update(n)` advances by n.
    """

    def __init__(self, total: int, label: str, enabled: bool | None = None,
                 stream: TextIO | None = None) -> None:
        self.total = max(int(total), 0)
        self.label = label
        self.done = 0
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._start = time.perf_counter()
        self._last_draw = 0.0
        self._drawn = 0  # characters of the last line drawn

    def __enter__(self) -> Progress:
        self._draw(force=True)
        return self

    def update(self, n: int = 1) -> None:
        self.done += n
        self._draw()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._draw(force=True)
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        frac = self.done / self.total if self.total else 1.0
        width = 30
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        elapsed = now - self._start
        eta = elapsed / frac - elapsed if 0 < frac < 1 else 0.0
        line = (f"{self.label} [{bar}] {self.done}/{self.total} "
                f"{elapsed:6.1f}s elapsed, {eta:6.1f}s left")
        # padded to the last line's length: a shorter label leaves no old characters behind
        self.stream.write(f"\r{line.ljust(self._drawn)}")
        self._drawn = len(line)
        self.stream.flush()
