"""How big a model is and what a token costs: parameter counts and FLOPs per token.

A token costs 6 FLOPs per matrix weight in training (2 in the forward pass, 4 in the backward
pass) plus attention's scores and mixing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gptrain.model.config import GPTConfig


@dataclass(frozen=True)
class ParameterCounts:
    total: int  # every parameter, a tied head counted once
    embedding: int  # token and position embeddings
    non_embedding: int  # total - embedding: the blocks, the final norm and an untied head
    matrix: int  # weights of the matrix products a token passes through: the blocks' and the head's
    tied: bool


def parameter_counts(cfg: GPTConfig) -> ParameterCounts:
    """Exact counts for GPTModel(cfg), from its shape alone."""
    d, vocab = cfg.emb_dim, cfg.vocab_size
    # Per block: W_query/W_key/W_value/out_proj (4 d x d), the feed-forward (d x 4d, 4d x d); biases of
    # out_proj (d), the feed-forward (4d + d) and optionally of q/k/v (3d); two layer norms (2 x 2d).
    block_matrices = 12 * d * d
    block = block_matrices + d + 5 * d + 4 * d + (3 * d if cfg.qkv_bias else 0)
    embedding = vocab * d + cfg.context_length * d
    head = 0 if cfg.tie_embeddings else vocab * d
    total = embedding + cfg.n_layers * block + 2 * d + head
    return ParameterCounts(total=total, embedding=embedding, non_embedding=total - embedding,
                           matrix=cfg.n_layers * block_matrices + vocab * d, tied=cfg.tie_embeddings)


def flops_per_token(model_or_cfg: GPTConfig | torch.nn.Module, context_length: int | None = None) -> float:
    """Training FLOPs per token (forward and backward) at ``context_length`` (default: the model's).

    6 per matrix weight (2 forward, 4 backward) plus attention: per layer, the scores QK^T and the
    mixing of the values cost 2 x 2 x d x T forward per token, three times that with the backward.
    Embeddings are lookups, not products; the output head is a product, tied or not.
    """
    cfg = model_or_cfg if isinstance(model_or_cfg, GPTConfig) else model_or_cfg.cfg
    context = context_length or cfg.context_length
    return 6 * parameter_counts(cfg).matrix + 12 * cfg.n_layers * cfg.emb_dim * context


