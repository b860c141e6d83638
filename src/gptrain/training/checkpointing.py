"""A run's checkpoints and folder: saving the run (weights, optimizer, RNGs, position), restoring it for
``--resume``, and making the run directory ready."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist

from gptrain.core.errors import GptrainError
from gptrain.core.oserrors import check_output_dir
from gptrain.model.gpt import GPTModel
from gptrain.model.lora import ADAPTER_FILE, has_lora, load_adapter
from gptrain.reporting.metrics import logged_training, truncate_metrics
from gptrain.store.checkpoint import (
    CHECKPOINTS_DIR,
    OPTIMIZER_DIR,
    complete_checkpoints,
    copy_weights_into,
    load_training_state,
    read_checkpoint_config,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from gptrain.training.optim import apply_group_settings
from gptrain.training.parallel import gather_weights, load_optimizer, load_weights, save_optimizer
from gptrain.training.resume import resume_differences
from gptrain.training.run import Run, new_state
from gptrain.training.transfer import check_same_transfer


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


def resume_latest(run: Run, state: dict[str, Any]) -> tuple[int, Path, dict[str, list[Any]]]:
    """Restore the run directory's latest complete checkpoint: its step, path and the settings changed since."""
    checkpoints = complete_checkpoints(run.out)
    if not checkpoints:
        fix = ("train without --resume" if failed_start(run.out)
               else "pass --overwrite instead of --resume to start it again, or choose another --out")
        raise GptrainError(f"{run.out} holds no complete checkpoint to resume from: {fix}")
    step, path = checkpoints[-1]
    changed = restore(run, state, path)
    if run.procs.is_main:
        truncate_metrics(run.out, step)
    run.echo(f"Resuming from {path} (step {step}, {state['tokens_seen']:,} tokens seen)")
    return step, path, changed


def resume_mode(resume: str | None, out: Path) -> tuple[bool, bool]:
    """(resume, start over) for ``--resume [auto]``: auto resumes when ``out`` holds a complete checkpoint
    and otherwise starts the run again from step 0, over whatever an attempt without one left there, so
    that the same command serves every attempt under ``torchrun --max-restarts``."""
    if resume != "auto":
        return resume is not None, False
    has_checkpoint = bool(complete_checkpoints(out))
    return has_checkpoint, not has_checkpoint
