"""What a training run costs before it starts: parameters, FLOPs, time, money, energy and memory.

Everything follows from the model's shape and the plan: a token costs 6 FLOPs per matrix weight
in training (2 in the forward pass, 4 in the backward pass) plus attention's scores and mixing
(:mod:`gptrain.model.counts`); the run's FLOPs over the accelerators' peak times the achieved
fraction of it (MFU) is its wall time. Memory per device is :mod:`gptrain.planning.memory`'s, and
a measured throughput :mod:`gptrain.planning.throughput`'s.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from gptrain.core.accelerators import find_accelerator
from gptrain.core.errors import GptrainError
from gptrain.core.peak import cpu_peak_flops
from gptrain.core.runtime import process_age
from gptrain.model.config import GPTConfig
from gptrain.model.counts import flops_per_token, parameter_counts
from gptrain.planning.memory import CUDA_CONTEXT_BYTES, cpu_memory, cpu_runtime_memory, memory_per_device
from gptrain.planning.throughput import measure_throughput

CHINCHILLA_TOKENS_PER_PARAM = 20  # Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models"
DEFAULT_MFU = 0.4  # what a well-tuned GPT-2 run reaches on A100/H100 (llm.c, nanoGPT report 40-50%)

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
    # gptrain train keeps freed memory in the process on a CPU, except under FSDP (runtime.prepare_device).
    retained_heap = on_cpu and plan.distribution != "fsdp"
    memory = memory_per_device(cfg, plan.batch_size, plan.precision, distribution=plan.distribution,
                               devices=plan.gpus, math_attention=math_attention, capacity=capacity, overhead=overhead,
                               retained_heap=retained_heap, best_copy=True)  # gptrain train evaluates by default
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
