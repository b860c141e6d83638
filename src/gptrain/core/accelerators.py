"""The accelerator table: each chip's dense peak FLOP/s per precision, memory and board power.

Sources: NVIDIA data sheets (dense figures, i.e. half the "with sparsity" ones).
"""

from __future__ import annotations

from dataclasses import dataclass

from gptrain.core.errors import GptrainError


@dataclass(frozen=True)
class Accelerator:
    """Dense (no sparsity) tensor-core peaks in FLOP/s, memory in bytes, board power in watts.

    ``fp32`` is the rate of fp32 matrix products as gptrain runs them: TF32 tensor cores where the
    GPU has them (gptrain enables TF32 on CUDA), plain fp32 elsewhere. ``bf16`` is None where the
    GPU has no bf16 tensor cores (T4).
    """

    name: str
    bf16: float | None
    fp16: float
    fp32: float
    memory: int
    watts: float

    def peak(self, precision: str) -> float:
        flops = {"bf16": self.bf16, "fp16": self.fp16, "fp32": self.fp32}[precision]
        if flops is None:
            raise GptrainError(f"the {self.name} has no {precision} tensor cores: use --precision fp16 or fp32")
        return flops


# Sources: NVIDIA data sheets (dense figures, i.e. half the "with sparsity" ones):
# H100 SXM and H200 SXM: 989 TFLOP/s bf16/fp16, 495 TF32; 80 GB HBM3 / 141 GB HBM3e; 700 W.
# A100 SXM 40/80 GB: 312 bf16/fp16, 156 TF32; 400 W. L40S: 362 bf16/fp16, 183 TF32; 48 GB; 350 W.
# L4: 121 bf16/fp16, 60 TF32; 24 GB; 72 W. A10: 125 bf16/fp16, 62.5 TF32; 24 GB; 150 W.
# T4: 65 fp16, no bf16, 8.1 fp32; 16 GB; 70 W. RTX 4090 (Ada whitepaper, fp32 accumulate): 165 bf16/fp16,
# 82.6 TF32; 24 GB; 450 W. RTX 3090 (Ampere GA102 whitepaper, fp32 accumulate): 71 bf16/fp16, 35.6 TF32;
# 24 GB; 350 W.
ACCELERATORS: dict[str, Accelerator] = {a.name: a for a in [
    Accelerator("H200", 989e12, 989e12, 495e12, 141 * 10 ** 9, 700),
    Accelerator("H100", 989e12, 989e12, 495e12, 80 * 10 ** 9, 700),
    Accelerator("A100-80GB", 312e12, 312e12, 156e12, 80 * 10 ** 9, 400),
    Accelerator("A100-40GB", 312e12, 312e12, 156e12, 40 * 10 ** 9, 400),
    Accelerator("L40S", 362e12, 362e12, 183e12, 48 * 10 ** 9, 350),
    Accelerator("A10", 125e12, 125e12, 62.5e12, 24 * 10 ** 9, 150),
    Accelerator("L4", 121e12, 121e12, 60e12, 24 * 10 ** 9, 72),
    Accelerator("T4", None, 65e12, 8.1e12, 16 * 10 ** 9, 70),
    Accelerator("RTX-4090", 165e12, 165e12, 82.6e12, 24 * 10 ** 9, 450),
    Accelerator("RTX-3090", 71e12, 71e12, 35.6e12, 24 * 10 ** 9, 350),
]}


def _key(name: str) -> str:
    return "".join(ch for ch in name.upper() if ch.isalnum())


def find_accelerator(name: str) -> Accelerator:
    """The accelerator called ``name`` (case, spaces and dashes ignored; ``A100`` is the 80 GB one)."""
    aliases = {"A100": "A100-80GB", "A10040GB": "A100-40GB", "4090": "RTX-4090", "3090": "RTX-3090"}
    wanted = _key(name)
    for accelerator in ACCELERATORS.values():
        if _key(accelerator.name) == wanted:
            return accelerator
    if wanted in aliases:
        return ACCELERATORS[aliases[wanted]]
    raise GptrainError(f"unknown --gpu {name!r}: choose one of cpu, {', '.join(ACCELERATORS)}")


def accelerator_of_device(device_name: str) -> Accelerator | None:
    """The table's entry for a CUDA device name such as 'NVIDIA A100-SXM4-40GB', or None."""
    name = _key(device_name)
    if "A100" in name:
        return ACCELERATORS["A100-40GB" if "40GB" in name else "A100-80GB"]
    for accelerator in ACCELERATORS.values():
        if _key(accelerator.name).replace("RTX", "") in name:
            return accelerator
    return None


