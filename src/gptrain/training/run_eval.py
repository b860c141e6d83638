"""A run's evaluations: losses on the train and val windows, best/ kept, overfitting warned about,
task scores, and samples of text."""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gptrain.data.corpus import TokenWindows
from gptrain.data.instructions import IGNORE_INDEX, InstructionExamples
from gptrain.data.tokenizer import text_to_token_ids, token_ids_to_text
from gptrain.evaluation.tasks import log_task_scores
from gptrain.inference.generate import generate
from gptrain.model.gpt import unwrap_model
from gptrain.training.checkpointing import model_to_save
from gptrain.training.run import Run
from gptrain.training.step import collate

# Windows per evaluation pass: at least a training micro-batch, and at least this many tokens so
# that the products stay efficient. Larger passes are slower, not faster: the vocabulary-wide logits
# (and their fp32 copy for the loss) outgrow the caches and the heap the training steps left free
# (lecture run, 124M at context 256 under bf16: 1.1 s an evaluation at 512 tokens a pass, 2.0 s at
# 4,096). Autocast casts each weight once for all the passes of an evaluation.
EVAL_CHUNK_TOKENS = 512


@torch.no_grad()
def windows_loss(run: Run, windows: TokenWindows | InstructionExamples, batches: int) -> float:
    """Mean loss over the first ``batches`` global batches of windows, in order.

    Global batches make the figure independent of how a step is split into micro-batches and
    processes; averaging per token equals the book's mean of batch means for full batches.
    """
    count = min(len(windows), batches * run.global_batch)
    chunk = max(run.cfg.batch_size, EVAL_CHUNK_TOKENS // windows.max_length) * run.procs.world_size
    total, scored = 0.0, 0
    for start in range(0, count, chunk):
        inputs, targets = collate(windows, range(start, min(start + chunk, count)))
        logits = run.raw_model(inputs.to(run.device))
        total += F.cross_entropy(logits.flatten(0, 1).float(), targets.to(run.device).flatten(),
                                 reduction="sum").item()
        scored += int((targets != IGNORE_INDEX).sum())  # an instruction example's prompt and padding count not
    return total / scored


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
    with run.timing.part("evaluation"):
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
        with run.timing.part("checkpoints"):
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


def evaluate_after_step(run: Run, state: dict[str, Any], epoch_before: int, eval_tasks: list,
                        evaluates: bool, started: float) -> bool:
    """What follows a step: an evaluation when due, task scores, a sample after each epoch; True when
    early stopping says stop."""
    cfg, global_step = run.cfg, state["step"] - 1
    early_stop = False
    # Also at the last step: the summary's "final" losses and best/ must not be older than the run.
    last = state["step"] == run.total_steps
    if evaluates and cfg.eval_freq and (global_step % cfg.eval_freq == 0 or last):
        early_stop = log_evaluation(run, state, global_step, started)
    if eval_tasks and global_step % (cfg.eval_task_every or cfg.eval_freq) == 0:
        with run.timing.part("evaluation"):
            log_task_scores(run, eval_tasks, global_step, state["tokens_seen"])
    if evaluates and state["epoch"] > epoch_before and cfg.sample_tokens:
        with run.timing.part("sampling"):
            sample = sample_text(run.raw_model, run.tokenizer, run.device, cfg.start_context, cfg.sample_tokens)
        run.log.write("sample", step=global_step, epoch=state["epoch"], text=sample)
        run.echo(sample.replace("\n", " "))
    return early_stop
