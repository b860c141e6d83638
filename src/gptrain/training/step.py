"""One training step and the windows it reads: shared by the loop and by estimate --measure."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gptrain.core.errors import GptrainError
from gptrain.data.corpus import TokenWindows
from gptrain.data.splits import split_tokens
from gptrain.training.config import TrainConfig


def load_windows(cfg: TrainConfig, context_length: int) -> tuple[TokenWindows, TokenWindows]:
    """Train and validation windows: a prepared shard folder (memmapped), or text split as the book does."""
    stride = cfg.stride or context_length
    windows = []
    for name, tokens in split_tokens(cfg.data, cfg.train_ratio, cfg.text_field).items():
        try:
            windows.append(TokenWindows(tokens, context_length, stride if name == "train" else context_length))
        except GptrainError as exc:
            raise GptrainError(f"{cfg.data} ({name} split): {exc}") from None
    return windows[0], windows[1]


def epoch_order(num_windows: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled window order of one epoch: a function of (seed, epoch) alone, so a resumed or
    distributed run sees the same order without carrying sampler state."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_windows, generator=generator)


def rank_offsets(rank: int, world_size: int, batch_size: int, grad_accum: int) -> list[int]:
    """Where each of this rank's micro-batches starts in a step's global batch: the data shard of a
    global rank, the same on one node or several."""
    return [(micro * world_size + rank) * batch_size for micro in range(grad_accum)]


def collate(windows: TokenWindows, indices) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [windows[int(i)] for i in indices]
    return torch.stack([x for x, _ in pairs]), torch.stack([y for _, y in pairs])


def forward_backward(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, autocast,
                     loss_scale: float = 1.0, scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """Forward pass, cross-entropy and backward pass of one micro-batch; returns the detached loss.

    ``autocast`` is a callable giving the precision context; ``loss_scale`` weighs a micro-batch's
    share of an accumulated step.
    """
    with autocast():
        logits = model(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
    scaled = loss * loss_scale
    (scaler.scale(scaled) if scaler is not None else scaled).backward()
    return loss.detach()


