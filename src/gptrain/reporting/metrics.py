"""The training log: ``metrics.jsonl`` (the source of truth) and its csv and TensorBoard mirrors."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from gptrain.core.errors import GptrainError
from gptrain.core.files import atomic_path, write_text_atomic

CSV_COLUMNS = ("event", "step", "epoch", "tokens_seen", "loss", "train_loss", "val_loss", "lr", "grad_norm",
               "tokens_per_s", "mfu", "elapsed_s", "text")


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` (the source of truth, flushed at once),
    and mirrors the numbers to ``metrics.csv`` and TensorBoard when asked. Only rank 0 writes."""

    def __init__(self, out: Path, loggers: tuple[str, ...] = (), enabled: bool = True):
        self._jsonl = self._csv = self._tensorboard = None
        if not enabled:
            return
        self._jsonl = open(out / "metrics.jsonl", "a", encoding="utf-8")
        if "csv" in loggers:
            path = out / "metrics.csv"
            new = not path.exists() or path.stat().st_size == 0
            self._csv_file = open(path, "a", encoding="utf-8", newline="")
            self._csv = csv.DictWriter(self._csv_file, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            if new:
                self._csv.writeheader()
        if "tensorboard" in loggers:
            self._tensorboard = open_tensorboard(out / "tensorboard")

    def write(self, event: str, **fields: Any) -> None:
        if self._jsonl is None:
            return
        self._jsonl.write(json.dumps({"event": event, **fields}) + "\n")
        self._jsonl.flush()
        if self._csv is not None:
            self._csv.writerow({"event": event, **fields})
            self._csv_file.flush()
        if self._tensorboard is not None:
            step = fields.get("step", 0)
            for key, value in fields.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tensorboard.add_scalar(f"{event}/{key}", value, step)
            if "text" in fields:
                self._tensorboard.add_text(event, fields["text"], step)

    def close(self) -> None:
        for handle in (self._jsonl, getattr(self, "_csv_file", None), self._tensorboard):
            if handle is not None:
                handle.close()


def open_tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise GptrainError("--logger tensorboard needs the tensorboard package: pip install 'gptrain[tensorboard]'") from None
    return SummaryWriter(str(folder))


def truncate_metrics(out: Path, step: int) -> None:
    """Drop records written after the checkpoint we resume from (they will be written again)."""
    jsonl, table = out / "metrics.jsonl", out / "metrics.csv"
    if jsonl.exists():
        kept = [line for line in jsonl.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", -1) < step]
        write_text_atomic(jsonl, "".join(line + "\n" for line in kept))
    if table.exists():
        with open(table, encoding="utf-8", newline="") as f:
            rows = [row for row in csv.DictReader(f) if int(row["step"] or -1) < step]
        with atomic_path(table) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)


STARTUP_EVENTS = ("plan", "resume")  # what a run logs before its first step


def logged_training(out: Path) -> bool:
    """Whether ``out/metrics.jsonl`` records any training: a start that failed logged at most its plan
    (and a transfer run's initial evaluation)."""
    path = out / "metrics.jsonl"
    if not path.exists():
        return False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                return True  # a damaged log is still someone's record: never treat it as disposable
            if not isinstance(record, dict) or (record.get("event") not in STARTUP_EVENTS
                                                 and not record.get("initial")):
                return True
    return False
