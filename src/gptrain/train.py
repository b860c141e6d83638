"""Training: the lecture's loop as the book writes it, and the configurable run behind ``gptrain train``."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from gptrain.checkpoint import save_checkpoint, write_json_atomic
from gptrain.config import TrainConfig
from gptrain.data import create_dataloader_v1, load_corpus, split_text
from gptrain.errors import GptrainError
from gptrain.generate import generate, generate_and_print_sample
from gptrain.loss import calc_loss_batch, calc_loss_loader
from gptrain.model import GPTModel, count_parameters
from gptrain.tokenizer import get_tokenizer, text_to_token_ids, token_ids_to_text


# --- The lecture's functions ---------------------------------------------------------------

def evaluate_model(model: nn.Module, train_loader, val_loader, device, eval_iter: int) -> tuple[float, float]:
    """Mean loss over the first ``eval_iter`` batches of each loader, in eval mode, without gradients."""
    model.eval()
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, num_batches=eval_iter)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches=eval_iter)
    model.train()
    return train_loss, val_loss


def train_model_simple(model: nn.Module, train_loader, val_loader, optimizer: torch.optim.Optimizer, device,
                       num_epochs: int, eval_freq: int, eval_iter: int, start_context: str, tokenizer, *,
                       grad_clip: float | None = None, scheduler=None):
    """The book's training loop; returns ``(train_losses, val_losses, track_tokens_seen)``.

    The eight steps: for each epoch (1) and batch (2), zero the gradients (3), compute the
    loss (4), backpropagate (5), optionally clip the gradient norm (7, ``grad_clip``), update
    the weights (6) and step the optional learning-rate ``scheduler`` (8). Every
    ``eval_freq`` steps it prints the train and validation loss, and after each epoch a
    greedy sample continuing ``start_context``. With the defaults it is the book's code.
    """
    train_losses, val_losses, track_tokens_seen = [], [], []
    tokens_seen, global_step = 0, -1
    for epoch in range(num_epochs):
        model.train()
        for input_batch, target_batch in train_loader:
            optimizer.zero_grad()
            loss = calc_loss_batch(input_batch, target_batch, model, device)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            tokens_seen += input_batch.numel()
            global_step += 1
            if global_step % eval_freq == 0:
                train_loss, val_loss = evaluate_model(model, train_loader, val_loader, device, eval_iter)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                track_tokens_seen.append(tokens_seen)
                print(f"Ep {epoch + 1} (Step {global_step:06d}): "
                      f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")
        generate_and_print_sample(model, tokenizer, device, start_context)
    return train_losses, val_losses, track_tokens_seen


def plot_losses(epochs_seen, tokens_seen, train_losses, val_losses, path: str | Path = "loss.png",
                log_scale: bool = False) -> Path:
    """Save the book's plot: train and validation loss against epochs, tokens seen on a second x-axis."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never open a window, works without a display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs_seen = [float(e) for e in epochs_seen]
    fig, ax1 = plt.subplots(figsize=(5, 3))
    ax1.plot(epochs_seen, train_losses, label="Training loss")
    ax1.plot(epochs_seen, val_losses, linestyle="-.", label="Validation loss")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel("Loss")
    if log_scale:
        ax1.set_yscale("log")
    ax1.legend(loc="upper right")
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2 = ax1.twiny()
    ax2.plot(list(tokens_seen), train_losses, alpha=0)  # invisible: only aligns the token ticks
    ax2.set_xlabel("Tokens seen")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=150)
    plt.close(fig)
    tmp.replace(path)
    return path


# --- The configurable run ---------------------------------------------------------------------

def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GptrainError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GptrainError("--device cuda was asked for but no CUDA GPU is available: use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise GptrainError("--device mps was asked for but MPS is not available: use --device cpu")
    return device


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Linear warmup over ``warmup_steps``, then constant or (``cosine``) decaying to ``min_lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if not cfg.cosine:
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW that decays only matrices (weights, embeddings), not biases or norm parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr)


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl``, flushed at once."""

    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "a", encoding="utf-8")

    def write(self, event: str, **fields: Any) -> None:
        self._file.write(json.dumps({"event": event, **fields}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def prepare_run_dir(out: Path, overwrite: bool) -> None:
    existing = [name for name in ("metrics.jsonl", "final", "best") if (out / name).exists()]
    if existing and not overwrite:
        raise GptrainError(
            f"{out} already holds a run ({', '.join(existing)}): choose another --out or pass --overwrite"
        )
    out.mkdir(parents=True, exist_ok=True)
    if (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()


def sample_text(model: nn.Module, tokenizer, device, start_context: str, max_new_tokens: int) -> str:
    idx = text_to_token_ids(start_context, tokenizer).to(device)
    out = generate(model, idx, max_new_tokens, model.cfg.context_length)
    return token_ids_to_text(out, tokenizer)


def train(cfg: TrainConfig, *, overwrite: bool = False, echo: Callable[[str], None] = tqdm.write) -> dict[str, Any]:
    """Run ``cfg`` end to end and return a summary; writes the run directory ``cfg.out``.

    The run directory holds ``config.json`` (the resolved settings), ``metrics.jsonl`` (one
    line per evaluation and sample), ``loss.png``, ``best/`` (lowest validation loss) and
    ``final/``.
    """
    started = time.perf_counter()
    out = Path(cfg.out)
    device = resolve_device(cfg.device)
    model_cfg = cfg.model_config()
    tokenizer = get_tokenizer()
    train_text, val_text = split_text(load_corpus(cfg.data), cfg.train_ratio)
    stride = cfg.stride or model_cfg.context_length

    # Seeded right before the model, as the book does: same seed, same initial weights as its GPTModel.
    torch.manual_seed(cfg.seed)
    model = GPTModel(model_cfg).to(device)
    loader_rng = torch.Generator().manual_seed(cfg.seed)
    try:
        train_loader = create_dataloader_v1(train_text, cfg.batch_size, model_cfg.context_length, stride,
                                            shuffle=True, drop_last=True, tokenizer=tokenizer, generator=loader_rng)
        val_loader = create_dataloader_v1(val_text, cfg.batch_size, model_cfg.context_length, stride,
                                          shuffle=False, drop_last=False, tokenizer=tokenizer)
    except GptrainError as exc:
        raise GptrainError(f"{cfg.data}: {exc}") from None
    if len(train_loader) == 0:
        raise GptrainError(
            f"the training split has {len(train_loader.dataset)} window(s), fewer than one batch of "
            f"{cfg.batch_size}: use a smaller --batch-size or --context-length, or more text"
        )
    # Train loss is measured on fixed batches: reshuffling for evaluation would move the data order.
    train_eval_loader = torch.utils.data.DataLoader(train_loader.dataset, batch_size=cfg.batch_size, shuffle=False)
    optimizer = make_optimizer(model, cfg)

    prepare_run_dir(out, overwrite)
    run_config = {"model": model_cfg.to_dict(), "train": cfg.to_dict()}
    write_json_atomic(out / "config.json", run_config)
    log = MetricsLog(out / "metrics.jsonl")
    total_steps = cfg.epochs * len(train_loader)
    echo(f"Training {count_parameters(model):,} parameters on {device} for {total_steps} steps "
         f"({cfg.epochs} epochs x {len(train_loader)} batches of {cfg.batch_size} x {model_cfg.context_length} tokens)")

    state = {"step": 0, "tokens_seen": 0, "best_val_loss": math.inf,
             "train_losses": [], "val_losses": [], "track_tokens_seen": []}
    progress = tqdm(total=total_steps, desc="train", unit="step", disable=None, leave=False)
    try:
        for epoch in range(cfg.epochs):
            model.train()
            for input_batch, target_batch in train_loader:
                lr = lr_at(state["step"], cfg, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                loss = calc_loss_batch(input_batch, target_batch, model, device)
                if not torch.isfinite(loss):
                    raise GptrainError(
                        f"the loss became {loss.item()} at step {state['step']}: lower --lr or keep --grad-clip on"
                    )
                loss.backward()
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                state["tokens_seen"] += input_batch.numel()
                global_step = state["step"]  # the book's numbering: 0 is the first update
                state["step"] += 1
                progress.update(1)
                progress.set_postfix(loss=f"{loss.item():.3f}")
                if global_step % cfg.eval_freq == 0:
                    train_loss, val_loss = evaluate_model(model, train_eval_loader, val_loader, device, cfg.eval_iter)
                    state["train_losses"].append(train_loss)
                    state["val_losses"].append(val_loss)
                    state["track_tokens_seen"].append(state["tokens_seen"])
                    elapsed = time.perf_counter() - started
                    log.write("eval", step=global_step, epoch=epoch + 1, tokens_seen=state["tokens_seen"],
                              train_loss=train_loss, val_loss=val_loss, lr=lr, elapsed_s=round(elapsed, 3))
                    echo(f"Ep {epoch + 1} (Step {global_step:06d}): "
                         f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")
                    if val_loss < state["best_val_loss"]:
                        state["best_val_loss"] = val_loss
                        save_checkpoint(model, out / "best", train_config=cfg.to_dict(),
                                        training_state={"step": state["step"], "tokens_seen": state["tokens_seen"],
                                                        "val_loss": val_loss})
            sample = sample_text(model, tokenizer, device, cfg.start_context, cfg.sample_tokens)
            log.write("sample", step=state["step"] - 1, epoch=epoch + 1, text=sample)
            echo(sample.replace("\n", " "))
    finally:
        progress.close()
        log.close()

    save_checkpoint(model, out / "final", optimizer, train_config=cfg.to_dict(),
                    training_state={"step": state["step"], "tokens_seen": state["tokens_seen"]})
    if state["train_losses"]:
        epochs_seen = torch.linspace(0, cfg.epochs, len(state["train_losses"])).tolist()
        plot_losses(epochs_seen, state["track_tokens_seen"], state["train_losses"], state["val_losses"],
                    out / "loss.png")
    wall = time.perf_counter() - started
    echo(f"Done in {wall:.1f} s: final train loss {state['train_losses'][-1]:.3f}, "
         f"val loss {state['val_losses'][-1]:.3f}; checkpoints in {out}/final and {out}/best")
    return {"run_dir": str(out), "steps": state["step"], "tokens_seen": state["tokens_seen"],
            "train_losses": state["train_losses"], "val_losses": state["val_losses"],
            "track_tokens_seen": state["track_tokens_seen"], "wall_time_s": wall}
