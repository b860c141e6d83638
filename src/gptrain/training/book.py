"""The lecture's training loops and helpers, as the book prints them (chapters 5 and 6)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gptrain.core.files import atomic_path
from gptrain.inference.generate import generate_and_print_sample
from gptrain.model.loss import (
    calc_accuracy_loader,
    calc_loss_batch,
    calc_loss_batch_classifier,
    calc_loss_loader,
    calc_loss_loader_classifier,
)


def evaluate_model(model: nn.Module, train_loader, val_loader, device, eval_iter: int) -> tuple[float, float]:
    """Mean loss over the first ``eval_iter`` batches of each loader, in eval mode, without gradients."""
    return _evaluate(calc_loss_loader, model, train_loader, val_loader, device, eval_iter)


def _evaluate(loss_loader, model: nn.Module, train_loader, val_loader, device, eval_iter: int) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        train_loss = loss_loader(train_loader, model, device, num_batches=eval_iter)
        val_loss = loss_loader(val_loader, model, device, num_batches=eval_iter)
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
    """Save the book's plot: train and validation loss against epochs, tokens seen on a second x-axis.

    A single evaluation is drawn as points (a line needs two) on axes with fewer ticks, whose
    labels would otherwise crowd a range matplotlib widens around one value."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never open a window, works without a display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs_seen = [float(e) for e in epochs_seen]
    single = len(epochs_seen) == 1
    marker = "o" if single else None
    fig, ax1 = plt.subplots(figsize=(5, 3))
    ax1.plot(epochs_seen, train_losses, marker=marker, label="Training loss")
    ax1.plot(epochs_seen, val_losses, linestyle="-.", marker=marker, label="Validation loss")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel("Loss")
    if log_scale:
        ax1.set_yscale("log")
    ax1.legend(loc="upper right")
    ax1.xaxis.set_major_locator(MaxNLocator(nbins=3 if single else "auto", integer=True))
    ax2 = ax1.twiny()
    ax2.plot(list(tokens_seen), train_losses, alpha=0)  # invisible: only aligns the token ticks
    if single:
        ax2.xaxis.set_major_locator(MaxNLocator(nbins=3))
    ax2.set_xlabel("Tokens seen")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=150)
    plt.close(fig)
    return path




# --- Chapter 6: fine-tuning for classification ---

def evaluate_model_classifier(model: nn.Module, train_loader, val_loader, device, eval_iter: int) -> tuple[float, float]:
    """The book's chapter 6 ``evaluate_model``: the classification loss of the first ``eval_iter`` batches."""
    return _evaluate(calc_loss_loader_classifier, model, train_loader, val_loader, device, eval_iter)


def train_classifier_simple(model: nn.Module, train_loader, val_loader, optimizer: torch.optim.Optimizer, device,
                            num_epochs: int, eval_freq: int, eval_iter: int):
    """The book's chapter 6 loop; returns ``(train_losses, val_losses, train_accs, val_accs, examples_seen)``.

    As chapter 5's loop, but on the last token's class logits; it counts examples rather than tokens and
    prints the train and validation accuracy of ``eval_iter`` batches after each epoch.
    """
    train_losses, val_losses, train_accs, val_accs = [], [], [], []
    examples_seen, global_step = 0, -1
    for epoch in range(num_epochs):
        model.train()
        for input_batch, target_batch in train_loader:
            optimizer.zero_grad()
            loss = calc_loss_batch_classifier(input_batch, target_batch, model, device)
            loss.backward()
            optimizer.step()
            examples_seen += input_batch.shape[0]
            global_step += 1
            if global_step % eval_freq == 0:
                train_loss, val_loss = evaluate_model_classifier(model, train_loader, val_loader, device, eval_iter)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                print(f"Ep {epoch + 1} (Step {global_step:06d}): "
                      f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")
        train_accuracy = calc_accuracy_loader(train_loader, model, device, num_batches=eval_iter)
        val_accuracy = calc_accuracy_loader(val_loader, model, device, num_batches=eval_iter)
        print(f"Training accuracy: {train_accuracy * 100:.2f}% | ", end="")
        print(f"Validation accuracy: {val_accuracy * 100:.2f}%")
        train_accs.append(train_accuracy)
        val_accs.append(val_accuracy)
    return train_losses, val_losses, train_accs, val_accs, examples_seen
