"""What a training run costs before it starts: parameters, FLOPs, time, money, energy and memory.

Everything follows from the model's shape and the plan: a token costs 6 FLOPs per matrix weight
in training (2 in the forward pass, 4 in the backward pass) plus attention's scores and mixing;
the run's FLOPs over the accelerators' peak times the achieved fraction of it (MFU) is its wall
time. Memory per device is the weights, gradients and AdamW's two moments (fp32 each), the
low-precision weight copies autocast keeps for the backward pass, and the activations saved for
it, walked through the backward pass to find the peak. This module is the single source of the
FLOP count and of the accelerator table that ``gptrain train`` uses for MFU.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from gptrain.core.accelerators import find_accelerator
from gptrain.core.errors import GptrainError
from gptrain.core.formatting import duration, human
from gptrain.core.runtime import autocast_context, resolve_precision, retain_freed_memory
from gptrain.data.tokenizer import get_tokenizer
from gptrain.interop.pretrained import config_from_hf
from gptrain.model.config import GPTConfig, get_preset
from gptrain.model.counts import flops_per_token, parameter_counts
from gptrain.model.gpt import GPTModel
from gptrain.store.checkpoint import read_checkpoint_config
from gptrain.training.config import TrainConfig
from gptrain.training.optim import make_optimizer
from gptrain.training.step import forward_backward, load_windows

GiB = 1024 ** 3
CHINCHILLA_TOKENS_PER_PARAM = 20  # Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models"
DEFAULT_MFU = 0.4  # what a well-tuned GPT-2 run reaches on A100/H100 (llm.c, nanoGPT report 40-50%)
CUDA_CONTEXT_BYTES = 1 * GiB  # the CUDA context and allocator slack, which no tensor accounts for












# --- Parameters and FLOPs ---







# --- Memory ---

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
    overhead: int  # the interpreter, torch and its first step's set-up (CPU), or the CUDA context
    peak: int
    peak_checkpointed: int
    capacity: int | None
    fits: bool | None
    max_batch_size: int
    max_batch_size_checkpointed: int


def memory_per_device(cfg: GPTConfig, batch_size: int, precision: str, *, distribution: str = "single",
                      devices: int = 1, math_attention: bool = False, capacity: int | None = None,
                      overhead: int = 0) -> Memory:
    """The peak memory of one device in a training step, and the largest micro-batch that fits.

    The peak falls either at the start of the backward pass (all activations live, the head's
    gradient and the logits' gradient just made) or at its end (all gradients, activations freed),
    whichever is larger; AdamW's moments and the weights are there throughout. DDP adds a bucket
    copy of the gradients; FSDP shards weights, gradients and moments over the devices and gathers
    one block's weights (and the next, prefetched) at a time.
    """
    counts = parameter_counts(cfg)
    params, shard = counts.total, devices if distribution == "fsdp" else 1
    lowp = 0 if precision == "fp32" else 2 * counts.matrix
    weights, gradients, optimizer = 4 * params // shard, 4 * params // shard, 8 * params // shard
    gathered = 2 * 4 * (params - counts.embedding) // cfg.n_layers if distribution == "fsdp" and devices > 1 else 0
    bucket = 4 * params if distribution == "ddp" and devices > 1 else 0
    head_gradient = 4 * cfg.vocab_size * cfg.emb_dim
    e = 4 if precision == "fp32" else 2

    def peak_at(batch: int, checkpointing: bool) -> tuple[int, int, int]:
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
        return overhead + weights + optimizer + gathered + max(backward_start, backward_end), acts, transient

    peak, acts, transient = peak_at(batch_size, False)
    peak_ckpt, acts_ckpt, _ = peak_at(batch_size, True)

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
                  overhead=overhead, peak=peak, peak_checkpointed=peak_ckpt, capacity=capacity,
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


# --- Throughput on this machine ---

def cpu_peak_flops(precision: str, size: int = 2048, repeats: int = 3) -> float:
    """This CPU's matrix-product rate in ``precision``: the best of a few size^3 products."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size ** 3 / best


@dataclass
class Measured:
    tokens_per_s: float
    eval_tokens_per_s: float
    build_s: float  # building the model and its optimizer, which a run pays before its first step


def process_age() -> float:
    """Seconds since this process started (Linux), or 0."""
    try:
        with open("/proc/self/stat") as f:
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def measure_throughput(cfg: GPTConfig, batch_size: int, grad_accum: int, precision: str,
                       device: torch.device, min_seconds: float = 10.0, min_steps: int = 3,
                       compile: bool = False) -> Measured:
    """Run real training steps (gptrain train's optimizer and forward-backward) on random tokens and time them.

    Two warm-up steps (allocations, kernel selection, the heap growing to its size, ``compile``'s
    compilation as ``gptrain train --compile`` does it) are not counted;
    then steps run for at least ``min_seconds``, so that a machine whose load varies is averaged
    over a while. Evaluation's forward passes are timed separately.
    """

    if device.type == "cpu":
        retain_freed_memory()
    started = time.perf_counter()
    torch.manual_seed(0)
    model = GPTModel(cfg).to(device)
    if device.type == "cuda":
        model.pad_vocab(64)
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


# --- The estimate ---

DISTRIBUTIONS = ("single", "ddp", "fsdp")


@dataclass
class Plan:
    """A model and how it is to be trained."""

    model: GPTConfig
    tokens: int
    batch_size: int = 8  # sequences per micro-batch, per device
    grad_accum: int = 1
    gpu: str = "H100"  # a name from ACCELERATORS, or "cpu"
    gpus: int = 1
    precision: str = "bf16"
    mfu: float | None = None  # None: DEFAULT_MFU, or the measured throughput with measure=True
    price_per_hour: float | None = None  # per device
    watts: float | None = None  # per device; default: the accelerator's board power
    distribution: str = "single"
    eval_freq: int | None = None  # count the evaluations of a run with these settings
    eval_iter: int = 5
    budget: str = "tokens"  # what the token count came from, for the table

    def __post_init__(self):
        if not isinstance(self.tokens, int) or self.tokens < 1:
            raise GptrainError(f"the token budget must be a positive number of tokens, not {self.tokens!r}: "
                               "give --tokens, --epochs with --data, or --chinchilla")
        for name in ("batch_size", "grad_accum", "gpus", "eval_iter"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise GptrainError(f"--{name.replace('_', '-')} must be a positive integer, not {value!r}")
        if self.eval_freq is not None and self.eval_freq < 1:
            raise GptrainError(f"--eval-freq must be a positive integer, not {self.eval_freq!r}")
        if self.mfu is not None and not 0 < self.mfu <= 1:
            raise GptrainError(f"--mfu is a fraction of the peak in (0, 1], not {self.mfu!r}")
        for name in ("price_per_hour", "watts"):
            value = getattr(self, name)
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise GptrainError(f"--{name.replace('_', '-')} must be a non-negative number, not {value!r}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise GptrainError(f"--precision must be fp32, bf16 or fp16, not {self.precision!r}")
        if self.distribution not in DISTRIBUTIONS:
            raise GptrainError(f"--distribution must be one of {', '.join(DISTRIBUTIONS)}, not {self.distribution!r}")
        if self.distribution == "single" and self.gpus > 1:
            self.distribution = "ddp"
        if self.gpu.lower() != "cpu":
            find_accelerator(self.gpu)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.gpus * self.model.context_length


@dataclass
class Estimate:
    plan: dict[str, Any]
    parameters: dict[str, Any]
    flops: dict[str, float]
    steps: int
    tokens: int
    compute_optimal_tokens: int
    budget_vs_compute_optimal: float
    peak_flops_per_device: float
    mfu: float
    throughput_source: str
    tokens_per_s: float
    wall_time_s: float
    device_hours: float
    cost: float | None
    energy_kwh: float
    memory: dict[str, Any]
    measured: dict[str, float] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate(plan: Plan, *, measure: bool = False, measure_device: torch.device | None = None,
             measure_seconds: float = 10.0) -> Estimate:
    """Parameters, FLOPs, time, cost, energy and memory of ``plan``.

    With ``measure``, real training steps on this machine for ``measure_seconds`` give the throughput
    (the plan's hardware must then be this machine: ``cpu``, or the GPU it has), and the wall time
    includes this process's start-up (its age now), which stands for the run's own.
    """
    started_s = process_age()  # the interpreter's and imports' start-up, which a run pays too
    cfg = plan.model
    counts = parameter_counts(cfg)
    per_token = flops_per_token(cfg)
    steps = math.ceil(plan.tokens / plan.tokens_per_step)
    tokens = steps * plan.tokens_per_step
    total_flops = per_token * tokens
    on_cpu = plan.gpu.lower() == "cpu"
    accelerator = None if on_cpu else find_accelerator(plan.gpu)
    # Memory first: the measured steps below grow this process, whose runtime memory the CPU figure includes.
    math_attention = on_cpu and cfg.drop_rate > 0
    capacity = cpu_memory() if on_cpu else accelerator.memory
    overhead = cpu_runtime_memory(plan.precision) if on_cpu else CUDA_CONTEXT_BYTES
    memory = memory_per_device(cfg, plan.batch_size, plan.precision, distribution=plan.distribution,
                               devices=plan.gpus, math_attention=math_attention, capacity=capacity, overhead=overhead)
    peak = cpu_peak_flops(plan.precision) if on_cpu else accelerator.peak(plan.precision)

    measured = None
    if measure:
        device = measure_device or torch.device("cuda" if torch.cuda.is_available() and not on_cpu else "cpu")
        if not on_cpu and device.type != "cuda":
            raise GptrainError(f"--measure runs steps on this machine, which has no {accelerator.name}: "
                               "use --gpu cpu, or --mfu to assume a utilisation")
        measured = measure_throughput(cfg, plan.batch_size, plan.grad_accum, plan.precision, device,
                                      min_seconds=measure_seconds)
        tokens_per_s = measured.tokens_per_s * plan.gpus
        mfu, source = tokens_per_s * per_token / (peak * plan.gpus), "measured here"
    else:
        mfu = plan.mfu if plan.mfu is not None else DEFAULT_MFU
        source = "given" if plan.mfu is not None else "assumed"
        tokens_per_s = mfu * peak * plan.gpus / per_token

    wall = tokens / tokens_per_s
    if plan.eval_freq is not None:
        evaluations = math.ceil(steps / plan.eval_freq)
        eval_tokens = evaluations * 2 * plan.eval_iter * plan.tokens_per_step
        eval_rate = measured.eval_tokens_per_s * plan.gpus if measured else 3 * tokens_per_s
        wall += eval_tokens / eval_rate
    if measured:
        wall += started_s + measured.build_s
    device_hours = wall * plan.gpus / 3600
    watts = plan.watts if plan.watts is not None else (accelerator.watts if accelerator else 0.0)

    optimal = CHINCHILLA_TOKENS_PER_PARAM * counts.total
    plan_dict = {**asdict(plan), "model": cfg.to_dict(), "gpu": "cpu" if on_cpu else accelerator.name,
                 "tokens_per_step": plan.tokens_per_step}
    return Estimate(
        plan=plan_dict, parameters=asdict(counts),
        flops={"per_token": per_token, "six_n": 6 * counts.total, "per_step": per_token * plan.tokens_per_step,
               "total": total_flops},
        steps=steps, tokens=tokens, compute_optimal_tokens=optimal, budget_vs_compute_optimal=tokens / optimal,
        peak_flops_per_device=peak, mfu=mfu, throughput_source=source, tokens_per_s=tokens_per_s,
        wall_time_s=wall, device_hours=device_hours,
        cost=None if plan.price_per_hour is None else device_hours * plan.price_per_hour,
        energy_kwh=device_hours * watts / 1000, memory=asdict(memory),
        measured=None if measured is None else asdict(measured),
    )


def check_fits(result: Estimate) -> None:
    """A plan whose single sequence does not fit is a bad input: say what would."""
    memory, plan = result.memory, result.plan
    if memory["fits"] is not False:
        return
    where = f"a {plan['gpu']} ({memory['capacity'] / 1e9:.0f} GB)" if plan["gpu"] != "cpu" else "this machine's memory"
    if memory["max_batch_size"]:
        fix = f"use --batch-size {memory['max_batch_size']} (or less) and raise --grad-accum"
    elif memory["max_batch_size_checkpointed"]:
        fix = (f"even --batch-size 1 needs activation checkpointing (then up to "
               f"{memory['max_batch_size_checkpointed']} fit)")
    else:
        fix = "use --distribution fsdp over more --gpus, a GPU with more memory, or a smaller model"
    raise GptrainError(f"the plan needs {memory['peak'] / 1e9:.1f} GB per device and does not fit on {where}: {fix}")


# --- Printing ---





def format_estimate(result: Estimate) -> str:
    plan, params, flops, memory = result.plan, result.parameters, result.flops, result.memory
    cfg = plan["model"]
    hardware = f"{plan['gpus']} x {plan['gpu']}" if plan["gpu"] != "cpu" else "this machine's CPU"
    gb = lambda b: f"{b / 1e9:.2f} GB"  # noqa: E731
    head = "tied to the token embedding" if params["tied"] else "separate"
    rows = [
        ("model", f"{cfg['n_layers']} layers, width {cfg['emb_dim']}, {cfg['n_heads']} heads, "
                  f"context {cfg['context_length']}, vocabulary {cfg['vocab_size']:,}"),
        ("parameters", f"{params['total']:,} (output head {head})"),
        ("  without embeddings", f"{params['non_embedding']:,}"),
        ("  in matrix products", f"{params['matrix']:,}"),
        ("plan", f"{plan['batch_size']} x {cfg['context_length']} tokens per micro-batch, {plan['grad_accum']} "
                 f"micro-batch(es), {plan['gpus']} device(s), {plan['distribution']}: "
                 f"{plan['tokens_per_step']:,} tokens per step"),
        ("budget", f"{result.tokens:,} tokens ({plan['budget']}) in {result.steps:,} steps"),
        ("compute-optimal", f"{result.compute_optimal_tokens:,} tokens (20 per parameter); the budget is "
                            f"{result.budget_vs_compute_optimal:.3g}x that"),
        ("FLOPs per token", f"{human(flops['per_token'])} (6N alone: {human(flops['six_n'])})"),
        ("FLOPs per step", human(flops["per_step"])),
        ("FLOPs in total", f"{flops['total']:.3g}"),
        ("hardware", f"{hardware}, {plan['precision']} peak {human(result.peak_flops_per_device, 'FLOP/s')} each"),
        ("utilisation (MFU)", f"{result.mfu:.1%} ({result.throughput_source})"),
        ("throughput", f"{result.tokens_per_s:,.0f} tokens/s"),
        ("wall time", duration(result.wall_time_s)),
        ("device-hours", f"{result.device_hours:,.1f}" if result.device_hours >= 10 else f"{result.device_hours:.3g}"),
        ("cost", "-" if result.cost is None else f"{result.cost:,.2f} at {plan['price_per_hour']:g} per device-hour"),
        ("energy", f"{result.energy_kwh:,.3g} kWh"),
        ("memory per device", ""),
        ("  weights (fp32)", gb(memory["weights"])),
        ("  gradients (fp32)", gb(memory["gradients"])),
        ("  AdamW moments (fp32)", gb(memory["optimizer"])),
        ("  low-precision weights", gb(memory["low_precision_weights"])),
        ("  activations", f"{gb(memory['activations'])} per micro-batch; "
                          f"{gb(memory['activations_checkpointed'])} with activation checkpointing"),
        ("  runtime overhead", gb(memory["overhead"])),
        ("  peak", f"{gb(memory['peak'])}; {gb(memory['peak_checkpointed'])} with activation checkpointing"),
    ]
    if memory["capacity"] is not None:
        rows += [("  fits", f"{'yes' if memory['fits'] else 'no'} ({gb(memory['capacity'])} per device)"),
                 ("  largest micro-batch", f"{memory['max_batch_size']}; "
                                           f"{memory['max_batch_size_checkpointed']} with activation checkpointing")]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}".rstrip() for label, value in rows)


# --- What the command line gives ---

def model_config_from(source: str) -> GPTConfig:
    """The shape of a gptrain checkpoint or run directory, or of a Hugging Face GPT-2 folder or config.json."""
    import json
    from pathlib import Path

    path = Path(source)
    config_file = path / "config.json" if path.is_dir() else path
    if not path.exists():
        raise GptrainError(f"{source} does not exist: give a checkpoint, a run directory or a Hugging Face folder")
    try:
        values = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        values = {}
    if isinstance(values, dict) and "model_type" in values:
        return config_from_hf(values, config_file)
    return GPTConfig.from_dict(read_checkpoint_config(path)["model"])


def tokens_of_epochs(cfg: GPTConfig, data: str, epochs: int, tokens_per_step: int) -> int:
    """Tokens in ``epochs`` passes over the training split of ``data``, counted as gptrain train does:
    whole steps of windows at the model's context."""

    train_windows, _ = load_windows(TrainConfig(data=data), cfg.context_length, get_tokenizer())
    sequences_per_step = tokens_per_step // cfg.context_length
    steps_per_epoch = len(train_windows) // sequences_per_step
    if steps_per_epoch == 0:
        raise GptrainError(f"{data} has {len(train_windows)} training window(s), fewer than one step's "
                           f"{sequences_per_step}: use a smaller batch or context, or more text")
    return epochs * steps_per_epoch * tokens_per_step


def estimate_from_args(args) -> Estimate:
    """``gptrain estimate``'s flags to a checked plan, estimated (and refused if it cannot fit)."""

    cfg = model_config_from(args.checkpoint) if args.checkpoint else get_preset(args.preset)
    overrides = {"emb_dim": args.emb_dim, "n_layers": args.n_layers, "n_heads": args.n_heads,
                 "vocab_size": args.vocab_size, "context_length": args.context_length, "drop_rate": args.dropout,
                 "tie_embeddings": args.tie_embeddings, "qkv_bias": args.qkv_bias}
    cfg = cfg.replace(**{k: v for k, v in overrides.items() if v is not None})
    on_cpu = args.gpu.lower() == "cpu"
    accelerator = None if on_cpu else find_accelerator(args.gpu)
    precision = args.precision
    if precision == "auto":
        gpu_precision = "bf16" if accelerator and accelerator.bf16 else "fp16"
        precision = resolve_precision("auto", torch.device("cpu")) if on_cpu else gpu_precision
    if args.batch_size < 1 or args.gpus < 1:
        raise GptrainError("--batch-size and --gpus must be positive integers")
    grad_accum = args.grad_accum or 1
    if args.global_batch_tokens is not None:
        if args.grad_accum is not None:
            raise GptrainError("give --grad-accum or --global-batch-tokens, not both")
        per_micro_step = args.batch_size * cfg.context_length * args.gpus
        if args.global_batch_tokens < 1 or args.global_batch_tokens % per_micro_step:
            raise GptrainError(f"--global-batch-tokens {args.global_batch_tokens:,} is not a positive multiple of "
                               f"batch size x context x devices = {per_micro_step:,}: change one of them")
        grad_accum = args.global_batch_tokens // per_micro_step
    if args.grad_accum is not None and args.grad_accum < 1:
        raise GptrainError(f"--grad-accum must be a positive integer, not {args.grad_accum}")
    tokens_per_step = args.batch_size * grad_accum * args.gpus * cfg.context_length
    if args.chinchilla:
        tokens, budget = CHINCHILLA_TOKENS_PER_PARAM * parameter_counts(cfg).total, "compute-optimal, 20 per parameter"
    elif args.epochs is not None:
        if args.data is None or args.epochs < 1:
            raise GptrainError("--epochs needs --data (the corpus to count) and a positive number of epochs")
        tokens = tokens_of_epochs(cfg, args.data, args.epochs, tokens_per_step)
        budget = f"{args.epochs} epoch(s) of {args.data}"
    elif args.tokens is not None:
        if not (math.isfinite(args.tokens) and args.tokens >= 1):
            raise GptrainError(f"--tokens must be at least 1, not {args.tokens:g}: give the run's training tokens")
        tokens, budget = int(args.tokens), "--tokens"
    else:
        raise GptrainError("give a budget: --tokens N, --epochs N with --data, or --chinchilla")
    if args.measure and args.mfu is not None:
        raise GptrainError("give --mfu or --measure, not both")
    plan = Plan(model=cfg, tokens=tokens, batch_size=args.batch_size, grad_accum=grad_accum, gpu=args.gpu,
                gpus=args.gpus, precision=precision, mfu=args.mfu, price_per_hour=args.price_per_hour,
                watts=args.watts, distribution=args.distribution or ("ddp" if args.gpus > 1 else "single"),
                eval_freq=args.eval_freq, eval_iter=args.eval_iter, budget=budget)
    result = estimate(plan, measure=args.measure)
    check_fits(result)
    return result


# --- A run's clock and bill ---



