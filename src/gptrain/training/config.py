"""Typed configuration: the model's shape, the named presets, and the training run.

The book passes plain dicts such as ``GPT_CONFIG_124M``; every function here that takes a
model config accepts such a dict, a preset name or a :class:`GPTConfig` alike.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from gptrain.core.errors import GptrainError
from gptrain.core.tomlfile import toml_table
from gptrain.data.tokenizer import VOCAB_SIZE
from gptrain.evaluation.tasks import parse_task_spec
from gptrain.model.config import GPTConfig, describe_unknown, get_preset
from gptrain.model.lora import expand_targets

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LOGGERS = ("jsonl", "csv", "tensorboard", "wandb", "mlflow")
OPTIMIZERS = ("adamw", "muon")  # see gptrain.training.optim
SCHEDULES = ("constant", "cosine", "wsd")
SHAPE_FLAGS = ("n_layers", "n_heads", "emb_dim", "vocab_size")  # with context_length: what gptrain train shapes
RECIPE_FILE = "train.toml"  # in every run directory
UNSET = "unset"  # a config file's list of settings that are none
DEFAULT_EPOCHS = 10  # the lecture's budget, used when no --epochs, --max-steps or --max-tokens is given


@dataclass
class TrainConfig:
    """Everything ``gptrain train`` needs; the defaults are the lecture's run."""

    data: str = "the-verdict"
    text_field: str = "text"  # the field of each .jsonl record that holds the text, as in gptrain prepare
    out: str = "runs/verdict"
    preset: str | None = "124M"  # the named starting point of the shape; None: GPTConfig's defaults (GPT-2 124M's)
    context_length: int | None = 256
    dropout: float | None = None
    # Any shape: each one given replaces the preset's (a run saves them all, resolved).
    n_layers: int | None = None
    n_heads: int | None = None
    emb_dim: int | None = None
    vocab_size: int | None = None  # at least the tokenizer's vocabulary
    batch_size: int = 2
    # The budget: the first of these to run out ends training. With none given, 10 epochs.
    epochs: int | None = None
    max_steps: int | None = None
    max_tokens: int | None = None
    grad_accum: int = 1
    # Alternatively the tokens per optimizer step, across processes; grad_accum is derived from it.
    global_batch_tokens: int | None = None
    lr: float = 4e-4
    min_lr: float = 0.0
    warmup_steps: int = 0
    cosine: bool = False  # the same as schedule="cosine"
    # Steps over which the cosine decays; by default the whole budget. Set it explicitly to
    # stop a run early and resume it later on the same schedule.
    lr_decay_steps: int | None = None
    weight_decay: float = 0.1
    # adamw, or muon: Muon for the blocks' matrices at muon_lr (default: lr), AdamW for the rest (see gptrain.training.optim).
    optimizer: str = "adamw"
    muon_lr: float | None = None
    # constant, cosine or wsd (warmup-stable-decay: a linear decay over the last decay_fraction of the steps).
    schedule: str = "constant"
    decay_fraction: float = 0.2
    grad_clip: float | None = 1.0
    # auto: bf16 autocast on CUDA and on CPUs with native bf16 instructions, fp32 elsewhere.
    precision: str = "auto"
    compile: bool = False
    # Pad the output head to a multiple of 64 rows (same outputs and checkpoints); None: on CUDA only.
    pad_vocab: bool | None = None
    eval_freq: int = 5  # 0: no evaluation (and no best/)
    eval_iter: int = 5
    early_stop_patience: int | None = None
    log_every: int = 1
    logger: tuple[str, ...] = ("jsonl",)
    # The trackers' names and place (see gptrain.reporting.trackers): None picks the library's
    # environment variable, then "gptrain", the run directory's name and RUN/mlruns.
    wandb_project: str | None = None
    run_name: str | None = None
    mlflow_uri: str | None = None
    save_every: int | None = None
    keep_last: int | None = None
    seed: int = 123
    device: str = "auto"
    start_context: str = "Every effort moves you"
    sample_tokens: int = 50
    train_ratio: float = 0.9
    stride: int | None = None
    # Benchmark tasks scored during training, as NAME:FILE (see gptrain.evaluation.tasks); every N steps
    # (None: at every evaluation) on the first eval_task_limit examples (None: all).
    eval_task: tuple[str, ...] = ()
    eval_task_every: int | None = None
    eval_task_limit: int | None = None
    # Transfer learning: start from SOURCE's weights (a GPT-2 size, a Hugging Face folder or file, a
    # book state dict, a gptrain checkpoint or run); the architecture is SOURCE's, so preset and
    # context_length may be None (SOURCE's). init_sha256 is filled in when the run starts and
    # checked on resume.
    init: str | None = None
    init_sha256: str | None = None
    # LoRA on top of init's frozen weights: rank, alpha (default 2 x rank), dropout, target layers.
    lora_rank: int | None = None
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q", "k", "v", "o", "fc", "proj")
    # Shard weights, gradients and optimizer states across the torchrun processes (FSDP2).
    fsdp: bool = False
    # Recompute each transformer block's activations in backward instead of storing them.
    activation_checkpointing: bool = False
    # The price of one device-hour: the run's report and last line give its cost.
    price_per_hour: float | None = None

    def __post_init__(self):
        _check_types(self)
        for name in ("batch_size", "grad_accum", "eval_iter", "log_every"):
            _check_positive_int(name, getattr(self, name))
        for name in ("context_length", *SHAPE_FLAGS, "stride", "epochs", "max_steps", "max_tokens", "lr_decay_steps",
                     "save_every", "keep_last", "global_batch_tokens", "early_stop_patience"):
            if getattr(self, name) is not None:
                _check_positive_int(name, getattr(self, name))
        for name in ("warmup_steps", "sample_tokens", "eval_freq"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise GptrainError(f"{_flag(name)} must be a non-negative integer, not {value!r}")
        if self.sample_tokens and not self.start_context:
            raise GptrainError("--start-context is empty: give the sample after each epoch some text to continue, "
                               "or --sample-tokens 0 to skip the samples")
        if self.eval_freq == 0 and self.early_stop_patience is not None:
            raise GptrainError("--early-stop-patience counts evaluations, and --eval-freq 0 turns them off: "
                               "give --eval-freq N or drop --early-stop-patience")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise GptrainError(f"--lr must be a positive number, not {self.lr!r}")
        if not 0 <= self.min_lr <= self.lr:
            raise GptrainError(f"--min-lr must be between 0 and --lr ({self.lr}), not {self.min_lr!r}")
        if self.weight_decay < 0:
            raise GptrainError(f"--weight-decay must not be negative, not {self.weight_decay!r}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise GptrainError(f"--grad-clip must be positive (or 'none' to disable), not {self.grad_clip!r}")
        if not 0.0 < self.train_ratio < 1.0:
            raise GptrainError(f"--train-ratio must be between 0 and 1, not {self.train_ratio!r}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise GptrainError(f"--dropout must be in [0, 1), not {self.dropout!r}")
        if self.global_batch_tokens is not None and self.grad_accum != 1:
            raise GptrainError("give --grad-accum or --global-batch-tokens, not both")
        self._check_optimizer_and_schedule()
        self.logger = tuple(self.logger)  # a TOML or JSON list arrives as a list
        unknown_loggers = sorted(set(self.logger) - set(LOGGERS))
        if unknown_loggers:
            raise GptrainError(f"unknown --logger {', '.join(unknown_loggers)}: choose from {', '.join(LOGGERS)}")
        if self.precision not in PRECISIONS:
            raise GptrainError(f"--precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        self._check_shape()
        self.check_eval_tasks()
        self._check_transfer_settings()
        for name in ("fsdp", "activation_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise GptrainError(f"{_flag(name)} must be true or false, not {getattr(self, name)!r}")
        if self.fsdp and self.lora_rank is not None:
            # LoRA already trains a sliver of the parameters; its adapters are not sharded.
            raise GptrainError("--fsdp cannot be combined with --lora-rank: LoRA needs no sharding, drop --fsdp")
        if self.fsdp and self.optimizer == "muon":
            # Muon orthogonalises whole matrices; FSDP2 gives each process a slice of each one.
            raise GptrainError("--fsdp cannot be combined with --optimizer muon yet: use --optimizer adamw")

    def _check_shape(self) -> None:
        """The shape is checked here, before any data or weights are read."""
        base = get_preset(self.preset) if self.preset is not None else GPTConfig()
        if self.init is not None:
            return  # the architecture is SOURCE's: gptrain.training.transfer checks the flags against it
        emb_dim, n_heads = self.emb_dim or base.emb_dim, self.n_heads or base.n_heads
        if emb_dim % n_heads:
            raise GptrainError(f"--emb-dim {emb_dim} is not divisible by --n-heads {n_heads}: each head takes "
                               "emb-dim / n-heads dimensions, choose a width that is a multiple of the head count")
        if self.vocab_size is not None and self.vocab_size < VOCAB_SIZE:
            raise GptrainError(f"--vocab-size {self.vocab_size} is smaller than the GPT-2 tokenizer's {VOCAB_SIZE:,} "
                               f"tokens: give at least {VOCAB_SIZE} (more only adds unused rows)")

    def check_eval_tasks(self) -> None:

        self.eval_task = (self.eval_task,) if isinstance(self.eval_task, str) else tuple(self.eval_task)
        for spec in self.eval_task:
            parse_task_spec(spec)
        for name in ("eval_task_every", "eval_task_limit"):
            if getattr(self, name) is not None:
                _check_positive_int(name, getattr(self, name))
        if self.eval_task and self.eval_freq == 0 and self.eval_task_every is None:
            raise GptrainError("--eval-task is scored at each evaluation, and --eval-freq 0 turns them off: "
                               "give --eval-task-every N")

    def _check_transfer_settings(self) -> None:

        if self.init is not None and not str(self.init).strip():
            raise GptrainError("--init is empty: give a GPT-2 size, a Hugging Face folder or file, a state dict, "
                               "or a gptrain checkpoint or run directory")
        if self.lora_rank is not None:
            _check_positive_int("lora_rank", self.lora_rank)
            if self.init is None:
                raise GptrainError("--lora-rank adapts pretrained weights: give them with --init SOURCE")
        if self.lora_alpha is not None and not (self.lora_alpha > 0 and math.isfinite(self.lora_alpha)):
            raise GptrainError(f"--lora-alpha must be a positive number, not {self.lora_alpha!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise GptrainError(f"--lora-dropout must be in [0, 1), not {self.lora_dropout!r}")
        self.lora_targets = expand_targets([self.lora_targets] if isinstance(self.lora_targets, str)
                                           else self.lora_targets)
        if self.lora_rank is not None and self.lora_alpha is None:
            self.lora_alpha = 2.0 * self.lora_rank  # saved resolved, like precision
        if self.price_per_hour is not None and not (self.price_per_hour >= 0 and math.isfinite(self.price_per_hour)):
            raise GptrainError(f"--price-per-hour must be a non-negative number, not {self.price_per_hour!r}")

    def _check_optimizer_and_schedule(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise GptrainError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, not {self.optimizer!r}")
        if self.muon_lr is not None and not (self.muon_lr > 0 and math.isfinite(self.muon_lr)):
            raise GptrainError(f"--muon-lr must be a positive number, not {self.muon_lr!r}")
        if self.muon_lr is not None and self.optimizer != "muon":
            raise GptrainError("--muon-lr is the learning rate of --optimizer muon: add --optimizer muon or drop it")
        if self.schedule not in SCHEDULES:
            raise GptrainError(f"--schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        if self.cosine and self.schedule not in ("constant", "cosine"):
            raise GptrainError(f"--cosine means --schedule cosine, which contradicts --schedule {self.schedule}: drop one")
        if self.cosine:
            self.schedule = "cosine"
        if not 0.0 < self.decay_fraction <= 1.0:
            raise GptrainError(f"--decay-fraction must be in (0, 1], not {self.decay_fraction!r}")

    def model_config(self) -> GPTConfig:
        """The preset (or GPTConfig's defaults) with this run's shape and dropout applied."""
        cfg = get_preset(self.preset) if self.preset is not None else GPTConfig()
        cfg = cfg.replace(**{name: getattr(self, name) for name in ("context_length", *SHAPE_FLAGS)
                             if getattr(self, name) is not None})
        return cfg if self.dropout is None else cfg.replace(drop_rate=self.dropout)

    def resolved_shape(self, cfg: GPTConfig) -> "TrainConfig":
        """These settings with the shape of the model built (``cfg``) written out in full."""
        return dataclasses.replace(self, context_length=cfg.context_length, dropout=cfg.drop_rate,
                                   **{name: getattr(cfg, name) for name in SHAPE_FLAGS})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            text, all_matched = describe_unknown(unknown, known)
            raise GptrainError(f"{source}: unknown setting(s) {text}" + (
                "" if all_matched else "; the settings are gptrain train's flags with _ for - (see gptrain train --help)"))
        try:
            return cls(**values)
        except TypeError as exc:
            raise GptrainError(f"{source}: {exc}") from None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


_TYPE_NAMES = {"str": "a string", "int": "an integer", "float": "a finite number", "bool": "true or false"}


def _check_types(cfg: Any) -> None:
    """Each setting has its annotated type: a config file can hold anything (JSON's null, TOML's dates)."""
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        kinds = [kind.strip() for kind in str(field.type).split("|")]
        if value is None and "None" in kinds:
            continue
        kind = kinds[0]
        if kind.startswith("tuple[str"):
            if isinstance(value, str):  # logger = "csv" means a list of one
                value = (value,)
                setattr(cfg, field.name, value)
            ok = isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value)
            expected = "a list of strings"
        elif kind in _TYPE_NAMES:
            if kind == "bool":
                ok = isinstance(value, bool)
            elif kind == "float":
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            else:
                ok = isinstance(value, {"str": str, "int": int}[kind]) and not isinstance(value, bool)
            expected = _TYPE_NAMES[kind] + (" or none" if "None" in kinds else "")
        else:
            continue  # a type this check does not know: its own validation applies
        if not ok:
            raise GptrainError(f"{_flag(field.name)} must be {expected}, not {value!r}")


def _check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise GptrainError(f"{_flag(name)} must be a positive integer, not {value!r}")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a TOML or JSON file (keys are TrainConfig field names)."""
    path = Path(path)
    if not path.is_file():
        raise GptrainError(f"config file {path} does not exist: check the path given to --config")
    try:
        if path.suffix == ".json":
            values = json.loads(path.read_text(encoding="utf-8"))
        else:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GptrainError(f"config file {path} cannot be parsed: {exc}") from None
    if not isinstance(values, dict):
        raise GptrainError(f"config file {path} must hold a table of settings")
    # A run's saved config.json nests the training settings under "train".
    values = values["train"] if isinstance(values.get("train"), dict) else values
    unset = values.pop(UNSET, [])
    if not isinstance(unset, list) or not all(isinstance(name, str) for name in unset):
        raise GptrainError(f"config file {path}: {UNSET} must be a list of setting names, not {unset!r}")
    return values | dict.fromkeys(unset, None)


def recipe_text(cfg: TrainConfig) -> str:
    """A run's ``train.toml``: its resolved settings, which ``gptrain train --config`` reads back to repeat it."""
    values = cfg.to_dict()
    header = (f"# The resolved settings of the run: gptrain train --config {RECIPE_FILE} --out OTHER repeats it,\n"
              "# and flags given beside --config override these. TOML has no null: unset lists the settings left none.\n")
    return header + toml_table({name: value for name, value in values.items() if value is not None}
                               | {UNSET: [name for name, value in values.items() if value is None]})


def resolve_train_config(flags: Mapping[str, Any], *, config_file: str | Path | None = None,
                         resume: bool = False) -> TrainConfig:
    """A run's settings: the defaults, then (with ``resume``) the run's saved config.json, then
    ``config_file``, then ``flags``, the settings given on the command line (unset ones left out)."""
    if resume and "init" in flags:
        raise GptrainError("--init starts a new run and --resume continues one: drop --init to resume (the run "
                           "remembers its SOURCE), or drop --resume and choose a new --out")
    settings: dict[str, Any] = {}
    if resume:
        # A resumed run keeps its saved settings; --config and flags change only what they name.
        saved = Path(flags.get("out", TrainConfig.out)) / "config.json"
        if not saved.is_file():
            raise GptrainError(f"{saved.parent} holds no run to resume (no config.json): check --out")
        settings = read_config_file(saved)
    if config_file:
        settings.update(read_config_file(config_file))
    settings.update(flags)
    if settings.get("init") and not resume:
        # The architecture and window are SOURCE's unless the user names them.
        settings.setdefault("preset", None)
        settings.setdefault("context_length", None)
    return TrainConfig.from_dict(settings, source=str(config_file) if config_file else "settings")


__all__ = [
    "TrainConfig",
    "read_config_file",
    "recipe_text",
    "resolve_train_config",
]
