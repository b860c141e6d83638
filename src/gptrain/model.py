"""The GPT-2 architecture with the book's module names.

Modules are created in the same order and with the same PyTorch default initialisation as the
book's ``GPTModel``, so ``torch.manual_seed(123); GPTModel(cfg)`` gives the book's initial
weights. Attention goes through ``F.scaled_dot_product_attention`` (fused kernels, no T x T
mask buffer); layer norms are ``nn.LayerNorm`` (``.weight``/``.bias``, where the book calls
them ``scale``/``shift``).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from gptrain.config import GPTConfig, as_model_config


class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention with separate query/key/value projections, as in the book."""

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float, num_heads: int,
                 qkv_bias: bool = False):
        super().__init__()
        self.d_out = d_out
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads
        self.context_length = context_length
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = dropout

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        return x.view(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        queries = self._split_heads(self.W_query(x))
        keys = self._split_heads(self.W_key(x))
        values = self._split_heads(self.W_value(x))
        context = F.scaled_dot_product_attention(
            queries, keys, values, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        context = context.transpose(1, 2).reshape(batch, tokens, self.d_out)
        return self.out_proj(context)


class FeedForward(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(cfg.emb_dim, 4 * cfg.emb_dim),
            nn.GELU(approximate="tanh"),  # GPT-2's GELU, the book's formula in one fused op
            nn.Linear(4 * cfg.emb_dim, cfg.emb_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.att = MultiHeadAttention(
            d_in=cfg.emb_dim,
            d_out=cfg.emb_dim,
            context_length=cfg.context_length,
            dropout=cfg.drop_rate,
            num_heads=cfg.n_heads,
            qkv_bias=cfg.qkv_bias,
        )
        self.ff = FeedForward(cfg)
        self.norm1 = nn.LayerNorm(cfg.emb_dim, eps=1e-5)
        self.norm2 = nn.LayerNorm(cfg.emb_dim, eps=1e-5)
        self.drop_resid = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_resid(self.att(self.norm1(x)))
        return x + self.drop_resid(self.ff(self.norm2(x)))


class GPTModel(nn.Module):
    """GPT-2: token + position embeddings, ``n_layers`` pre-norm blocks, final norm, output head.

    ``forward(in_idx)`` takes token ids of shape (batch, tokens) and returns logits of shape
    (batch, tokens, vocab_size). Losses live in :mod:`gptrain.loss`.
    """

    def __init__(self, cfg: GPTConfig | Mapping[str, Any] | str):
        super().__init__()
        cfg = as_model_config(cfg)
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.trf_blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(cfg.emb_dim, eps=1e-5)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.out_head.weight = self.tok_emb.weight

    def forward(self, in_idx: torch.Tensor) -> torch.Tensor:
        _, seq_len = in_idx.shape
        if seq_len > self.cfg.context_length:
            raise ValueError(
                f"input has {seq_len} tokens but the model's context is {self.cfg.context_length}: "
                "crop it to the last context_length tokens"
            )
        positions = torch.arange(seq_len, device=in_idx.device)
        x = self.drop_emb(self.tok_emb(in_idx) + self.pos_emb(positions))
        for block in self.trf_blocks:
            x = block(x)
        return self.out_head(self.final_norm(x))


def count_parameters(model: nn.Module, include_out_head: bool = True) -> int:
    """Parameters of ``model``, each shared tensor counted once.

    With ``include_out_head=False`` the output head is left out, which for the 124M preset
    gives OpenAI's 124,412,160 (their head is tied to the token embedding).
    """
    model = unwrap_model(model)
    total = sum(p.numel() for p in model.parameters())
    if not include_out_head and not model.cfg.tie_embeddings:
        total -= model.out_head.weight.numel()
    return total


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain GPTModel inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model
