"""The training log: ``metrics.jsonl`` (the source of truth) and its csv, TensorBoard, Weights & Biases
and MLflow mirrors."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from gptrain.reporting.trackers import TrackerSettings, import_extra, open_trackers, scalars

CSV_COLUMNS = ("event", "step", "epoch", "tokens_seen", "loss", "train_loss", "val_loss", "lr", "grad_norm",
               "tokens_per_s", "mfu", "elapsed_s", "text")


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` (the source of truth, flushed at once),
    and mirrors the numbers to ``metrics.csv``, TensorBoard and the trackers (``wandb``, ``mlflow``,
    which also get ``config`` now and the report at :meth:`finish`) when asked. Only rank 0 writes."""

    def __init__(self, out: Path, loggers: tuple[str, ...] = (), enabled: bool = True,
                 trackers: TrackerSettings | None = None, config: dict[str, Any] | None = None):
        self._jsonl = self._csv = self._tensorboard = None
        self._trackers = []
        if not enabled:
            return
        self._trackers = open_trackers(out, loggers, trackers or TrackerSettings(), config or {})
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
        step = fields.get("step", 0)
        numbers = scalars(fields)
        if self._tensorboard is not None:
            for key, value in numbers.items():
                self._tensorboard.add_scalar(f"{event}/{key}", value, step)
            if "text" in fields:
                self._tensorboard.add_text(event, fields["text"], step)
        for tracker in self._trackers:
            if numbers:
                tracker.log(event, step, numbers)

    def close(self) -> None:
        """Close the files; the trackers stay open for :meth:`finish` (the report is made from the closed log)."""
        for handle in (self._jsonl, getattr(self, "_csv_file", None), self._tensorboard):
            if handle is not None:
                handle.close()

    def finish(self, report: Path | None = None, failed: bool = False) -> None:
        """End the trackers' runs, with ``report`` as an artifact; a failed run is marked so."""
        trackers, self._trackers = self._trackers, []
        for tracker in trackers:
            tracker.finish(report, failed)


def open_tensorboard(folder: Path):
    return import_extra("torch.utils.tensorboard", "tensorboard", "tensorboard", "tensorboard").SummaryWriter(str(folder))


# What happened to the run rather than what it computed: kept when a resume cuts the log back.
HISTORY_EVENTS = ("failed", "restart")


def truncate_metrics(out: Path, step: int) -> None:
    """Drop records written after the checkpoint we resume from (they will be written again)."""
    jsonl, table = out / "metrics.jsonl", out / "metrics.csv"
    if jsonl.exists():
        records = [(line, json.loads(line)) for line in jsonl.read_text(encoding="utf-8").splitlines() if line.strip()]
        kept = [line for line, record in records
                if record.get("step", -1) < step or record.get("event") in HISTORY_EVENTS]
        tmp = jsonl.with_name(f".{jsonl.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        tmp.replace(jsonl)
    if table.exists():
        with open(table, encoding="utf-8", newline="") as f:
            rows = [row for row in csv.DictReader(f) if int(row["step"] or -1) < step]
        tmp = table.with_name(f".{table.name}.tmp")
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(table)


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
