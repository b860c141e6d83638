"""A run's clock and bill: the time left from the steps measured so far, what it costs, and where
its wall time went."""

from __future__ import annotations

import contextlib
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




SPLIT_PARTS = ("startup", "steps", "evaluation", "sampling", "checkpoints")


class TimeSplit:
    """Where a run's wall time goes: seconds per part (``SPLIT_PARTS``), and ``other`` for the rest
    (logging, progress, early-stopping checks, the loss plot)."""

    def __init__(self):
        self.seconds = dict.fromkeys(SPLIT_PARTS, 0.0)

    @contextlib.contextmanager
    def part(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] += seconds

    def of(self, wall: float) -> dict[str, float]:
        """The parts of ``wall`` seconds, rounded to milliseconds; ``other`` is what no part took."""
        parts = {name: round(seconds, 3) for name, seconds in self.seconds.items()}
        return {**parts, "other": round(max(0.0, wall - sum(self.seconds.values())), 3)}

