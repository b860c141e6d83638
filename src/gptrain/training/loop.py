"""Training: the lecture's loop as the book writes it, and the configurable run behind ``gptrain train``."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from gptrain.core.errors import GptrainError
from gptrain.core.files import write_json_atomic
from gptrain.core.formatting import duration, human
from gptrain.core.oserrors import check_output_dir
from gptrain.core.runtime import (
    Processes,
    autocast_context,
    gather_over_processes,
    max_over_processes,
    mean_over_processes,
    peak_flops,
    peak_memory_mb,
    resolve_precision,
    retain_freed_memory,
    start_processes,
)
from gptrain.data.corpus import TokenWindows
from gptrain.data.tokenizer import get_tokenizer, text_to_token_ids, token_ids_to_text
from gptrain.evaluation.tasks import load_training_tasks, log_task_scores
from gptrain.inference.generate import generate
from gptrain.model.counts import flops_per_token
from gptrain.model.gpt import GPTModel, count_parameters, unwrap_model
from gptrain.model.lora import ADAPTER_FILE, PEFT_DIR, add_lora, export_peft_adapter, has_lora, load_adapter
from gptrain.reporting.metrics import MetricsLog, logged_training, truncate_metrics
from gptrain.reporting.report import write_report
from gptrain.store.checkpoint import (
    CHECKPOINTS_DIR,
    OPTIMIZER_DIR,
    complete_checkpoints,
    copy_weights_into,
    load_state_into,
    load_training_state,
    prune_checkpoints,
    read_checkpoint_config,
    rng_state,
    save_checkpoint,
    set_rng_state,
    weights_state_dict,
)
from gptrain.training.book import plot_losses
from gptrain.training.clock import RunClock, run_cost
from gptrain.training.config import DEFAULT_EPOCHS, TrainConfig
from gptrain.training.optim import apply_group_settings, lr_at, make_optimizer, set_lr
from gptrain.training.pace import Pace
from gptrain.training.parallel import (
    accumulate_without_sync,
    check_launch,
    checkpoint_activations,
    gather_weights,
    load_optimizer,
    load_weights,
    local_value,
    save_optimizer,
    shard_model,
)
from gptrain.training.resume import data_fingerprint, resume_differences
from gptrain.training.runlock import locks_run_dir
from gptrain.training.step import collate, epoch_order, forward_backward, load_windows
from gptrain.training.transfer import check_same_transfer, describe_start, load_init_model

# --- The lecture's functions ---------------------------------------------------------------







# --- The configurable run ---------------------------------------------------------------------
#
# `train(cfg)` is a few plain functions over two objects: `run` (what does not change while
# training: model, optimizer, data, device, process group) and `state` (what does: step, data
# position, tokens seen, losses). A checkpoint is `state` plus the weights and optimizer, so a
# resumed run continues bit for bit.

# --- Data ---







# --- Run set-up ---

class PendingBest:
    """The weights with the lowest validation loss so far, held in memory until the next checkpoint.

    A short run improves at most evaluations, and writing best/ each time wrote and fsynced the
    whole model (650 MB for 124M) every few steps. best/ is now written with each resumable
    checkpoint and at the end, so it never gets ahead of the checkpoint a resume starts from.
    """

    def __init__(self):
        self.cfg = None
        self.weights: dict[str, torch.Tensor] | None = None  # one CPU copy, reused
        self.training_state: dict[str, Any] | None = None

    def keep(self, model: GPTModel | None, training_state: dict[str, Any]) -> None:
        """``model`` is what a checkpoint saves (``model_to_save``): None on processes that do not write."""
        if model is None:
            return
        state = weights_state_dict(model)  # LoRA merged, vocabulary padding and a tied head left out
        if self.weights is None:
            self.weights = {name: torch.empty_like(tensor, device="cpu") for name, tensor in state.items()}
        for name, tensor in state.items():
            self.weights[name].copy_(tensor)
        self.cfg, self.training_state = model.cfg, training_state

    def write(self, path: Path, train_config: dict[str, Any]) -> None:
        if self.training_state is None:
            return
        with torch.device("meta"):
            plain = GPTModel(self.cfg)
        load_state_into(plain, dict(self.weights), "the best weights")
        save_checkpoint(plain, path, train_config=train_config, training_state=self.training_state)
        self.training_state = None


@dataclass
class Run:
    cfg: TrainConfig
    procs: Processes
    device: torch.device
    model: nn.Module  # what is trained: possibly compiled and wrapped in DistributedDataParallel
    raw_model: GPTModel  # the plain model: evaluated, sampled and saved
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    train_windows: TokenWindows
    val_windows: TokenWindows
    tokenizer: Any
    out: Path
    steps_per_epoch: int
    total_steps: int
    echo: Callable[[str], None]
    log: MetricsLog | None = None
    data_sha256: str | None = None  # of the train and val tokens: a resumed run must see the same
    best: PendingBest = dataclasses.field(default_factory=PendingBest)
    pace: Pace | None = None  # speed and ETA on the evaluation lines, when no progress bar shows them

    @property
    def global_batch(self) -> int:
        return self.cfg.batch_size * self.cfg.grad_accum * self.procs.world_size

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.raw_model.cfg.context_length

    def autocast(self):
        return autocast_context(self.device.type, self.cfg.precision)


def resolve_grad_accum(cfg: TrainConfig, world_size: int, context: int) -> int:
    """The micro-batches per step that make up ``--global-batch-tokens``."""
    per_micro_step = cfg.batch_size * context * world_size
    if cfg.global_batch_tokens % per_micro_step:
        raise GptrainError(
            f"--global-batch-tokens {cfg.global_batch_tokens:,} is not a multiple of batch size x context x "
            f"processes = {cfg.batch_size} x {context} x {world_size} = {per_micro_step:,}: change one of them"
        )
    return cfg.global_batch_tokens // per_micro_step


def plan_steps(cfg: TrainConfig, steps_per_epoch: int, tokens_per_step: int) -> int:
    """Optimizer steps in the budget: the first of --epochs, --max-steps, --max-tokens to run out."""
    limits = []
    if cfg.epochs is not None:
        limits.append(cfg.epochs * steps_per_epoch)
    if cfg.max_steps is not None:
        limits.append(cfg.max_steps)
    if cfg.max_tokens is not None:
        limits.append(math.ceil(cfg.max_tokens / tokens_per_step))
    return min(limits) if limits else DEFAULT_EPOCHS * steps_per_epoch


def build_run(cfg: TrainConfig, echo: Callable[[str], None]) -> Run:
    procs, device = start_processes(cfg.device)
    if cfg.fsdp:
        check_launch(procs.world_size, device)
    # Not under FSDP: its gather and reduce buffers of many sizes would fragment a heap that is never
    # trimmed (124M, 2 processes: 4.0 GB peak per process against 3.1 GB).
    if device.type == "cpu" and not cfg.fsdp:
        retain_freed_memory()
    init_model = None
    if cfg.init is not None:  # transfer learning: SOURCE's architecture and weights
        init_model, init_sha256 = load_init_model(cfg, device)
        cfg = dataclasses.replace(cfg, init_sha256=init_sha256)
    model_cfg = cfg.model_config() if init_model is None else init_model.cfg
    # Settings are saved resolved: the precision chosen, the grad accum that a token budget stands for.
    cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, device),
                              pad_vocab=device.type == "cuda" if cfg.pad_vocab is None else cfg.pad_vocab)
    if cfg.global_batch_tokens is not None:
        cfg = dataclasses.replace(cfg, grad_accum=resolve_grad_accum(cfg, procs.world_size, model_cfg.context_length),
                                  global_batch_tokens=None)
    tokenizer = get_tokenizer()
    train_windows, val_windows = load_windows(cfg, model_cfg.context_length, tokenizer)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # Seeded right before the model, as the book does: same seed, same initial weights as its GPTModel.
    torch.manual_seed(cfg.seed)
    raw_model = GPTModel(model_cfg).to(device) if init_model is None else init_model
    if cfg.pad_vocab:
        raw_model.pad_vocab(64)
    if cfg.lora_rank is not None:  # after pad_vocab, whose new head parameter would otherwise be trained
        add_lora(raw_model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
    if cfg.activation_checkpointing:
        checkpoint_activations(raw_model)
    if cfg.fsdp:
        shard_model(raw_model, cfg.precision)
    if procs.rank:
        torch.manual_seed(cfg.seed + procs.rank)  # different dropout masks on each process
    model: nn.Module = torch.compile(raw_model) if cfg.compile else raw_model
    if procs.distributed and not cfg.fsdp:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(raw_model, cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")

    global_batch = cfg.batch_size * cfg.grad_accum * procs.world_size
    steps_per_epoch = len(train_windows) // global_batch
    if steps_per_epoch == 0:
        raise GptrainError(
            f"the training split has {len(train_windows)} window(s), fewer than one batch of {global_batch} "
            f"(batch size {cfg.batch_size} x grad accum {cfg.grad_accum} x {procs.world_size} process(es)): "
            "use a smaller --batch-size or --context-length, or more text"
        )
    total_steps = plan_steps(cfg, steps_per_epoch, global_batch * model_cfg.context_length)
    return Run(cfg, procs, device, model, raw_model, optimizer, scaler, train_windows, val_windows, tokenizer,
               Path(cfg.out), steps_per_epoch, total_steps, echo,
               data_sha256=data_fingerprint(train_windows.tokens, val_windows.tokens))


def new_state() -> dict[str, Any]:
    return {"step": 0, "epoch": 0, "step_in_epoch": 0, "tokens_seen": 0, "best_val_loss": math.inf,
            "best_step": None, "evals_since_best": 0, "overfitting_warned": False,
            "train_losses": [], "val_losses": [], "track_tokens_seen": []}


# --- One step, one evaluation ---

def step_batches(run: Run, state: dict[str, Any]):
    """This process's micro-batches of the current step: a slice of the step's global batch."""
    order = epoch_order(len(run.train_windows), run.cfg.seed, state["epoch"])
    start = state["step_in_epoch"] * run.global_batch
    global_indices = order[start:start + run.global_batch]
    b, world = run.cfg.batch_size, run.procs.world_size
    for micro in range(run.cfg.grad_accum):
        offset = (micro * world + run.procs.rank) * b
        yield collate(run.train_windows, global_indices[offset:offset + b])




def train_step(run: Run, state: dict[str, Any]) -> tuple[float, float]:
    """One optimizer step over the global batch; returns (mean loss, gradient norm)."""
    set_lr(run.optimizer, lr_at(state["step"], run.cfg, run.total_steps))
    run.optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=run.device)
    micro_batches = list(step_batches(run, state))
    for micro, (inputs, targets) in enumerate(micro_batches):
        last = micro == len(micro_batches) - 1
        # Gradients are all-reduced only after the last micro-batch of the step.
        if last or not run.procs.distributed:
            sync = contextlib.nullcontext()
        else:
            sync = accumulate_without_sync(run.raw_model) if run.cfg.fsdp else run.model.no_sync()
        with sync:
            total += forward_backward(run.model, inputs.to(run.device), targets.to(run.device), run.autocast,
                                      1.0 / len(micro_batches), run.scaler)
    mean_loss = mean_over_processes(total.item() / len(micro_batches), run.procs, run.device)
    if not math.isfinite(mean_loss):
        raise GptrainError(
            f"the loss became {mean_loss} at step {state['step']}, so training stopped before the update; the last "
            "checkpoint is intact: lower --lr, keep --grad-clip on, or use --precision bf16 instead of fp16"
        )
    run.scaler.unscale_(run.optimizer)
    params = run.raw_model.parameters()
    grad_norm = (torch.nn.utils.clip_grad_norm_(params, run.cfg.grad_clip) if run.cfg.grad_clip is not None
                 else torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
    run.scaler.step(run.optimizer)
    run.scaler.update()
    state["step"] += 1
    state["step_in_epoch"] += 1
    state["tokens_seen"] += run.tokens_per_step
    if state["step_in_epoch"] == run.steps_per_epoch:
        state["epoch"] += 1
        state["step_in_epoch"] = 0
    return mean_loss, float(local_value(grad_norm))  # under FSDP the norm is a DTensor


# A forward pass keeps no activations for a backward pass, so evaluation runs more windows at once
# than a training micro-batch: each pass reads every weight once (and under autocast casts it once).
EVAL_CHUNK_TOKENS = 4096


@torch.no_grad()
def windows_loss(run: Run, windows: TokenWindows, batches: int) -> float:
    """Mean loss over the first ``batches`` global batches of windows, in order.

    Global batches make the figure independent of how a step is split into micro-batches and
    processes; averaging per token equals the book's mean of batch means for full batches.
    """
    count = min(len(windows), batches * run.global_batch)
    chunk = max(run.cfg.batch_size, EVAL_CHUNK_TOKENS // windows.max_length) * run.procs.world_size
    total = 0.0
    for start in range(0, count, chunk):
        inputs, targets = collate(windows, range(start, min(start + chunk, count)))
        logits = run.raw_model(inputs.to(run.device))
        total += F.cross_entropy(logits.flatten(0, 1).float(), targets.to(run.device).flatten(),
                                 reduction="sum").item()
    return total / (count * windows.max_length)


def evaluate(run: Run) -> tuple[float, float]:
    run.raw_model.eval()
    try:
        with run.autocast():  # one context: autocast casts each weight once for all the passes
            return (windows_loss(run, run.train_windows, run.cfg.eval_iter),
                    windows_loss(run, run.val_windows, run.cfg.eval_iter))
    finally:
        run.raw_model.train()


def sample_text(model: nn.Module, tokenizer, device, start_context: str, max_new_tokens: int) -> str:
    model = unwrap_model(model)
    idx = text_to_token_ids(start_context, tokenizer).to(device)
    return token_ids_to_text(generate(model, idx, max_new_tokens, model.cfg.context_length), tokenizer)


# --- Checkpoints and resume ---

def model_to_save(run: Run) -> GPTModel | None:
    """The model whose weights a checkpoint holds; under FSDP every process must call this, and
    rank 0 gets the weights gathered from the shards (the others None)."""
    return gather_weights(run.raw_model, run.procs.is_main) if run.cfg.fsdp else run.raw_model


def save_run_checkpoint(run: Run, state: dict[str, Any], path: Path, with_training_state: bool = True) -> None:
    """Called by every process (the RNG states are gathered); rank 0 writes."""
    rng = [rng_state()]
    if run.procs.distributed and with_training_state:
        rng = [None] * run.procs.world_size
        dist.all_gather_object(rng, rng_state())
    optimizer_dir = None
    if run.cfg.fsdp and with_training_state:
        optimizer_dir = save_optimizer(run.raw_model, run.optimizer, path, run.procs.is_main)
    model = model_to_save(run)
    if not run.procs.is_main:
        return
    run.best.write(run.out / "best", run.cfg.to_dict())
    training_state = {**state, "rng": rng, "scaler": run.scaler.state_dict(), "global_batch": run.global_batch,
                      "data_sha256": run.data_sha256}
    if not with_training_state:
        training_state = {k: state[k] for k in ("step", "tokens_seen")}
    save_checkpoint(model, path, run.optimizer if with_training_state and not run.cfg.fsdp else None,
                    train_config=run.cfg.to_dict(), training_state=training_state, optimizer_dir=optimizer_dir)


def restore(run: Run, state: dict[str, Any], path: Path) -> dict[str, list[Any]]:
    """Load the checkpoint at ``path`` into the run; returns the settings changed since, ``{name: [was, now]}``."""
    checkpoint_config = read_checkpoint_config(path)
    saved = load_training_state(path, map_location="cpu")
    refused, changed = resume_differences(checkpoint_config.get("train") or {}, checkpoint_config["model"],
                                          saved.get("data_sha256"), run.cfg.to_dict(),
                                          run.raw_model.cfg.to_dict(), run.data_sha256)
    if refused:
        raise GptrainError(f"cannot resume {path} with {'; '.join(refused)}: keep these settings, or start a new "
                           "run with another --out")
    if saved["global_batch"] != run.global_batch:
        raise GptrainError(
            f"cannot resume {path} with a global batch of {run.global_batch} sequences: it was trained with "
            f"{saved['global_batch']}; keep batch size x grad accum x processes the same"
        )
    check_same_transfer(checkpoint_config.get("train") or {}, run.cfg, path)
    if run.cfg.fsdp and "optimizer" in saved:
        raise GptrainError(f"{path} was written without --fsdp: resume it without --fsdp (the same processes "
                           "and global batch), or start a new run with another --out")
    if has_lora(run.raw_model):  # the frozen base came from --init; only the adapters were trained
        load_adapter(run.raw_model, path / ADAPTER_FILE)
    elif run.cfg.fsdp:
        load_weights(run.raw_model, path)
    else:
        copy_weights_into(run.raw_model, path)
    if (path / OPTIMIZER_DIR).is_dir():
        load_optimizer(run.raw_model, run.optimizer, path)
    else:
        run.optimizer.load_state_dict(saved["optimizer"])
    apply_group_settings(run.optimizer, run.cfg)  # the loaded groups hold the saved run's settings
    run.scaler.load_state_dict(saved["scaler"])
    for key in new_state():
        state[key] = saved[key]
    rngs = saved["rng"]
    set_rng_state(rngs[run.procs.rank] if len(rngs) == run.procs.world_size else rngs[0])
    return changed


# --- Stopping on a signal ---

class StopOnSignal:
    """SIGTERM or SIGINT asks the run to finish its current step, save and exit; a second SIGINT
    interrupts at once."""

    def __init__(self):
        self.received: str | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# --- The loop ---

RUN_FILES = ("metrics.jsonl", "metrics.csv", "tensorboard", "final", "best", CHECKPOINTS_DIR)


def failed_start(out: Path) -> bool:
    """Whether ``out`` holds only what a run that failed before its first step left: nothing to keep."""
    saved = any((out / name).exists() for name in ("final", "best", CHECKPOINTS_DIR))
    return not saved and not logged_training(out)


def prepare_run_dir(out: Path, overwrite: bool, resume: bool) -> None:
    check_output_dir(out)
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if existing and not (overwrite or resume):
        if complete_checkpoints(out):
            raise GptrainError(
                f"{out} already holds a run ({', '.join(existing)}): pass --resume to continue it, --overwrite to "
                "replace it, or choose another --out"
            )
        if not failed_start(out):
            raise GptrainError(
                f"{out} already holds a run ({', '.join(existing)}) with no complete checkpoint to resume from: "
                "pass --overwrite to replace it, or choose another --out"
            )
        overwrite = True  # a retry of a start that failed reuses its folder
    if overwrite and not resume:
        for name in existing:
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    out.mkdir(parents=True, exist_ok=True)


OVERFITTING_EVALS = 3  # evaluations in a row of train falling and val rising that make a warning


def overfitting(train_losses: list[float], val_losses: list[float]) -> bool:
    """The lecture's sign of memorising: training loss still falling while validation loss rises."""
    if len(val_losses) < OVERFITTING_EVALS:
        return False
    train, val = train_losses[-OVERFITTING_EVALS:], val_losses[-OVERFITTING_EVALS:]
    return all(b < a for a, b in zip(train, train[1:])) and all(b > a for a, b in zip(val, val[1:]))


def log_evaluation(run: Run, state: dict[str, Any], global_step: int, started: float, initial: bool = False) -> bool:
    """Evaluate, log, keep best/, warn about overfitting; True when early stopping says stop.

    ``initial`` marks the evaluation of a transfer run before its first update: its "before" figure.
    """
    train_loss, val_loss = evaluate(run)
    state["train_losses"].append(train_loss)
    state["val_losses"].append(val_loss)
    state["track_tokens_seen"].append(state["tokens_seen"])
    epoch_label = state["epoch"] + (state["step_in_epoch"] > 0)
    run.log.write("eval", step=global_step, epoch=epoch_label, tokens_seen=state["tokens_seen"],
                  train_loss=train_loss, val_loss=val_loss, lr=run.optimizer.param_groups[0]["lr"],
                  elapsed_s=round(time.perf_counter() - started, 3), **({"initial": True} if initial else {}))
    label = "Initial, before training" if initial else f"Ep {epoch_label} (Step {global_step:06d})"
    pace = "" if initial or run.pace is None else run.pace(state["step"], state["tokens_seen"])
    run.echo(f"{label}: Train loss {train_loss:.3f}, Val loss {val_loss:.3f}{pace}")
    if val_loss < state["best_val_loss"]:
        state.update(best_val_loss=val_loss, best_step=global_step, evals_since_best=0, overfitting_warned=False)
        run.best.keep(model_to_save(run), {"step": state["step"], "tokens_seen": state["tokens_seen"],
                                           "val_loss": val_loss})
        return False
    state["evals_since_best"] += 1
    if not state["overfitting_warned"] and overfitting(state["train_losses"], state["val_losses"]):
        state["overfitting_warned"] = True
        text = (f"validation loss has risen for {OVERFITTING_EVALS - 1} evaluations while training loss fell "
                f"({state['val_losses'][-OVERFITTING_EVALS]:.3f} -> {val_loss:.3f}): the model is memorising the "
                f"training text; best/ keeps step {state['best_step']} (val loss {state['best_val_loss']:.3f})")
        run.log.write("warning", step=global_step, text=text)
        run.echo(f"Warning: {text}")
    patience = run.cfg.early_stop_patience
    return patience is not None and state["evals_since_best"] >= patience


def print_line(line: str) -> None:
    """Print above the progress bar and flush: logs go to files under schedulers and torchrun, and a
    stopped process must not lose its last lines."""
    tqdm.write(line)
    sys.stdout.flush()


@locks_run_dir
def train(cfg: TrainConfig, *, overwrite: bool = False, resume: bool = False,
          echo: Callable[[str], None] = print_line) -> dict[str, Any]:
    """Run ``cfg`` end to end and return a summary; writes the run directory ``cfg.out``.

    The run directory holds ``config.json`` (the resolved settings), ``metrics.jsonl`` (one
    JSON line per step, evaluation and sample), ``loss.png``, ``report.html``, ``best/`` (weights
    with the lowest validation loss), ``final/`` and, with ``save_every``, ``checkpoints/step-N/``. With
    ``resume`` it continues from the latest complete checkpoint there. Under torchrun only rank
    0 logs, samples and saves.
    """
    started = time.perf_counter()
    run = build_run(cfg, echo if os.environ.get("RANK", "0") == "0" else (lambda line: None))
    cfg = run.cfg  # resolved
    main = run.procs.is_main
    evaluates = main or cfg.fsdp  # a sharded model's forward pass needs every process
    state = new_state()
    eval_tasks = load_training_tasks(cfg.eval_task, cfg.eval_task_limit) if evaluates else []
    if main:
        prepare_run_dir(run.out, overwrite, resume)
    if resume:
        checkpoints = complete_checkpoints(run.out)
        if not checkpoints:
            fix = ("train without --resume" if failed_start(run.out)
                   else "pass --overwrite instead of --resume to start it again, or choose another --out")
            raise GptrainError(f"{run.out} holds no complete checkpoint to resume from: {fix}")
        step, path = checkpoints[-1]
        resume_changes = restore(run, state, path)
        if main:
            truncate_metrics(run.out, step)
        run.echo(f"Resuming from {path} (step {step}, {state['tokens_seen']:,} tokens seen)")
    if main:
        write_json_atomic(run.out / "config.json", {"model": run.raw_model.cfg.to_dict(), "train": cfg.to_dict()})
    run.log = MetricsLog(run.out, cfg.logger, enabled=main)
    if resume:
        run.log.write("resume", step=step, checkpoint=str(path), changed=resume_changes)
        for name, (was, now) in resume_changes.items():
            run.echo(f"Changed on resume: {name} {was!r} -> {now!r}")
    if run.procs.distributed:
        dist.barrier()  # the run directory exists before any process goes on
    ctx = run.raw_model.cfg.context_length
    run.echo(f"Training {count_parameters(run.raw_model):,} parameters on {run.device} for {run.total_steps} steps "
             f"({run.steps_per_epoch} per epoch); global batch {run.global_batch} sequences = "
             f"{run.tokens_per_step:,} tokens ({run.cfg.batch_size} x {ctx} per micro-batch, "
             f"{run.cfg.grad_accum} micro-batches, {run.procs.world_size} process(es)); precision {cfg.precision}")
    if cfg.init is not None:
        run.echo(describe_start(cfg, run.raw_model))
        if evaluates and cfg.eval_freq and state["step"] == 0:
            log_evaluation(run, state, 0, started, initial=True)

    stopped_by, early_stopped = None, False
    progress = tqdm(total=run.total_steps, initial=state["step"], desc="train", unit="step",
                    disable=None if main else True, leave=False)
    if progress.disable or not sys.stdout.isatty():
        run.pace = Pace(run.total_steps, state["step"], state["tokens_seen"], started)
    step_seconds = 0.0  # training time since the last train record: evaluations and samples excluded
    peak = peak_flops(run.device, cfg.precision)
    per_token = flops_per_token(run.raw_model)
    planned_tokens = (run.total_steps - state["step"]) * run.tokens_per_step
    run.echo(f"Plan: {planned_tokens:,} tokens, {planned_tokens * per_token:.3g} FLOPs ({human(per_token)} per token)"
             + (f", peak {human(peak * run.procs.world_size, 'FLOP/s')}" if peak else ""))
    run.log.write("plan", step=state["step"], tokens=planned_tokens, flops_per_token=per_token,
                  flops=planned_tokens * per_token, peak_flops=peak and peak * run.procs.world_size,
                  devices=run.procs.world_size, price_per_hour=cfg.price_per_hour)
    clock = RunClock(run.total_steps)
    try:
        with StopOnSignal() as stop:
            run.raw_model.train()
            while state["step"] < run.total_steps:
                epoch_before = state["epoch"]
                step_started = time.perf_counter()
                loss, grad_norm = train_step(run, state)  # its loss is a Python float: the step has finished
                step_seconds += time.perf_counter() - step_started
                global_step = state["step"] - 1  # the book's numbering: 0 is the first update
                progress.update(1)
                remaining = clock.remaining(state["step"])
                cost = run_cost(time.perf_counter() - started, cfg.price_per_hour, run.procs.world_size)
                progress.set_postfix(loss=f"{loss:.3f}", **({} if remaining is None else {"eta": duration(remaining)}),
                                     **({} if cost is None else {"cost": f"{cost:.2f}"}))
                if main and state["step"] % cfg.log_every == 0:
                    rate = cfg.log_every * run.tokens_per_step / max(step_seconds, 1e-9)
                    step_seconds = 0.0
                    mfu = rate * per_token / (peak * run.procs.world_size) if peak else None
                    run.log.write("train", step=global_step, loss=loss, lr=run.optimizer.param_groups[0]["lr"],
                                  grad_norm=grad_norm, tokens_seen=state["tokens_seen"], tokens_per_s=round(rate, 1),
                                  mfu=None if mfu is None else round(mfu, 4))
                early_stop = False
                # Also at the last step: the summary's "final" losses and best/ must not be older than the run.
                last = state["step"] == run.total_steps
                if evaluates and cfg.eval_freq and (global_step % cfg.eval_freq == 0 or last):
                    early_stop = log_evaluation(run, state, global_step, started)
                if eval_tasks and global_step % (cfg.eval_task_every or cfg.eval_freq) == 0:
                    log_task_scores(run, eval_tasks, global_step, state["tokens_seen"])
                if evaluates and state["epoch"] > epoch_before and cfg.sample_tokens:
                    sample = sample_text(run.raw_model, run.tokenizer, run.device, cfg.start_context,
                                         cfg.sample_tokens)
                    run.log.write("sample", step=global_step, epoch=state["epoch"], text=sample)
                    run.echo(sample.replace("\n", " "))
                # Every process stops at the same step: 2 = a signal reached some process, 1 = early stop.
                reason = max_over_processes(2 if stop.received else int(early_stop), run.procs, run.device)
                if reason == 2:
                    stopped_by = stop.received or "a signal to another process"
                    break
                if reason == 1:
                    early_stopped = True
                    run.log.write("early_stop", step=global_step, best_step=state["best_step"],
                                  best_val_loss=state["best_val_loss"])
                    run.echo(f"Early stopping after step {global_step}: validation loss has not improved for "
                             f"{cfg.early_stop_patience} evaluations; best/ holds step {state['best_step']} "
                             f"(val loss {state['best_val_loss']:.3f})")
                    break
                if cfg.save_every and state["step"] % cfg.save_every == 0:
                    save_run_checkpoint(run, state, run.out / CHECKPOINTS_DIR / f"step-{state['step']:07d}")
                    if main:
                        prune_checkpoints(run.out, cfg.keep_last)
            # Training's peak, before rank 0 gathers a sharded model to save it; measured here also because a
            # collective right before the process group is destroyed can deadlock gloo's shutdown.
            memory = [round(mb, 1) for mb in gather_over_processes(peak_memory_mb(run.device), run.procs, run.device)]
            if stopped_by:
                path = run.out / CHECKPOINTS_DIR / f"step-{state['step']:07d}"
                save_run_checkpoint(run, state, path)
                run.echo(f"Stopped by {stopped_by} after step {state['step']}: saved {path}; "
                         f"continue with --resume --out {run.out}")
            else:
                save_run_checkpoint(run, state, run.out / "final")
                if main and has_lora(run.raw_model):
                    export_peft_adapter(run.raw_model, run.out / "final" / PEFT_DIR, base_model=cfg.init)
            wall = time.perf_counter() - started
            cost = run_cost(wall, cfg.price_per_hour, run.procs.world_size)
            priced = {} if cost is None else {"cost": cost}
            run.log.write("end", step=state["step"] - 1, tokens_seen=state["tokens_seen"], wall_time_s=round(wall, 3),
                          stopped_by=stopped_by, early_stopped=early_stopped, peak_memory_mb=memory, **priced)
            run.echo("Peak memory per process: " + ", ".join(f"{mb:,.0f} MB" for mb in memory)
                     + (" (allocated on the GPU)" if run.device.type == "cuda" else " (resident set size)"))
    finally:
        progress.close()
        run.log.close()
        if run.procs.distributed and dist.is_initialized():
            dist.destroy_process_group()

    if main:
        if state["train_losses"]:
            epochs_seen = [t / (run.steps_per_epoch * run.tokens_per_step) for t in state["track_tokens_seen"]]
            plot_losses(epochs_seen, state["track_tokens_seen"], state["train_losses"], state["val_losses"],
                        run.out / "loss.png")
        write_report(run.out)
    if not stopped_by and (state["train_losses"] or not cfg.eval_freq):
        outcome = (f"final train loss {state['train_losses'][-1]:.3f}, val loss {state['val_losses'][-1]:.3f}; "
                   f"checkpoints in {run.out}/final and {run.out}/best" if cfg.eval_freq
                   else f"evaluation was off (--eval-freq 0), so no losses and no best/; checkpoint in {run.out}/final")
        run.echo(f"Done in {wall:.1f} s: {outcome}"
                 + ("" if cost is None else f"; cost {cost:,.2f} at {cfg.price_per_hour:g} per device-hour"))
    return {"run_dir": str(run.out), "steps": state["step"], "tokens_seen": state["tokens_seen"],
            "train_losses": state["train_losses"], "val_losses": state["val_losses"],
            "track_tokens_seen": state["track_tokens_seen"], "wall_time_s": wall, "stopped_by": stopped_by,
            "early_stopped": early_stopped, "best_step": state["best_step"], "best_val_loss": state["best_val_loss"]}
