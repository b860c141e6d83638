"""Throughput, elapsed time and ETA for a run's evaluation lines when no progress bar shows them:
under nohup, Slurm or CI the output goes to a file and tqdm draws no bar, so the book's
"Ep 1 (Step 000005): Train loss ..., Val loss ..." would be all a log says about speed."""

from __future__ import annotations

import time

from gptrain.core.formatting import duration
from gptrain.training.clock import RunClock


class Pace:
    """``pace(step, tokens_seen)`` -> " | 2,345 tokens/s, 1.5 min elapsed, ETA 12.0 min".

    Tokens/s is over the time since the previous line (evaluations and samples included, as in
    the wall time); the ETA extrapolates the steps done since this process began training.
    """

    def __init__(self, total_steps: int, step: int, tokens_seen: int, started: float):
        self.clock = RunClock(total_steps)
        self.clock.remaining(step)  # measure from here: a resumed run's earlier steps took their own time
        self.started = started
        self.last = (time.perf_counter(), tokens_seen)

    def __call__(self, step: int, tokens_seen: int) -> str:
        now = time.perf_counter()
        then, tokens_then = self.last
        self.last = (now, tokens_seen)
        rate = (tokens_seen - tokens_then) / max(now - then, 1e-9)
        remaining = self.clock.remaining(step)
        eta = "" if remaining is None else f", ETA {duration(remaining)}"
        return f" | {rate:,.0f} tokens/s, {duration(now - self.started)} elapsed{eta}"
