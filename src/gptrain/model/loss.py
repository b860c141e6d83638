"""Cross-entropy of next-token predictions: the lecture's manual steps and the one-call version."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gptrain.core.errors import GptrainError


def calc_loss_batch(input_batch: torch.Tensor, target_batch: torch.Tensor, model: nn.Module,
                    device: torch.device | str) -> torch.Tensor:
    """Mean cross-entropy of one batch (a scalar tensor that can be backpropagated)."""
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = model(input_batch)
    return F.cross_entropy(logits.flatten(0, 1), target_batch.flatten())


def mean_batch_loss(data_loader, num_batches: int, batch_loss) -> float:
    """The mean of ``batch_loss(inputs, targets)`` over the loader's first ``num_batches`` batches."""
    total_loss = 0.0
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i >= num_batches:
            break
        total_loss += batch_loss(input_batch, target_batch).item()
    return total_loss / num_batches


def calc_loss_loader(data_loader, model: nn.Module, device: torch.device | str,
                     num_batches: int | None = None) -> float:
    """Average of the per-batch losses over the first ``num_batches`` batches (all by default)."""
    if len(data_loader) == 0:
        raise GptrainError(
            "the data loader has no batches, so there is no loss to compute: "
            "give more text, or a smaller batch size or context length"
        )
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    if num_batches < 1:
        raise GptrainError(f"num_batches must be at least 1, not {num_batches}")
    return mean_batch_loss(data_loader, num_batches, lambda x, y: calc_loss_batch(x, y, model, device))


def calc_loss_manual(input_batch: torch.Tensor, target_batch: torch.Tensor, model: nn.Module,
                     device: torch.device | str) -> torch.Tensor:
    """The lecture's steps spelled out: softmax, pick each target's probability, log, negate, mean."""
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = model(input_batch)
    logits_flat = logits.flatten(0, 1)
    targets_flat = target_batch.flatten()
    probabilities = torch.softmax(logits_flat, dim=1)
    target_probs = probabilities[torch.arange(len(targets_flat), device=targets_flat.device), targets_flat]
    # The lecture adds 1e-9 to keep log(0) finite; with p near 1/50257 that shifts the loss by 5e-5.
    # Clamping at the smallest normal float guards log(0) the same way and changes nothing else.
    log_probs = torch.log(target_probs.clamp_min(torch.finfo(target_probs.dtype).tiny))
    return -log_probs.mean()


def calc_loss_pytorch(input_batch: torch.Tensor, target_batch: torch.Tensor, model: nn.Module,
                      device: torch.device | str) -> torch.Tensor:
    """The same loss in one call to ``F.cross_entropy`` (softmax, log, pick, negate and mean fused)."""
    return calc_loss_batch(input_batch, target_batch, model, device)


def perplexity(loss: float | torch.Tensor) -> float:
    """exp(cross-entropy): the effective number of tokens the model hesitates between."""
    return math.exp(float(loss))


# --- Chapter 6: one class label per row, scored on the last position's logits ---

def calc_loss_batch_classifier(input_batch: torch.Tensor, target_batch: torch.Tensor, model: nn.Module,
                               device: torch.device | str) -> torch.Tensor:
    """The book's chapter 6 ``calc_loss_batch``: cross-entropy of the last token's logits against each
    row's class."""
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = model(input_batch)[:, -1, :]
    return F.cross_entropy(logits, target_batch)


def calc_loss_loader_classifier(data_loader, model: nn.Module, device: torch.device | str,
                                num_batches: int | None = None) -> float:
    """The book's chapter 6 ``calc_loss_loader``: the mean batch loss over the first ``num_batches``
    batches (all by default); NaN for an empty loader, as the book returns."""
    if len(data_loader) == 0:
        return float("nan")
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    return mean_batch_loss(data_loader, num_batches,
                           lambda x, y: calc_loss_batch_classifier(x, y, model, device))


def calc_accuracy_loader(data_loader, model: nn.Module, device: torch.device | str,
                         num_batches: int | None = None) -> float:
    """The share of rows whose last-token argmax is their class, over the first ``num_batches``
    batches (all by default), in eval mode."""
    model.eval()
    correct, seen = 0, 0
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i >= num_batches:
            break
        input_batch, target_batch = input_batch.to(device), target_batch.to(device)
        with torch.no_grad():
            predicted = torch.argmax(model(input_batch)[:, -1, :], dim=-1)
        seen += predicted.shape[0]
        correct += (predicted == target_batch).sum().item()
    return correct / seen
