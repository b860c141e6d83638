"""What ``--resume`` may change and what it may not.

A resumed run must build the same model and see the same token stream, or its optimizer state,
data position and schedule mean nothing: every setting that shapes the model or the data is
compared with the checkpoint's, and each one that differs is named. Everything else (the budget,
evaluation and save frequency, loggers, the device ...) may change; the changes are returned
so that the run records them in its metrics.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

# Train settings that decide which tokens are seen, in what windows and order, by which model (and
# the optimizer, whose saved state only its own kind can load).
MUST_MATCH = ("data", "preset", "context_length", "stride", "train_ratio", "seed", "pad_vocab", "optimizer",
              "finetune")
# Model fields that may change: dropout shapes nothing.
MODEL_MAY_CHANGE = ("drop_rate",)
HASH_CHUNK = 1 << 24


def data_fingerprint(*token_arrays: np.ndarray) -> str:
    """sha256 of the token arrays (train, then val): the content the run trains and validates on."""
    digest = hashlib.sha256()
    for tokens in token_arrays:
        digest.update(len(tokens).to_bytes(8, "little"))
        for start in range(0, len(tokens), HASH_CHUNK):  # a memmapped shard is read a slice at a time
            digest.update(np.ascontiguousarray(tokens[start:start + HASH_CHUNK]).tobytes())
    return digest.hexdigest()


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def resume_differences(saved_train: dict[str, Any], saved_model: dict[str, Any], saved_data: str | None,
                       train: dict[str, Any], model: dict[str, Any], data: str | None
                       ) -> tuple[list[str], dict[str, list[Any]]]:
    """(refused, allowed): a phrase for each setting that may not change, and the ``{name: [was, now]}``
    of those that may."""
    refused = [f"{_flag(name)} {train[name]!r} (trained with {saved_train[name]!r})"
               for name in MUST_MATCH if name in saved_train and saved_train[name] != train.get(name)]
    refused += [f"model {name} {model[name]!r} (trained with {saved_model[name]!r})"
                for name in saved_model if name not in MODEL_MAY_CHANGE and name in model
                and saved_model[name] != model[name] and name not in MUST_MATCH]  # named once, as the flag
    if saved_data and data and saved_data != data:
        refused.append(f"the content of --data {train.get('data')} (sha256 {data[:12]}..., trained on "
                       f"{saved_data[:12]}...)")
    allowed = {name: [saved_train[name], value] for name, value in train.items()
               if name not in MUST_MATCH and name in saved_train and saved_train[name] != _jsonable(value)}
    return refused, allowed


def _jsonable(value: Any) -> Any:
    """Settings come back from config.json with tuples as lists."""
    return list(value) if isinstance(value, tuple) else value
