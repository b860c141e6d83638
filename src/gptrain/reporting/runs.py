"""A run directory read: its ``metrics.jsonl`` records sorted by kind, its ``config.json``, and
the final figures that the report's summary table shows.

Records of kinds other than ``train``, ``eval``, ``sample``, ``task`` and ``plan`` (warnings,
early stopping, ...) are kept as notes, and any key a record lacks is skipped, so logs from older
or newer versions still read.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptrain.core.errors import GptrainError
from gptrain.model.config import GPTConfig
from gptrain.model.counts import parameter_counts

METRICS_FILE = "metrics.jsonl"


@dataclass
class RunLog:
    """One run directory, read."""

    path: Path
    name: str
    config: dict[str, Any]
    train: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[dict[str, Any]] = field(default_factory=list)  # benchmark scores (gptrain.evaluation.tasks)
    plans: list[dict[str, Any]] = field(default_factory=list)  # what each start or resume set out to do
    classification: list[dict[str, Any]] = field(default_factory=list)  # a classifier's accuracy per split
    notes: list[dict[str, Any]] = field(default_factory=list)  # every other kind of record, in order


def finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def read_run(path: str | Path) -> RunLog:
    """Parse a run directory's ``metrics.jsonl`` and ``config.json``; unreadable lines become notes."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise GptrainError(f"{path} is not a directory: give a run directory written by gptrain train (its --out)")
    metrics = path / METRICS_FILE
    if not metrics.is_file():
        raise GptrainError(f"{path} holds no {METRICS_FILE}: give a run directory written by gptrain train (its --out)")
    run = RunLog(path, path.resolve().name, {})
    try:
        run.config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        run.notes.append({"event": "report", "text": "config.json is missing: the settings are unknown"})
    except (OSError, ValueError) as exc:
        run.notes.append({"event": "report", "text": f"config.json cannot be read: {exc}"})
    lines = metrics.read_text(encoding="utf-8", errors="replace").splitlines()
    by_kind = {"train": run.train, "eval": run.evals, "sample": run.samples, "plan": run.plans, "task": run.tasks,
               "classification": run.classification}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            # A run killed mid-write leaves a partial last line; say so rather than refuse the page.
            run.notes.append({"event": "report", "text": f"{METRICS_FILE} line {number} is not a JSON record: skipped"})
            continue
        by_kind.get(record.get("event"), run.notes).append(record)
    return run


def series(records: list[dict[str, Any]], x_key: str, y_key: str) -> tuple[list[float], list[float]]:
    points = [(finite_number(r.get(x_key)), finite_number(r.get(y_key))) for r in records]
    points = [(x, y) for x, y in points if x is not None and y is not None]
    return [x for x, _ in points], [y for _, y in points]


def gaps(run: RunLog) -> tuple[list[float], list[float]]:
    points = [(finite_number(r.get("step")), finite_number(r.get("val_loss")), finite_number(r.get("train_loss"))) for r in run.evals]
    points = [(s, v - t) for s, v, t in points if None not in (s, v, t)]
    return [s for s, _ in points], [g for _, g in points]


def summarize(run: RunLog) -> dict[str, Any]:
    """The final figures of a run; a figure the log does not hold is None."""
    records = run.train + run.evals + run.samples + run.notes
    steps = [s for r in records if (s := finite_number(r.get("step"))) is not None]
    evals = [r for r in run.evals if finite_number(r.get("val_loss")) is not None]
    best = min(evals, key=lambda r: r["val_loss"], default=None)
    last = evals[-1] if evals else {}
    rates = [x for r in run.train if (x := finite_number(r.get("tokens_per_s"))) is not None]
    early = next((r for r in reversed(run.notes) if r.get("event") == "early_stop"), None)
    last_val, last_train = finite_number(last.get("val_loss")), finite_number(last.get("train_loss"))
    initial = next((r for r in run.evals if r.get("initial")), {})  # a transfer run's "before" figures
    train_config = run.config.get("train") if isinstance(run.config.get("train"), dict) else {}
    if early is not None:
        status = f"stopped early at step {early.get('step', '?')}"
    elif (run.path / "final").is_dir():
        status = "finished"
    else:
        status = "incomplete: no final/ checkpoint (still running, or stopped before the end)"
    return {
        "status": status,
        "steps": int(max(steps)) + 1 if steps else None,
        "epochs": max((e for r in run.evals + run.samples if (e := finite_number(r.get("epoch"))) is not None), default=None),
        "tokens_seen": max((int(t) for r in records if (t := finite_number(r.get("tokens_seen"))) is not None), default=None),
        "wall_time_s": max((t for r in records for key in ("elapsed_s", "wall_time_s")
                            if (t := finite_number(r.get(key))) is not None), default=None),
        "last_train_loss": last_train,
        "last_val_loss": last_val,
        "last_val_perplexity": _exp(last_val),
        "best_val_loss": best["val_loss"] if best else None,
        "best_val_perplexity": _exp(best["val_loss"]) if best else None,
        "best_step": best.get("step") if best else None,
        "last_gap": last_val - last_train if None not in (last_val, last_train) else None,
        "median_tokens_per_s": statistics.median(rates) if rates else None,
        "parameters": _parameters(run.config.get("model")),
        "init": train_config.get("init"),
        "init_sha256": train_config.get("init_sha256"),
        "lora_rank": train_config.get("lora_rank"),
        "initial_train_loss": finite_number(initial.get("train_loss")),
        "initial_val_loss": finite_number(initial.get("val_loss")),
        "peak_memory_mb": next((r["peak_memory_mb"] for r in reversed(run.notes)
                                if r.get("event") == "end" and isinstance(r.get("peak_memory_mb"), list)), None),
        **_economics(run, statistics.median(rates) if rates else None),
    }


def _economics(run: RunLog, tokens_per_s: float | None) -> dict[str, float | None]:
    """Achieved FLOP/s (training steps only), MFU where the peak is known, the cost where a price was
    given, and where the wall time went."""
    plan = run.plans[-1] if run.plans else {}
    per_token = finite_number(plan.get("flops_per_token"))
    mfus = [x for r in run.train if (x := finite_number(r.get("mfu"))) is not None]
    costs = [c for r in run.notes if r.get("event") == "end" and (c := finite_number(r.get("cost"))) is not None]
    end = next((r for r in reversed(run.notes) if r.get("event") == "end"), {})
    split = end.get("time_split_s")
    return {
        "achieved_flops_per_s": tokens_per_s * per_token if None not in (tokens_per_s, per_token) else None,
        "median_mfu": statistics.median(mfus) if mfus else None,
        "cost": sum(costs) if costs else None,  # a resumed run is billed for each of its sessions
        # The last session's: where its wall time went, and its steps' utilisation as a whole.
        "time_split_s": split if isinstance(split, dict) else None,
        "before_train_s": finite_number(end.get("before_train_s")),
        "steps_mfu": finite_number(end.get("mfu")),
        "peak_source": end.get("peak_source"),
    }


def _exp(loss: float | None) -> float | None:
    return None if loss is None else math.exp(min(loss, 700.0))


def _parameters(model_config: Any) -> int | None:
    if not isinstance(model_config, dict):
        return None
    try:
        return parameter_counts(GPTConfig.from_dict(model_config)).total
    except (GptrainError, TypeError):
        return None
