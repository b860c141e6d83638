"""Where a run executes: the device, the precision, the process group under torchrun, and memory."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from gptrain.core.accelerators import Accelerator, accelerator_of_device
from gptrain.core.errors import GptrainError
from gptrain.core.launch import world_size


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
        device = None
    if device is None or device.type not in {"cpu", "cuda", "mps"}:  # torch also names meta, xla, ...
        raise GptrainError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GptrainError("--device cuda was asked for but no CUDA GPU is available: use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise GptrainError(f"--device {name} was asked for but this machine has {torch.cuda.device_count()} CUDA "
                           f"GPU(s): use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise GptrainError("--device mps was asked for but MPS is not available: use --device cpu")
    return device


def cpu_has_native_bf16() -> bool:
    """True on x86 CPUs with AVX-512 BF16 or AMX: there bf16 matrix products run at 2x or more the
    fp32 rate; elsewhere bf16 autocast is emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # fp32 runs without autocast


def autocast_context(device_type: str, precision: str) -> torch.autocast:
    """The autocast context of a resolved ``precision``: bf16 or fp16 autocast, or a disabled one for fp32."""
    dtype = AUTOCAST_DTYPES.get(precision)
    return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)


def resolve_precision(precision: str, device: torch.device) -> str:
    """What ``--precision auto`` runs in on ``device``: bf16 where it computes bf16 natively, else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def planned_precision(accelerator: Accelerator | None) -> str:
    """What ``--precision auto`` stands for in a plan for a GPU of the table (None: this machine's CPU):
    bf16 where it has bf16 tensor cores, else their fp16."""
    if accelerator is None:
        return resolve_precision("auto", torch.device("cpu"))
    return "bf16" if accelerator.bf16 else "fp16"


PAD_VOCAB_MULTIPLE = 64


def pads_vocab(device: torch.device) -> bool:
    """Whether a model on ``device`` pads its vocabulary (``gptrain.model.vocab_padding``) unless told: on CUDA,
    whose matrix units work in tiles that a 50,257-row head leaves ragged."""
    return device.type == "cuda"


def prepare_device(device: torch.device, *, sharded: bool = False) -> None:
    """What a training process sets for its device before the first step: TF32 matrix products on CUDA;
    on a CPU, freed memory kept in the process (see :func:`retain_freed_memory`), but not under FSDP,
    whose gather and reduce buffers of many sizes would fragment a heap that is never trimmed (124M,
    2 processes: 4.0 GB peak per process against 3.1 GB)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if device.type == "cpu" and not sharded:
        retain_freed_memory()


def retain_freed_memory(mmap_threshold: int = 1 << 30) -> bool:
    """Keep freed memory in the process instead of handing it back to the OS (glibc only).

    A training step allocates and frees the same large buffers every time (logits, the
    embedding gradient, bf16 weight copies). glibc returns blocks over its mmap threshold to
    the kernel at once, so each step pays page faults and kernel zeroing on hundreds of MB: a
    quarter of a 124M bf16 step on a 2-core CPU (1.16 s against 0.84 s). Serving blocks up to
    ``mmap_threshold`` from the heap and never trimming it keeps that memory, the way CUDA's
    caching allocator does on a GPU. (A finite trim threshold is worse than none: every time the
    free top of the heap crosses it, glibc gives it all back and the next step faults it in again.)
    """
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, mmap_threshold)) and bool(mallopt(m_trim_threshold, -1))


def release_freed_memory() -> bool:
    """Hand the memory :func:`retain_freed_memory` kept back to the kernel (glibc only), once no step
    will reuse it. The kernel gives those pages, still mapped by the hypervisor, to the page cache that
    the run's last checkpoint is written into: on a 2-core VM, 650 MB of new file pages take 1.9 s to
    write into memory never touched before and 0.15 s into memory just freed."""
    malloc_trim = _glibc("malloc_trim")
    return malloc_trim is not None and bool(malloc_trim(0))


def _glibc(name: str):
    """The C library's function ``name``, or None where there is no such library or function (not glibc)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


@dataclass(frozen=True)
class Processes:
    """This process's place under torchrun (rank 0 of 1 without it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def start_processes(device_name: str) -> tuple[Processes, torch.device]:
    """Join torchrun's process group (gloo on CPU, nccl on CUDA) and pick this rank's device."""
    processes = world_size()
    if processes == 1:
        return Processes(), resolve_device(device_name)
    procs = Processes(int(os.environ["RANK"]), processes, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", procs.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return procs, device


def mean_over_processes(value: float, procs: Processes, device: torch.device) -> float:
    if not procs.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / procs.world_size


def max_over_processes(value: int, procs: Processes, device: torch.device) -> int:
    if not procs.distributed:
        return value
    t = torch.tensor([value], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The data sheet's dense peak of this GPU in ``precision`` (gptrain.planning.estimate's table), for MFU."""

    if device.type != "cuda":
        return None
    accelerator = accelerator_of_device(torch.cuda.get_device_name(device))
    try:
        return None if accelerator is None else accelerator.peak(precision)
    except GptrainError:
        return None


def process_age() -> float:
    """Seconds since this process started (Linux), or 0: the interpreter's and imports' start-up."""
    try:
        with open("/proc/self/stat") as f:
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def peak_memory_mb(device: torch.device) -> float:
    """This process's peak memory so far: allocated GPU memory on CUDA, resident set size elsewhere."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def gather_over_processes(value: float, procs: Processes, device: torch.device) -> list[float]:
    """``value`` of every process, in rank order."""
    if not procs.distributed:
        return [value]
    values = torch.zeros(procs.world_size, dtype=torch.float64, device=device)
    values[procs.rank] = value
    dist.all_reduce(values)
    return values.tolist()
