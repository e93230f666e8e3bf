"""clock.py: where the engine gets its time. The service passes the wall clock; replay passes virtual time."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]
"""Returns the current time in epoch seconds. Must never go backwards within one engine."""

wall_clock: Clock = time.time


class ManualClock:
    """A clock that moves only when told: tests and replay drive the engine with it."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock never goes backwards")
        self.now += seconds
