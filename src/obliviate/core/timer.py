"""Wall-clock timing of the steps of a run."""

from __future__ import annotations

import time


class Timer:
    def __init__(self, started: float | None = None):
        self.t0 = time.perf_counter() if started is None else started

    def __call__(self) -> float:
        return time.perf_counter() - self.t0
