"""The peak FLOP/s that model FLOP utilisation (MFU) is measured against: the chip table's on a known
GPU, a matrix product's measured rate on a CPU (which has no data-sheet figure for torch's kernels)."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from gptrain.core.download import cache_dir
from gptrain.core.files import write_json_atomic
from gptrain.core.runtime import AUTOCAST_DTYPES, peak_flops

CACHE_FILE = "matmul_peak.json"


def matmul_flops(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the fastest of ``repeats`` n x n x n matrix products: the practical ceiling."""
    # Its own generator: measuring must not move a run's random stream (dropout masks, samples).
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    (a @ b).sum().item()  # the first product allocates and picks its kernel
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        (a @ b).sum().item()
        best = min(best, time.perf_counter() - started)
    return 2 * n ** 3 / best


def cpu_peak_flops(precision: str, size: int | None = None, repeats: int = 3) -> float:
    """This CPU's matrix-product rate in ``precision``, measured now.

    By default at the smallest size that reaches it: 2048 for bf16 and fp16, where oneDNN's AMX and
    AVX-512 kernels reach their rate (1024 reads half of it); 1024 for fp32, where MKL already does, an
    eighth of the work (0.6 s less at every start of a run, and of each of the test suite's runs).
    """
    size = size or (1024 if precision == "fp32" else 2048)
    return matmul_flops(torch.device("cpu"), AUTOCAST_DTYPES.get(precision, torch.float32), size, repeats)


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor() or platform.machine())


def cpu_matmul_peak(precision: str) -> float:
    """This CPU's matmul rate in ``precision`` at torch's thread count: the best of a short measurement
    now and every earlier one on this machine, which the cache keeps.

    A machine busy with other work measures low, and a figure kept from such a moment would make MFU
    read above 100% ever after; the best ever measured approaches the chip's rate, and each run's own
    measurement (two products after a first: 0.15 s in bf16 on 2 Xeon cores) heals a low one.
    """
    key = f"{cpu_name()}|{torch.get_num_threads()} threads|torch {torch.__version__}|{precision}"
    path = cache_dir() / CACHE_FILE
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cached = {}
    if not isinstance(cached, dict):
        cached = {}
    earlier = cached.get(key)
    earlier = float(earlier) if isinstance(earlier, (int, float)) and earlier > 0 else 0.0
    flops = max(earlier, cpu_peak_flops(precision, repeats=2))
    if flops > earlier:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, {**cached, key: flops})
        except OSError:
            pass  # a read-only home: the figure is still right for this run
    return flops


def mfu_peak(device: torch.device, precision: str) -> tuple[float | None, str | None]:
    """The peak FLOP/s for MFU on ``device`` and where it comes from: ``chip table`` or ``measured matmul``."""
    if device.type == "cpu":
        return cpu_matmul_peak(precision), "measured matmul"
    peak = peak_flops(device, precision)
    return peak, None if peak is None else "chip table"
