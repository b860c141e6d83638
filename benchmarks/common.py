"""Shared by the benchmarks: where the lecture's corpus is."""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent


def find_verdict() -> Path:
    """the-verdict.txt from $GPTRAIN_DATA_DIR or ../shared/data beside the checkout."""
    for folder in [*os.environ.get("GPTRAIN_DATA_DIR", "").split(os.pathsep), HERE.parent.parent / "shared" / "data"]:
        if folder and (Path(folder) / "the-verdict.txt").is_file():
            return Path(folder) / "the-verdict.txt"
    raise SystemExit("the-verdict.txt not found: set GPTRAIN_DATA_DIR to the folder that holds it")
