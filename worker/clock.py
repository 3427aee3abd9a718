"""The live worker's clock, injectable so that tests and the demo can let weeks pass in a
minute while the worker code stays the same."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int: ...


class WallClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class SimulatedClock:
    """Starts at ``start_ms`` and runs ``speed`` times faster than real time."""

    def __init__(self, start_ms: int, speed: float) -> None:
        self.start_ms = start_ms
        self.speed = speed
        self._origin = time.monotonic()

    def now_ms(self) -> int:
        return self.start_ms + int((time.monotonic() - self._origin) * 1000 * self.speed)
