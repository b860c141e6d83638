"""A GPT model turned classifier, as the book's chapter 6 does it: the vocabulary head is replaced by
one with an output per class, and the last token's logits are the class scores.

The book trains only the last transformer block, the final norm and the new head; the blocks before
them then map an input to the same hidden states in every epoch (without dropout), so
:func:`frozen_prefix` tells how many blocks a trainer may run once and reuse.
"""

from __future__ import annotations

import torch
from torch import nn

from gptrain.core.errors import GptrainError
from gptrain.model.gpt import GPTModel, MultiHeadAttention, unwrap_model


def add_class_head(model: GPTModel, num_classes: int) -> GPTModel:
    """Replace the output head by a ``num_classes``-output linear layer (with a bias, as the book's
    ``torch.nn.Linear`` has), untied from the token embedding. Changes ``model`` in place."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise GptrainError(f"a classifier needs at least 2 classes, not {num_classes!r}")
    model = unwrap_model(model)
    device = model.tok_emb.weight.device
    dtype = model.tok_emb.weight.dtype if model.tok_emb.weight.is_floating_point() else None
    model.out_head = nn.Linear(model.cfg.emb_dim, num_classes, device=device, dtype=dtype)
    model.cfg = model.cfg.replace(tie_embeddings=False)
    return model


def is_classifier(model: nn.Module) -> bool:
    model = unwrap_model(model)
    return model.out_head.out_features < model.cfg.vocab_size


def freeze_for_classification(model: GPTModel) -> GPTModel:
    """The book's choice: only the last transformer block, the final norm and the head learn."""
    model = unwrap_model(model)
    model.requires_grad_(False)
    for module in (model.trf_blocks[-1], model.final_norm, model.out_head):
        module.requires_grad_(True)
    return model


def set_dropout(model: GPTModel, rate: float) -> GPTModel:
    """Give every dropout of ``model`` (embeddings, attention, shortcuts) the rate ``rate``."""
    model = unwrap_model(model)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = rate
        elif isinstance(module, MultiHeadAttention):
            module.dropout = rate
    model.cfg = model.cfg.replace(drop_rate=rate)
    return model


def frozen_prefix(model: GPTModel) -> int:
    """How many leading transformer blocks (with the embeddings) no gradient reaches, when their output
    does not change from one pass to the next (no dropout); 0 when any of them learns."""
    model = unwrap_model(model)
    if model.cfg.drop_rate > 0 or any(p.requires_grad for m in (model.tok_emb, model.pos_emb) for p in m.parameters()):
        return 0
    count = 0
    for block in model.trf_blocks:
        if any(p.requires_grad for p in block.parameters()):
            break
        count += 1
    return count


def hidden_states(model: GPTModel, in_idx: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """The (batch, tokens, emb_dim) output of the embeddings and the first ``n_blocks`` blocks."""
    model = unwrap_model(model)
    positions = torch.arange(in_idx.shape[1], device=in_idx.device)
    x = model.drop_emb(model.tok_emb(in_idx) + model.pos_emb(positions))
    for block in model.trf_blocks[:n_blocks]:
        x = block(x)
    return x


def class_logits(model: GPTModel, hidden: torch.Tensor, start_block: int = 0) -> torch.Tensor:
    """The (batch, classes) logits of the last position, from the hidden states that enter block
    ``start_block`` (the token ids themselves when ``start_block`` is 0 and ``hidden`` is ids)."""
    model = unwrap_model(model)
    if not hidden.is_floating_point():
        return model(hidden, last_only=True)[:, -1]
    for block in model.trf_blocks[start_block:]:
        hidden = block(hidden)
    return model.out_head(model.final_norm(hidden[:, -1]))


__all__ = ["add_class_head", "class_logits", "freeze_for_classification", "frozen_prefix", "hidden_states",
           "is_classifier", "set_dropout"]
