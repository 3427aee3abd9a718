"""A small stderr progress bar for long runs (no dependency earns its place for this)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Redraws at most every ``interval`` s, and only once the work has taken ``delay`` s."""

    def __init__(
        self,
        total: int | None,
        label: str,
        *,
        stream: TextIO = sys.stderr,
        delay: float = 1.0,
        interval: float = 0.25,
        unit: str = "lines",
    ) -> None:
        self.total, self.label, self.stream, self.unit = total, label, stream, unit
        self.delay, self.interval = delay, interval
        self.start = time.monotonic()
        self._next = self.start + delay
        self._shown = False

    def update(self, done: int, items: int) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval
        self._shown = True
        rate = items / max(now - self.start, 1e-9)
        if self.total:
            share = min(done / self.total, 1.0)
            bar = "#" * int(share * 30)
            text = f"\r{self.label} [{bar:<30}] {share:6.1%}  {items:,} {self.unit}  {rate:,.0f}/s"
        else:
            text = f"\r{self.label} {items:,} {self.unit}  {rate:,.0f}/s"
        self.stream.write(text)
        self.stream.flush()

    def close(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
