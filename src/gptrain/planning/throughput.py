"""Throughput measured on this machine: real training steps timed."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from gptrain.core.runtime import (
    PAD_VOCAB_MULTIPLE,
    autocast_context,
    pads_vocab,
    prepare_device,
)
from gptrain.model.config import GPTConfig
from gptrain.model.gpt import GPTModel
from gptrain.model.vocab_padding import pad_vocab
from gptrain.training.config import TrainConfig
from gptrain.training.optim import make_optimizer
from gptrain.training.step import forward_backward


@dataclass
class Measured:
    tokens_per_s: float
    eval_tokens_per_s: float
    build_s: float  # building the model and its optimizer, which a run pays before its first step


def measure_throughput(cfg: GPTConfig, batch_size: int, grad_accum: int, precision: str,
                       device: torch.device, min_seconds: float = 10.0, min_steps: int = 3,
                       compile: bool = False) -> Measured:
    """Run real training steps (gptrain train's optimizer and forward-backward) on random tokens and time them.

    Two warm-up steps (allocations, kernel selection, the heap growing to its size, ``compile``'s
    compilation as ``gptrain train --compile`` does it) are not counted;
    then steps run for at least ``min_seconds``, so that a machine whose load varies is averaged
    over a while. Evaluation's forward passes are timed separately.
    """

    prepare_device(device)
    started = time.perf_counter()
    torch.manual_seed(0)
    model = GPTModel(cfg).to(device)
    if pads_vocab(device):
        pad_vocab(model, PAD_VOCAB_MULTIPLE)
    optimizer = make_optimizer(model, TrainConfig(), device)
    stepped = torch.compile(model) if compile else model
    build_s = time.perf_counter() - started
    autocast = lambda: autocast_context(device.type, precision)  # noqa: E731
    batch = torch.randint(0, cfg.vocab_size, (batch_size, cfg.context_length + 1), device=device)
    inputs, targets = batch[:, :-1], batch[:, 1:]

    def step():
        optimizer.zero_grad(set_to_none=True)
        for _ in range(grad_accum):
            forward_backward(stepped, inputs, targets, autocast, 1.0 / grad_accum)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # gptrain train clips by default
        optimizer.step()
        torch.cuda.synchronize(device) if device.type == "cuda" else None

    def timed(run_once, seconds: float) -> float:
        """Seconds per call of ``run_once``, over at least min_steps calls and ``seconds``."""
        count, started = 0, time.perf_counter()
        while count < min_steps or time.perf_counter() - started < seconds:
            run_once()
            count += 1
        return (time.perf_counter() - started) / count

    step()
    step()
    train_seconds = timed(step, min_seconds)
    model.eval()
    with torch.no_grad(), autocast():
        eval_seconds = timed(lambda: model(inputs).float().sum().item(), min_seconds / 4)
    tokens = batch_size * cfg.context_length
    return Measured(tokens_per_s=grad_accum * tokens / train_seconds, eval_tokens_per_s=tokens / eval_seconds,
                    build_s=build_s)
