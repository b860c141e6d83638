"""The ``[finetune]`` section of a run's settings: what makes ``gptrain finetune instruct`` train on
instruction records instead of windows of text (see :mod:`gptrain.data.instructions`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from gptrain.core.errors import GptrainError
from gptrain.data.instructions import OVERLONG
from gptrain.data.templates import check_template
from gptrain.model.config import describe_unknown

BATCHINGS = ("sorted", "plain")


@dataclass
class InstructConfig:
    """Instruction fine-tuning; the defaults are the book's chapter 7 split with the prompt masked."""

    # alpaca or chat; None: chat for conversation records, else alpaca (saved resolved).
    template: str | None = None
    # Learn only the replies; off, every token as the book's chapter 7 does.
    mask_prompt: bool = True
    # sorted: batches of similar lengths (less padding); plain: the shuffled order as it comes.
    batching: str = "sorted"
    # A record longer than the context is cut at it (truncate) or left out (drop); the log counts them.
    overlong: str = "truncate"
    # The validation records: a file, or a share of --data (with a test share written to RUN/test.jsonl).
    val_data: str | None = None
    val_ratio: float = 0.05
    test_ratio: float = 0.10

    def __post_init__(self):
        if self.template is not None:
            check_template(self.template)
        if not isinstance(self.mask_prompt, bool):
            raise GptrainError(f"--mask-prompt must be true or false, not {self.mask_prompt!r}")
        if self.batching not in BATCHINGS:
            raise GptrainError(f"--batching must be one of {', '.join(BATCHINGS)}, not {self.batching!r}")
        if self.overlong not in OVERLONG:
            raise GptrainError(f"--overlong must be one of {', '.join(OVERLONG)}, not {self.overlong!r}")
        for name in ("val_ratio", "test_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and 0 <= value < 1):
                raise GptrainError(f"--{name.replace('_', '-')} must be in [0, 1), not {value!r}")
        if self.val_ratio + self.test_ratio >= 1:
            raise GptrainError(f"--val-ratio {self.val_ratio} and --test-ratio {self.test_ratio} leave no training "
                               "records: keep their sum below 1")
        if self.val_data is None and self.val_ratio == 0:
            raise GptrainError("--val-ratio 0 leaves no validation records: give --val-data FILE or a ratio above 0")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "InstructConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise GptrainError(f"[finetune]: unknown setting(s) {describe_unknown(unknown, known)[0]}")
        return cls(**values)


__all__ = ["BATCHINGS", "InstructConfig"]
