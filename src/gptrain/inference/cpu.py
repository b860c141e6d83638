"""CPU speed for generation, applied to a model explicitly: :func:`optimize_for_cpu_inference`.

The model itself (``gptrain.model.gpt``) uses plain ``nn.Linear`` layers in the default memory
layout. Generation, batching and the server call :func:`optimize_for_cpu_inference`, which
changes three things and neither values, shapes, names nor the state dict:

- sliced products: a generation step multiplies one row per sequence by each weight matrix,
  and MKL runs such a product on one core. Cut into one slice of the inner dimension per
  thread, it becomes a batched product that PyTorch spreads over the threads, plus a sum of the
  partial results: 1.6x faster per token on 2 cores. Only without autograd, so training is
  untouched.
- one-row bfloat16 products through PyTorch's matrix-vector kernel (``torch.addmv``) instead of
  the matrix product ``F.linear`` takes: the same bits, and on a 2-core Xeon the 124M model's
  weights stream 1.35x faster (12.7 ms a token against 17.2 ms).
- the transposed layout (:func:`store_weights_transposed`): float32 weights kept
  (in, out)-contiguous, the order GPT-2's ``Conv1D`` uses, in which MKL multiplies one vector
  by a matrix 1.1-1.6x faster. ``model.train()`` puts the default layout back.

LoRA layers and layers already wrapped by FSDP keep their own class and layout.
"""

from __future__ import annotations

import torch
from torch import nn

from gptrain.model.gpt import unwrap_model


class SlicedLinear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) whose few-row float32 CPU products without
    autograd are cut into one slice of the inner dimension per thread, and whose one-row bfloat16
    ones are matrix-vector products; every other product is ``nn.Linear``'s. Layers become one by
    :func:`optimize_for_cpu_inference`."""

    def train(self, mode: bool = True) -> "SlicedLinear":
        super().train(mode)
        if mode and not self.weight.is_contiguous():  # training gets back the layout it was built with
            with torch.no_grad():
                self.weight.data = self.weight.data.contiguous()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _one_bfloat16_row(x, self.weight):
            row = x.reshape(self.in_features)
            out = torch.mv(self.weight, row) if self.bias is None else torch.addmv(self.bias, self.weight, row)
            return out.view(*x.shape[:-1], self.out_features)
        parts = _inner_slices(x, self.in_features)
        if parts == 1:
            return super().forward(x)
        rows = x.reshape(-1, parts, self.in_features // parts).transpose(0, 1)  # (parts, rows, in/parts)
        out = torch.bmm(rows, self.weight.t().view(parts, -1, self.out_features)).sum(dim=0)
        if self.bias is not None:
            out += self.bias
        return out.view(*x.shape[:-1], self.out_features)


def _one_bfloat16_row(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """A decoding step's product at batch 1 in bfloat16 on a CPU, without autograd or autocast."""
    return (x.numel() == weight.shape[1] and x.device.type == "cpu" and x.dtype == weight.dtype == torch.bfloat16
            and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu"))


def _inner_slices(x: torch.Tensor, in_features: int) -> int:
    """How many slices to cut a product's inner dimension into: one per thread when inferring a few
    float32 rows on a CPU. (From about 32 rows on MKL's own threading is as fast, and bfloat16
    products go through oneDNN, which already uses every core.)"""
    threads = torch.get_num_threads()
    if (threads == 1 or x.device.type != "cpu" or x.dtype != torch.float32 or x.numel() > 16 * in_features
            or torch.is_grad_enabled() or torch.is_autocast_enabled("cpu")):
        return 1
    return max(n for n in range(1, threads + 1) if in_features % n == 0)


def _plain_linears(model: nn.Module) -> list[nn.Linear]:
    """The model's linear layers that are nn.Linear itself (or already sliced): not LoRA's, not FSDP's."""
    return [m for m in unwrap_model(model).modules() if type(m) in (nn.Linear, SlicedLinear)]


def _transpose_weight(layer: nn.Linear) -> None:
    # Outside inference mode: an inference tensor could not become a parameter that trains later.
    with torch.inference_mode(False), torch.no_grad():
        layer.weight.data = layer.weight.data.t().contiguous().t()


def store_weights_transposed(model: nn.Module) -> nn.Module:
    """Keep every float32 linear weight in (in_features, out_features)-contiguous memory, on any device.

    Values, shapes, names and state dict stay the same; only the storage order changes, to the
    one GPT-2's ``Conv1D`` uses (bfloat16 goes through oneDNN, which prefers the default order,
    so it is left alone). ``model.train()`` puts the default order back. Returns ``model``.
    """
    for layer in _plain_linears(model):
        layer.__class__ = SlicedLinear
        if layer.weight.dtype == torch.float32 and layer.weight.is_contiguous():
            _transpose_weight(layer)
    return model


def optimize_for_cpu_inference(model: nn.Module) -> nn.Module:
    """Give ``model``'s linear layers sliced products and, when it is in eval mode, the transposed
    layout for float32 CPU weights. Returns ``model``; its outputs do not change.

    The copy costs about as much as a dozen decoding steps of the same model, so a model in
    training mode (a sample in the middle of training, which the next step would move back)
    keeps its layout, and so do sharded weights, which are not plain tensors, and a model under
    CPU autocast, whose products run in bfloat16.
    """
    layers = _plain_linears(model)
    for layer in layers:
        layer.__class__ = SlicedLinear
    if unwrap_model(model).training or torch.is_autocast_enabled("cpu"):
        return model
    for layer in layers:
        weight = layer.weight.data
        if (type(weight) is torch.Tensor and weight.device.type == "cpu" and weight.dtype == torch.float32
                and weight.is_contiguous()):
            _transpose_weight(layer)
    return model
