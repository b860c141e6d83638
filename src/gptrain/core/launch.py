"""What torchrun tells each process it starts, through the environment: how many processes the job
has, and which one this is. Read without torch, so the command line can ask without importing it."""

from __future__ import annotations

import os


def world_size() -> int:
    """The job's processes: torchrun's WORLD_SIZE, 1 without torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Whether this is rank 0 (or the only process): the one that logs, locks and saves."""
    return os.environ.get("RANK", "0") == "0"
