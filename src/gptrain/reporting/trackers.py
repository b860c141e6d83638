"""Experiment trackers that mirror the training log: Weights & Biases (``--logger wandb``) and MLflow
(``--logger mlflow``), each an optional extra.

A tracker gets what ``metrics.jsonl`` gets: every record's numbers, as ``EVENT/FIELD`` at the
record's step (as TensorBoard does), the run's config at the start, and the HTML report as an
artifact at the end. Only rank 0 opens one.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from gptrain.core.errors import GptrainError

MLFLOW_PARAMS_PER_CALL = 100  # MLflow's limit on params in one log_batch
MLFLOW_PARAM_CHARS = 6000  # and on a param value's length


@dataclass
class TrackerSettings:
    """Names and places for the trackers; None picks the library's environment variable, then a default."""

    wandb_project: str | None = None  # else $WANDB_PROJECT, else "gptrain"
    run_name: str | None = None  # else the run directory's name
    mlflow_uri: str | None = None  # else $MLFLOW_TRACKING_URI, else RUN/mlruns


def import_extra(module: str, logger: str, extra: str, package: str) -> ModuleType:
    """``module``, or one line saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise GptrainError(f"--logger {logger} needs the {package} package: pip install 'gptrain[{extra}]'") from None


def scalars(fields: dict[str, Any]) -> dict[str, float]:
    """A record's numbers (not its step, flags or lists): what the trackers plot."""
    return {key: value for key, value in fields.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class WandbTracker:
    """A Weights & Biases run in ``RUN/wandb``; ``WANDB_MODE=offline`` keeps it on this machine."""

    def __init__(self, out: Path, settings: TrackerSettings, config: dict[str, Any]):
        self.wandb = import_extra("wandb", "wandb", "wandb", "wandb")
        try:
            self.run = self.wandb.init(
                project=settings.wandb_project or os.environ.get("WANDB_PROJECT") or "gptrain",
                name=settings.run_name or out.resolve().name, dir=str(out), config=config,
                # The console stays gptrain's (its progress bar), and the run records what gptrain logs.
                settings=self.wandb.Settings(console="off", silent=True, x_disable_stats=True))
        except Exception as exc:  # wandb raises many kinds; each is a start that failed
            raise GptrainError(f"wandb could not start a run ({first_line(exc)}): log in with 'wandb login', "
                               "or set WANDB_MODE=offline to keep the run on this machine") from None

    def log(self, event: str, step: int, numbers: dict[str, float]) -> None:
        self.run.log({f"{event}/{key}": value for key, value in numbers.items()}, step=step)

    def finish(self, report: Path | None, failed: bool) -> None:
        if report is not None and report.exists():
            artifact = self.wandb.Artifact("report", type="report")
            artifact.add_file(str(report))
            self.run.log_artifact(artifact)
        self.run.finish(exit_code=1 if failed else 0)


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 0.001}}`` as ``{"train.lr": "0.001"}``: MLflow's params are flat strings."""
    params = {}
    for key, value in config.items():
        if isinstance(value, dict):
            params.update(flat_params(value, f"{prefix}{key}."))
        else:
            params[f"{prefix}{key}"] = json.dumps(value) if not isinstance(value, str) else value
    return {key: value[:MLFLOW_PARAM_CHARS] for key, value in params.items()}


def is_local_file_store(uri: str) -> bool:
    return uri.startswith("file:") or "://" not in uri


class MlflowTracker:
    """An MLflow run at any tracking URI; by default a file store in ``RUN/mlruns``, so nothing is
    written outside the run unless asked."""

    def __init__(self, out: Path, settings: TrackerSettings, config: dict[str, Any]):
        tracking = import_extra("mlflow.tracking", "mlflow", "mlflow", "mlflow (or mlflow-skinny)")
        entities = importlib.import_module("mlflow.entities")
        self.Metric, self.Param = entities.Metric, entities.Param
        uri = settings.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or (out / "mlruns").resolve().as_uri()
        if is_local_file_store(uri):
            # MLflow 3 refuses a file store unless this opt-out is set; a lone training run's
            # folder needs no database server. A user's own setting of it wins.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            self.client = tracking.MlflowClient(tracking_uri=uri)
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "gptrain"
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            self.run_id = self.client.create_run(experiment_id, run_name=settings.run_name or out.resolve().name
                                                 ).info.run_id
            params = [self.Param(key, value) for key, value in flat_params(config).items()]
            for start in range(0, len(params), MLFLOW_PARAMS_PER_CALL):
                self.client.log_batch(self.run_id, params=params[start:start + MLFLOW_PARAMS_PER_CALL])
            self.client.log_dict(self.run_id, config, "config.json")
        except Exception as exc:  # MlflowException, or the store's own (OSError, a refused connection ...)
            raise GptrainError(f"MLflow could not start a run at {uri} ({first_line(exc)}): check --mlflow-uri "
                               "or $MLFLOW_TRACKING_URI") from None

    def log(self, event: str, step: int, numbers: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[self.Metric(f"{event}/{key}", float(value), now, step)
                                                    for key, value in numbers.items()])

    def finish(self, report: Path | None, failed: bool) -> None:
        if report is not None and report.exists():
            self.client.log_artifact(self.run_id, str(report))
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


TRACKERS = {"wandb": WandbTracker, "mlflow": MlflowTracker}


def open_trackers(out: Path, loggers: tuple[str, ...], settings: TrackerSettings,
                  config: dict[str, Any]) -> list[WandbTracker | MlflowTracker]:
    return [TRACKERS[name](out, settings, config) for name in loggers if name in TRACKERS]
