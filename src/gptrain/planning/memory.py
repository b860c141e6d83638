"""Memory per device in a training step, from the model's shape and the plan.

The weights, gradients and AdamW's two moments (fp32 each), the low-precision weight copies
autocast keeps for the backward pass, and the activations saved for it, walked through the backward
pass to find the peak; on a CPU also what the process itself holds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from gptrain.core.runtime import autocast_context
from gptrain.model.config import GPTConfig
from gptrain.model.counts import parameter_counts
from gptrain.model.gpt import GPTModel
from gptrain.training.config import TrainConfig
from gptrain.training.optim import make_optimizer
from gptrain.training.step import forward_backward

GiB = 1024 ** 3
CUDA_CONTEXT_BYTES = 1 * GiB  # the CUDA context and allocator slack, which no tensor accounts for


def activation_bytes(cfg: GPTConfig, batch_size: int, precision: str, *, math_attention: bool,
                     checkpointing: bool = False) -> dict[str, int]:
    """Bytes the forward pass of one micro-batch saves for the backward pass.

    Counted tensor by tensor from what autograd keeps (gptrain's blocks under autocast; checked in
    tests/test_estimate.py against ``saved_tensors_hooks``). The residual stream and layer norms stay
    fp32; products run in the autocast dtype (``e`` bytes). ``math_attention`` is PyTorch's reference
    attention, which SDPA uses on a CPU when training with dropout: it upcasts to fp32 and keeps
    three (heads x T x T) maps per layer. Fused kernels keep q, k, v and a log-sum-exp per head.
    With ``checkpointing`` each block keeps only its input and recomputes the rest in the backward
    pass, so one block's activations are live at a time.
    """
    n, d, h, s = batch_size * cfg.context_length, cfg.emb_dim, cfg.n_heads, cfg.context_length
    e = 4 if precision == "fp32" else 2
    dropout = cfg.drop_rate > 0
    # Layer-norm inputs (fp32) and their mean and 1/std (2 x 4 bytes a token), for both norms.
    norms = 2 * (4 * n * d + 8 * n)
    # The inputs of the q/k/v products: fp32 once, or one autocast copy per product.
    qkv_inputs = 4 * n * d if e == 4 else 3 * e * n * d
    if math_attention and dropout:
        attention = 3 * 4 * n * d + 3 * 4 * n * h * s
    else:
        attention = 3 * e * n * d + 4 * n * h
    # out_proj's input, the feed-forward's input, its 4d hidden layer before and after GELU.
    products = e * n * d + e * n * d + 2 * 4 * e * n * d
    residual_masks = 2 * e * n * d if dropout else 0
    block = norms + qkv_inputs + attention + products + residual_masks
    # Around the blocks: the embedding dropout's mask, the final norm, the head's input and the fp32
    # log-softmax that cross-entropy keeps (vocabulary-wide: the largest single tensor).
    outer = (4 * n * d if dropout else 0) + 4 * n * d + 8 * n + e * n * d + 4 * n * cfg.vocab_size
    if checkpointing:
        return {"blocks": cfg.n_layers * 4 * n * d + block, "outer": outer}
    return {"blocks": cfg.n_layers * block, "outer": outer}


@dataclass
class Memory:
    """Bytes per device at the peak of a training step, by what holds them."""

    weights: int
    gradients: int
    optimizer: int
    low_precision_weights: int
    activations: int
    activations_checkpointed: int
    backward_transient: int
    retained_heap: int  # what a heap that keeps freed memory holds beyond the step's live tensors
    best_weights: int  # the copy of the weights with the lowest validation loss, kept for best/
    overhead: int  # the interpreter, torch and its first step's set-up (CPU), or the CUDA context
    peak: int
    peak_checkpointed: int
    capacity: int | None
    fits: bool | None
    max_batch_size: int
    max_batch_size_checkpointed: int


def memory_per_device(cfg: GPTConfig, batch_size: int, precision: str, *, distribution: str = "single",
                      devices: int = 1, math_attention: bool = False, capacity: int | None = None,
                      overhead: int = 0, retained_heap: bool = False, best_copy: bool = False) -> Memory:
    """The peak memory of one device in a training step, and the largest micro-batch that fits.

    The peak falls either at the start of the backward pass (all activations live, the head's
    gradient and the logits' gradient just made) or at its end (all gradients, activations freed),
    whichever is larger; AdamW's moments and the weights are there throughout. DDP adds a bucket
    copy of the gradients; FSDP shards weights, gradients and moments over the devices and gathers
    one block's weights (and the next, prefetched) at a time.

    ``retained_heap``: the process keeps freed memory (``runtime.retain_freed_memory``, gptrain train
    on a CPU). Then from the second step on the heap also holds, as holes the next step's allocations
    do not fit, about one more step's activations under autocast and the logits' copy in the compute
    dtype (estimate against the measured peak RSS of 3 steps, bf16, benchmarks/results/estimate.txt: tiny
    at context 128, micro-batch 8 and 32: -1.8% and -5.6%; 6 x 384 at context 256, micro-batch 4 and 16:
    -4.7% and +11.5%, where the heap reuses more of its holes than this assumes).

    ``best_copy``: the run keeps, from its first evaluation on, an fp32 copy of the weights with the
    lowest validation loss (``gptrain train``'s best/, on the process that writes it). Without it the
    lecture's run measured 1.17x the estimate (4,455 MiB against 3,823); with it, within 1%.
    """
    counts = parameter_counts(cfg)
    params, shard = counts.total, devices if distribution == "fsdp" else 1
    lowp = 0 if precision == "fp32" else 2 * counts.matrix
    weights, gradients, optimizer = 4 * params // shard, 4 * params // shard, 8 * params // shard
    gathered = 2 * 4 * (params - counts.embedding) // cfg.n_layers if distribution == "fsdp" and devices > 1 else 0
    bucket = 4 * params if distribution == "ddp" and devices > 1 else 0
    head_gradient = 4 * cfg.vocab_size * cfg.emb_dim
    best = 4 * params if best_copy else 0
    e = 4 if precision == "fp32" else 2

    def peak_at(batch: int, checkpointing: bool) -> tuple[int, int, int, int]:
        acts = sum(activation_bytes(cfg, batch, precision, math_attention=math_attention,
                                    checkpointing=checkpointing).values())
        # The backward pass begins at the vocabulary-wide tensors while every activation is live. The
        # logits stay held until the step ends; beside the saved log-softmax (an activation) come the
        # gradient of the negative log-likelihood and that of the log-softmax (fp32 each). Once those
        # are used, the logits' gradient (autocast dtype) and the head's weight gradient take their place.
        logits = batch * cfg.context_length * cfg.vocab_size
        transient = e * logits + max(8 * logits, (e - 4) * logits + head_gradient)
        backward_start = acts + lowp + transient
        backward_end = gradients + bucket
        held = (e * logits + (acts if e < 4 else 0)) if retained_heap else 0
        return (overhead + weights + optimizer + gathered + best + max(backward_start, backward_end) + held,
                acts, transient, held)

    peak, acts, transient, held = peak_at(batch_size, False)
    peak_ckpt, acts_ckpt, _, _ = peak_at(batch_size, True)

    def largest(checkpointing: bool) -> int:
        if capacity is None or peak_at(1, checkpointing)[0] > capacity:
            return 0
        low, high = 1, 2
        while peak_at(high, checkpointing)[0] <= capacity and high < 1 << 20:
            low, high = high, high * 2
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if peak_at(mid, checkpointing)[0] <= capacity else (low, mid)
        return low

    return Memory(weights=weights, gradients=gradients, optimizer=optimizer, low_precision_weights=lowp,
                  activations=acts, activations_checkpointed=acts_ckpt, backward_transient=transient,
                  retained_heap=held, best_weights=best, overhead=overhead, peak=peak, peak_checkpointed=peak_ckpt,
                  capacity=capacity,
                  fits=None if capacity is None else peak <= capacity,
                  max_batch_size=largest(False), max_batch_size_checkpointed=largest(True))


def process_memory() -> int:
    """This process's resident memory now (Linux), in bytes: the interpreter, torch and gptrain."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def cpu_runtime_memory(precision: str) -> int:
    """This process's resident memory once it has taken a training step of a minimal model: the
    interpreter, torch and gptrain, and what the first step sets up for good (thread pools, the
    kernel libraries' buffers, about 100 MB on a CPU). A training process holds it besides the model."""

    cfg = GPTConfig(vocab_size=256, context_length=16, emb_dim=32, n_heads=2, n_layers=1)
    model = GPTModel(cfg)
    optimizer = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    tokens = torch.randint(0, cfg.vocab_size, (2, cfg.context_length + 1))
    forward_backward(model, tokens[:, :-1], tokens[:, 1:], lambda: autocast_context("cpu", precision))
    optimizer.step()
    return process_memory()


def cpu_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
