"""A padded vocabulary, a speed option applied to a model explicitly: :func:`pad_vocab`.

GPU matrix units work in tiles: a product with 50,257 output columns leaves a ragged last tile,
one with 50,304 does not (nanoGPT reports a large speed-up on A100s). :func:`pad_vocab` gives a
model an output head that multiplies by its weight grown with zero rows to a multiple of 64 and
returns the vocabulary's logits only. The parameters keep their shapes, so the state dict, the
checkpoints, the optimizer's states and the parameter counts are the plain model's; the zero
rows are made in each forward pass, a copy of the head's weight that costs little next to the
product it makes whole tiles of.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gptrain.model.gpt import unwrap_model


class PaddedVocabHead(nn.Linear):
    """A bias-free ``nn.Linear`` (same parameter, same state dict) whose product runs over ``rows``
    outputs, those past ``out_features`` zero, and returns the first ``out_features``."""

    def __init__(self, head: nn.Linear, rows: int):
        super().__init__(head.in_features, head.out_features, bias=False, device="meta")
        self.weight = head.weight  # the same parameter: a head tied to the embedding stays tied
        self.rows = rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = F.pad(self.weight, (0, 0, 0, self.rows - self.out_features))
        return F.linear(x, weight)[..., :self.out_features]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rows={self.rows}"


def pad_vocab(model: nn.Module, multiple: int = 64) -> nn.Module:
    """Run ``model``'s output head over its vocabulary rounded up to a multiple of ``multiple``;
    returns ``model``. Its outputs, gradients and saved weights do not change."""
    gpt = unwrap_model(model)
    rows = -(-gpt.cfg.vocab_size // multiple) * multiple
    if rows != gpt.cfg.vocab_size:
        gpt.out_head = PaddedVocabHead(gpt.out_head, rows)
    return model
