"""``gptrain train``'s loop: steps, and around them a run's start, progress, stop and summary.

The run is set up in :mod:`gptrain.training.run`, evaluated in :mod:`gptrain.training.run_eval`,
and saved and restored in :mod:`gptrain.training.checkpointing`.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
from tqdm import tqdm

from gptrain.core.errors import GptrainError
from gptrain.core.files import write_json_atomic, write_text_atomic
from gptrain.core.formatting import duration, human
from gptrain.core.launch import is_main_process
from gptrain.core.peak import mfu_peak
from gptrain.core.runtime import (
    gather_over_processes,
    max_over_processes,
    mean_over_processes,
    peak_memory_mb,
    process_age,
    release_freed_memory,
)
from gptrain.data.instructions import InstructionExamples
from gptrain.evaluation.tasks import load_training_tasks
from gptrain.model.counts import flops_per_token
from gptrain.model.gpt import count_parameters
from gptrain.model.lora import PEFT_DIR, export_peft_adapter, has_lora
from gptrain.reporting.metrics import MetricsLog
from gptrain.reporting.report import REPORT_FILE, run_figures, write_report
from gptrain.reporting.trackers import TrackerSettings
from gptrain.store.checkpoint import CHECKPOINTS_DIR, prune_checkpoints
from gptrain.training.book import plot_losses
from gptrain.training.checkpointing import prepare_run_dir, resume_latest, save_run_checkpoint
from gptrain.training.clock import RunClock, run_cost
from gptrain.training.config import RECIPE_FILE, TrainConfig, recipe_text
from gptrain.training.instruct import TEST_RECORDS_FILE
from gptrain.training.optim import lr_at, set_lr
from gptrain.training.pace import Pace
from gptrain.training.parallel import accumulate_without_sync, local_value
from gptrain.training.ranks import fault_point, last_failure, restart_count
from gptrain.training.run import Run, build_run, new_state
from gptrain.training.run_eval import evaluate_after_step, log_evaluation
from gptrain.training.runlock import locks_run_dir
from gptrain.training.signals import StopOnSignal
from gptrain.training.step import collate, epoch_order, forward_backward, rank_offsets
from gptrain.training.transfer import describe_start


def step_batches(run: Run, state: dict[str, Any]):
    """This process's micro-batches of the current step: a slice of the step's global batch."""
    order = epoch_order(len(run.train_windows), run.cfg.seed, state["epoch"])
    start = state["step_in_epoch"] * run.global_batch
    if isinstance(run.train_windows, InstructionExamples):
        global_indices = run.train_windows.step_indices(order, start, run.global_batch,
                                                        sort=run.cfg.finetune.batching == "sorted")
    else:
        global_indices = order[start:start + run.global_batch]
    b = run.cfg.batch_size
    for offset in rank_offsets(run.procs.rank, run.procs.world_size, b, run.cfg.grad_accum):
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
    fault_point(state["step"], run.procs.rank)
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


@dataclass
class Outcome:
    """How the loop ended, and what the run took."""

    stopped_by: str | None = None  # the signal that stopped it
    early_stopped: bool = False
    wall: float = 0.0
    cost: float | None = None
    steps_run: int = 0  # by this process, since it started or resumed
    peak: float | None = None  # FLOP/s of one device, for MFU
    peak_source: str | None = None
    flops_per_token: float = 0.0
    report_figures: dict[str, str] | None = None  # drawn while final/ was written


def start_run(run: Run, state: dict[str, Any], overwrite: bool, resume: bool) -> None:
    """The run directory made ready (or the run resumed), its config and metrics log opened."""
    main = run.procs.is_main
    restarts = restart_count()
    cause = last_failure(run.out) if restarts and main else None  # read before the log is cut back or cleared
    if main:
        prepare_run_dir(run.out, overwrite, resume)
    step = 0
    if resume:
        step, path, resume_changes = resume_latest(run, state)
    config = {"model": run.raw_model.cfg.to_dict(), "train": run.cfg.to_dict()}
    if main:
        write_json_atomic(run.out / "config.json", config)
        write_text_atomic(run.out / RECIPE_FILE, recipe_text(run.cfg))
        if run.test_records:  # held out of training: gptrain eval --model RUN --data RUN/test.jsonl scores them
            write_text_atomic(run.out / TEST_RECORDS_FILE,
                              "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in run.test_records))
    trackers = TrackerSettings(run.cfg.wandb_project, run.cfg.run_name, run.cfg.mlflow_uri)
    run.log = MetricsLog(run.out, run.cfg.logger, enabled=main, trackers=trackers, config=config)
    if resume:
        run.log.write("resume", step=step, checkpoint=str(path), changed=resume_changes)
        for name, (was, now) in resume_changes.items():
            run.echo(f"Changed on resume: {name} {was!r} -> {now!r}")
    if restarts:
        run.log.write("restart", step=step, restart=restarts, cause=cause, time=time.time())
        run.echo(f"Restart {restarts} by torchrun, from step {step}" + (f" (after {cause})" if cause else ""))
    if run.procs.distributed:
        dist.barrier()  # the run directory exists before any process goes on
    ctx = run.tokens_per_step // run.global_batch
    per_sequence = str(ctx) if run.cfg.finetune is None else f"{ctx} (mean)"
    run.echo(f"Training {count_parameters(run.raw_model):,} parameters on {run.device} for {run.total_steps} steps "
             f"({run.steps_per_epoch} per epoch); global batch {run.global_batch} sequences = "
             f"{run.tokens_per_step:,} tokens ({run.cfg.batch_size} x {per_sequence} per micro-batch, "
             f"{run.cfg.grad_accum} micro-batches, {run.procs.world_size} process(es)); precision {run.cfg.precision}")


def log_plan(run: Run, state: dict[str, Any], outcome: Outcome) -> None:
    """Say and log the tokens and FLOPs still to go; keeps the devices' peak FLOP/s each and the
    FLOPs per token in ``outcome``."""
    peak, source = mfu_peak(run.device, run.cfg.precision)
    per_token = flops_per_token(run.raw_model)
    outcome.peak, outcome.peak_source, outcome.flops_per_token = peak, source, per_token
    planned_tokens = (run.total_steps - state["step"]) * run.tokens_per_step
    run.echo(f"Plan: {planned_tokens:,} tokens, {planned_tokens * per_token:.3g} FLOPs ({human(per_token)} per token)"
             + (f", peak {human(peak * run.procs.world_size, 'FLOP/s')}" if peak else ""))
    run.log.write("plan", step=state["step"], tokens=planned_tokens, flops_per_token=per_token,
                  flops=planned_tokens * per_token, peak_flops=peak and peak * run.procs.world_size,
                  peak_source=source, devices=run.procs.world_size, price_per_hour=run.cfg.price_per_hour)


def run_steps(run: Run, state: dict[str, Any], stop: StopOnSignal, progress: tqdm, eval_tasks: list,
              evaluates: bool, started: float) -> Outcome:
    """Train until the budget is spent, a signal arrives or early stopping says stop."""
    cfg, outcome = run.cfg, Outcome()
    log_plan(run, state, outcome)
    peak, per_token = outcome.peak, outcome.flops_per_token
    run.timing.add("startup", time.perf_counter() - started - sum(run.timing.seconds.values()))
    clock = RunClock(run.total_steps)
    step_seconds = 0.0  # training time since the last train record: evaluations and samples excluded
    run.raw_model.train()
    while state["step"] < run.total_steps:
        epoch_before = state["epoch"]
        step_started = time.perf_counter()
        loss, grad_norm = train_step(run, state)  # its loss is a Python float: the step has finished
        step_seconds += time.perf_counter() - step_started
        run.timing.add("steps", time.perf_counter() - step_started)
        outcome.steps_run += 1
        global_step = state["step"] - 1  # the book's numbering: 0 is the first update
        progress.update(1)
        remaining = clock.remaining(state["step"])
        cost = run_cost(time.perf_counter() - started, cfg.price_per_hour, run.procs.world_size)
        progress.set_postfix(loss=f"{loss:.3f}", **({} if remaining is None else {"eta": duration(remaining)}),
                             **({} if cost is None else {"cost": f"{cost:.2f}"}))
        if run.procs.is_main and state["step"] % cfg.log_every == 0:
            rate = cfg.log_every * run.tokens_per_step / max(step_seconds, 1e-9)
            step_seconds = 0.0
            mfu = rate * per_token / (peak * run.procs.world_size) if peak else None
            run.log.write("train", step=global_step, loss=loss, lr=run.optimizer.param_groups[0]["lr"],
                          grad_norm=grad_norm, tokens_seen=state["tokens_seen"], tokens_per_s=round(rate, 1),
                          mfu=None if mfu is None else round(mfu, 4))
        early_stop = evaluate_after_step(run, state, epoch_before, eval_tasks, evaluates, started)
        # Every process stops at the same step: 2 = a signal reached some process, 1 = early stop.
        reason = max_over_processes(2 if stop.received else int(early_stop), run.procs, run.device)
        if reason == 2:
            outcome.stopped_by = stop.received or "a signal to another process"
            break
        if reason == 1:
            outcome.early_stopped = True
            run.log.write("early_stop", step=global_step, best_step=state["best_step"],
                          best_val_loss=state["best_val_loss"])
            run.echo(f"Early stopping after step {global_step}: validation loss has not improved for "
                     f"{cfg.early_stop_patience} evaluations; best/ holds step {state['best_step']} "
                     f"(val loss {state['best_val_loss']:.3f})")
            break
        if cfg.save_every and state["step"] % cfg.save_every == 0:
            with run.timing.part("checkpoints"):
                save_run_checkpoint(run, state, run.out / CHECKPOINTS_DIR / f"step-{state['step']:07d}")
                if run.procs.is_main:
                    prune_checkpoints(run.out, cfg.keep_last)
    return outcome


def save_final(run: Run, state: dict[str, Any]) -> dict[str, str] | None:
    """final/ written while rank 0 plots the losses and draws the report's figures (returned): nothing
    changes the model or the optimizer any more. Under torchrun it is written in the open, as its
    collectives must meet every process's."""
    def save() -> None:
        save_run_checkpoint(run, state, run.out / "final")
        if run.procs.is_main and has_lora(run.raw_model):
            export_peft_adapter(run.raw_model, run.out / "final" / PEFT_DIR, base_model=run.cfg.init)

    if run.procs.distributed:
        with run.timing.part("checkpoints"):
            save()
        plot_run(run, state)
        return None
    with ThreadPoolExecutor(1) as pool:
        writing = pool.submit(save)
        plot_run(run, state)
        images = run_figures(run.out) if run.procs.is_main else None
        with run.timing.part("checkpoints"):
            writing.result()
    return images


def plot_run(run: Run, state: dict[str, Any]) -> None:
    if run.procs.is_main and state["train_losses"]:
        epochs_seen = [t / (run.steps_per_epoch * run.tokens_per_step) for t in state["track_tokens_seen"]]
        plot_losses(epochs_seen, state["track_tokens_seen"], state["train_losses"], state["val_losses"],
                    run.out / "loss.png")


def time_figures(run: Run, outcome: Outcome) -> dict[str, Any]:
    """The end record's split of the wall time and the steps' model FLOP utilisation."""
    steps_s = run.timing.seconds["steps"]
    flops = outcome.steps_run * run.tokens_per_step * outcome.flops_per_token
    mfu = flops / (steps_s * outcome.peak * run.procs.world_size) if outcome.peak and steps_s > 0 else None
    return {"time_split_s": run.timing.of(outcome.wall), "mfu": None if mfu is None else round(mfu, 4),
            "peak_flops": outcome.peak, "peak_source": outcome.peak_source}


def finish_run(run: Run, state: dict[str, Any], outcome: Outcome, started: float, before_train: float) -> None:
    """Save where the run ended (final/, or a checkpoint to resume a stopped run from) and log its end."""
    # Training's peak, before rank 0 gathers a sharded model to save it; measured here also because a
    # collective right before the process group is destroyed can deadlock gloo's shutdown.
    memory = [round(mb, 1) for mb in gather_over_processes(peak_memory_mb(run.device), run.procs, run.device)]
    run.optimizer.zero_grad(set_to_none=True)  # no step follows: the gradients' memory goes back too
    release_freed_memory()
    if outcome.stopped_by:
        path = run.out / CHECKPOINTS_DIR / f"step-{state['step']:07d}"
        with run.timing.part("checkpoints"):
            save_run_checkpoint(run, state, path)
        plot_run(run, state)
        run.echo(f"Stopped by {outcome.stopped_by} after step {state['step']}: saved {path}; "
                 f"continue with --resume --out {run.out}")
    else:
        outcome.report_figures = save_final(run, state)
    outcome.wall = time.perf_counter() - started
    outcome.cost = run_cost(outcome.wall, run.cfg.price_per_hour, run.procs.world_size)
    priced = {} if outcome.cost is None else {"cost": outcome.cost}
    run.log.write("end", step=state["step"] - 1, tokens_seen=state["tokens_seen"], wall_time_s=round(outcome.wall, 3),
                  stopped_by=outcome.stopped_by, early_stopped=outcome.early_stopped, peak_memory_mb=memory,
                  before_train_s=round(before_train, 3), **time_figures(run, outcome), **priced)
    run.echo("Peak memory per process: " + ", ".join(f"{mb:,.0f} MB" for mb in memory)
             + (" (allocated on the GPU)" if run.device.type == "cuda" else " (resident set size)"))


def summarise(run: Run, state: dict[str, Any], outcome: Outcome) -> dict[str, Any]:
    """The report (rank 0), the closing line, and the summary ``train`` returns."""
    cfg = run.cfg
    if run.procs.is_main:
        write_report(run.out, images=outcome.report_figures)
    if not outcome.stopped_by and (state["train_losses"] or not cfg.eval_freq):
        ended = (f"final train loss {state['train_losses'][-1]:.3f}, val loss {state['val_losses'][-1]:.3f}; "
                 f"checkpoints in {run.out}/final and {run.out}/best" if cfg.eval_freq
                 else f"evaluation was off (--eval-freq 0), so no losses and no best/; checkpoint in {run.out}/final")
        run.echo(f"Done in {outcome.wall:.1f} s: {ended}"
                 + ("" if outcome.cost is None else f"; cost {outcome.cost:,.2f} at {cfg.price_per_hour:g} per device-hour"))
    return {"run_dir": str(run.out), "steps": state["step"], "tokens_seen": state["tokens_seen"],
            "train_losses": state["train_losses"], "val_losses": state["val_losses"],
            "track_tokens_seen": state["track_tokens_seen"], "wall_time_s": outcome.wall,
            "stopped_by": outcome.stopped_by, "early_stopped": outcome.early_stopped, "best_step": state["best_step"],
            "best_val_loss": state["best_val_loss"]}


def print_line(line: str) -> None:
    """Print above the progress bar and flush: logs go to files under schedulers and torchrun, and a
    stopped process must not lose its last lines."""
    tqdm.write(line)
    sys.stdout.flush()


@locks_run_dir
def train(cfg: TrainConfig, *, overwrite: bool = False, resume: bool = False,
          echo: Callable[[str], None] = print_line) -> dict[str, Any]:
    """Run ``cfg`` end to end and return a summary; writes the run directory ``cfg.out``.

    The run directory holds ``config.json`` and ``train.toml`` (the resolved settings; ``gptrain train
    --config RUN/train.toml`` repeats the run), ``metrics.jsonl`` (one JSON line per step, evaluation
    and sample), ``loss.png``, ``report.html``, ``best/`` (weights
    with the lowest validation loss), ``final/`` and, with ``save_every``, ``checkpoints/step-N/``. With
    ``resume`` it continues from the latest complete checkpoint there. Under torchrun only rank
    0 logs, samples and saves.
    """
    started, before_train = time.perf_counter(), process_age()
    run = build_run(cfg, echo if is_main_process() else (lambda line: None))
    cfg = run.cfg  # resolved
    evaluates = run.procs.is_main or cfg.fsdp  # a sharded model's forward pass needs every process
    state = new_state()
    eval_tasks = load_training_tasks(cfg.eval_task, cfg.eval_task_limit) if evaluates else []
    start_run(run, state, overwrite, resume)
    if cfg.init is not None:
        run.echo(describe_start(cfg, run.raw_model))
        if evaluates and cfg.eval_freq and state["step"] == 0:
            log_evaluation(run, state, 0, started, initial=True)
    progress = tqdm(total=run.total_steps, initial=state["step"], desc="train", unit="step",
                    disable=None if run.procs.is_main else True, leave=False)
    if progress.disable or not sys.stdout.isatty():
        run.pace = Pace(run.total_steps, state["step"], state["tokens_seen"], started)
    try:
        with StopOnSignal() as stop:
            outcome = run_steps(run, state, stop, progress, eval_tasks, evaluates, started)
            finish_run(run, state, outcome, started, before_train)
    except BaseException as exc:
        if run.procs.distributed and isinstance(exc, Exception):  # the cause a restart by torchrun logs
            cause = f"{type(exc).__name__}: {str(exc).strip()}".split(". ")[0].splitlines()[0][:300]
            run.log.write("failed", step=state["step"], rank=run.procs.rank, cause=cause, time=time.time())
        run.log.finish(failed=True)
        raise
    finally:
        progress.close()
        run.log.close()
        if run.procs.distributed and dist.is_initialized():
            dist.destroy_process_group()
    summary = summarise(run, state, outcome)
    run.log.finish(run.out / REPORT_FILE)
    return summary
