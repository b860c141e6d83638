"""A run's clock and bill: the time left from the steps measured so far, and what it costs."""

from __future__ import annotations

import time


class RunClock:
    """The time left in a run, from its steps measured so far; the first step (allocations, kernel
    selection, compilation) is a warm-up and is left out. Evaluations and samples are in it, as
    they are in the wall time."""

    def __init__(self, total_steps: int):
        self.total_steps = total_steps
        self.first: tuple[float, int] | None = None

    def remaining(self, step: int) -> float | None:
        now = time.perf_counter()
        if self.first is None:
            self.first = (now, step)
        started, first_step = self.first
        if step == first_step:
            return None
        return (now - started) / (step - first_step) * max(0, self.total_steps - step)


def run_cost(seconds: float, price_per_hour: float | None, devices: int) -> float | None:
    return None if price_per_hour is None else seconds / 3600 * price_per_hour * devices


