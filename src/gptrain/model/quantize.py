"""Weight-only int8 inference: a quarter of the weights' bytes, through PyTorch's own int8 kernels.

:func:`quantize` replaces every linear layer and the token embedding of a GPTModel, in place,
by int8 weights with one float scale per output channel (per row of the embedding): the
largest weight of a row maps to 127. Each product runs through
``torch.ops.aten._weight_int8pack_mm``, which reads the int8 weights and scales the result
inside the kernel, the path torchao takes for int8 weight-only on CPU; on CPU its activations
go in as bfloat16 (see :func:`compute_dtype_for`) and every other layer, and the residual
stream, stay in the model's float precision. A
decoding step at batch 1 reads every weight once, so it is bound by how many bytes that is:
int8 weights are 1/4 of float32's (benchmarks/bench_int8.py measures what it buys).

A head tied to the token embedding stays tied: both use the same int8 rows and scales. The
position embedding, norms and biases stay in float (a few hundredths of the bytes).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from gptrain.core.errors import GptrainError
from gptrain.model.gpt import GPTModel, unwrap_model
from gptrain.model.lora import has_lora

QUANTIZATIONS = ("int8",)
INT8_OP = "torch.ops.aten._weight_int8pack_mm"


@functools.cache
def has_int8_kernel(device_type: str, dtype: torch.dtype = torch.float32) -> bool:
    """Whether this PyTorch build multiplies ``dtype`` activations by int8 weights on ``device_type``
    (tried once on a tiny product: the kernels exist for some devices and dtypes only)."""
    try:
        x = torch.zeros(1, 32, dtype=dtype, device=device_type)
        torch.ops.aten._weight_int8pack_mm(x, torch.zeros(8, 32, dtype=torch.int8, device=device_type),
                                           torch.ones(8, dtype=dtype, device=device_type))
    except (NotImplementedError, RuntimeError, AssertionError):  # AssertionError: a build without that device
        return False
    return True


def check_int8_device(device: torch.device, dtype: torch.dtype) -> None:
    if not has_int8_kernel(device.type, dtype):
        fix = "run the int8 model in float32" if device.type == "cpu" else "run it on the CPU (--device cpu)"
        raise GptrainError(f"PyTorch {torch.__version__} has no int8 weight kernel ({INT8_OP}) for {dtype} on "
                           f"{device.type}: {fix}, or leave out --quantize")


def int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: ``(q, scale)`` with ``q * scale[:, None]`` close to ``weight``.

    An all-zero row gets scale 1 and stays zero.
    """
    weight = weight.detach().float()
    absmax = weight.abs().amax(dim=1)
    scale = torch.where(absmax > 0, absmax / 127, torch.ones_like(absmax))
    q = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale


class Int8Linear(nn.Module):
    """A linear layer holding an int8 weight (out, in) and float scales (out,); no gradient.

    The product takes its activations in ``compute_dtype`` and returns the input's dtype. The scales
    are kept in ``compute_dtype``, the kernel's, and the bias in the model's dtype: a decoding step
    calls each layer once per token, and a conversion per call cost about a tenth of an int8 step.
    """

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, compute_dtype: torch.dtype):
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.compute_dtype = compute_dtype
        self.register_buffer("weight_int8", q)
        self.register_buffer("scale", scale.to(compute_dtype))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.dtype != self.compute_dtype:
            rows = rows.to(self.compute_dtype)
        if rows.stride(-1) != 1:  # the kernel reads each row as one run of memory
            rows = rows.contiguous()
        scale = self.scale if self.scale.dtype == rows.dtype else self.scale.to(rows.dtype)  # after a .to(dtype)
        try:
            out = torch.ops.aten._weight_int8pack_mm(rows, self.weight_int8, scale)
        except (NotImplementedError, RuntimeError):
            check_int8_device(x.device, rows.dtype)  # a model moved to a device without the kernel
            raise
        if out.dtype != x.dtype:
            out = out.to(x.dtype)
        if self.bias is not None:
            out += self.bias if self.bias.dtype == out.dtype else self.bias.to(out.dtype)
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"compute_dtype={self.compute_dtype}")


class Int8Embedding(nn.Module):
    """An embedding whose rows are int8 with one float scale each (the same rows as a tied head's)."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.num_embeddings, self.embedding_dim = q.shape
        self.register_buffer("weight_int8", q)
        self.register_buffer("scale", scale)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.weight_int8).to(self.scale.dtype) * self.scale[idx].unsqueeze(-1)


def compute_dtype_for(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The activations' dtype in the int8 products. On CPU bfloat16: PyTorch vectorizes its int8 kernel
    for bfloat16 activations only (float32 takes a scalar loop, 4x slower than float32's own product)."""
    return torch.bfloat16 if device.type == "cpu" and has_int8_kernel("cpu", torch.bfloat16) else dtype


def _int8_linear(layer: nn.Linear, compute_dtype: torch.dtype) -> Int8Linear:
    q, scale = int8_rows(layer.weight)
    return Int8Linear(q, scale.to(layer.weight.dtype), layer.bias, compute_dtype)


def check_quantization(kind: str, device: torch.device, dtype: torch.dtype = torch.float32) -> None:
    """That ``kind`` is a quantization gptrain has and that a ``dtype`` model on ``device`` can run it."""
    if kind not in QUANTIZATIONS:
        raise GptrainError(f"unknown quantization {kind!r}: choose {', '.join(QUANTIZATIONS)}")
    check_int8_device(device, compute_dtype_for(device, dtype))


def quantize(model: nn.Module, kind: str = "int8") -> GPTModel:
    """Turn a GPTModel's linear layers and token embedding into int8 weights, in place; returns it in eval mode.

    The model is for inference from then on (generate, evaluate, serve): it has no gradients,
    and a checkpoint is saved from the float model. Its weights must be on a device with int8
    kernels (CPU, and CUDA where this PyTorch has the kernel).
    """
    model = unwrap_model(model)
    if not isinstance(model, GPTModel):
        raise GptrainError(f"quantize takes a GPTModel, not {type(model).__name__}")
    if has_lora(model):
        raise GptrainError("the model has LoRA adapters: merge them first (gptrain.merge_lora(model)), then quantize")
    if isinstance(model.tok_emb, Int8Embedding):
        raise GptrainError("the model is already quantized: quantize the float model once")
    embedding = model.tok_emb.weight
    check_quantization(kind, embedding.device, embedding.dtype)
    compute_dtype = compute_dtype_for(embedding.device, embedding.dtype)
    with torch.no_grad():
        tied = model.cfg.tie_embeddings and model.out_head.weight is embedding
        q, scale = int8_rows(embedding)
        scale = scale.to(embedding.dtype)
        for name, module in list(model.named_modules()):
            if isinstance(module, nn.Linear) and name != "out_head":
                parent, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent), attr, _int8_linear(module, compute_dtype))
        model.out_head = (Int8Linear(q, scale, None, compute_dtype) if tied
                          else _int8_linear(model.out_head, compute_dtype))
        model.tok_emb = Int8Embedding(q, scale)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval()


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers, each shared tensor counted once."""
    seen = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        seen[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
    return sum(seen.values())
