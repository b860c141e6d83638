"""The GPT-2 architecture with the book's module names.

Modules are created in the same order and with the same PyTorch default initialisation as the
book's ``GPTModel``, so ``torch.manual_seed(123); GPTModel(cfg)`` gives the book's initial
weights. Attention goes through ``F.scaled_dot_product_attention`` (fused kernels, no T x T
mask buffer); layer norms are ``nn.LayerNorm`` (``.weight``/``.bias``, where the book calls
them ``scale``/``shift``).

For generation, ``forward(in_idx, cache)`` takes a :class:`KVCache`: the keys and values of
the tokens fed so far are kept, so each new token costs one position instead of the whole
window.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from gptrain.model.config import GPTConfig, as_model_config


class KVCache:
    """Keys and values of every layer for up to ``max_len`` positions, allocated once and reused.

    ``model(idx, cache)`` appends the keys and values of ``idx`` and numbers its positions from
    ``cache.length`` on. Rows may be left-padded: row i's first ``pad[i]`` slots hold padding
    that no real token attends to, and its positions count from its first real token, so each
    row gets the logits it would get alone.
    """

    def __init__(self, cfg: GPTConfig | Mapping[str, Any] | str, batch_size: int, max_len: int,
                 pad: torch.Tensor | None = None):
        cfg = as_model_config(cfg)
        self.shape = (cfg.n_layers, batch_size, cfg.n_heads, max_len, cfg.emb_dim // cfg.n_heads)
        self.max_len = max_len
        self.keys: torch.Tensor | None = None  # allocated on first use, in the dtype the layers produce
        self.values: torch.Tensor | None = None
        self.reset(pad)

    def reset(self, pad: torch.Tensor | None = None) -> None:
        """Forget the cached tokens (keeping the memory); ``pad`` holds the new rows' padding counts."""
        self.length = 0
        self.pad = pad if pad is not None and bool(pad.any()) else None
        if self.pad is not None:
            self.is_real = torch.arange(self.max_len, device=pad.device) >= self.pad[:, None]

    def positions(self, seq_len: int, device: torch.device) -> torch.Tensor:
        positions = torch.arange(self.length, self.length + seq_len, device=device)
        if self.pad is None:
            return positions
        return (positions - self.pad[:, None]).clamp(min=0)

    def attention_mask(self, seq_len: int, device: torch.device) -> torch.Tensor | None:
        """What each new query may attend to, or None where SDPA needs no mask (see MultiHeadAttention)."""
        if self.pad is None and (seq_len == 1 or self.length == 0):
            return None
        end = self.length + seq_len
        queries = torch.arange(self.length, end, device=device)[:, None]
        keys = torch.arange(end, device=device)
        causal = keys <= queries
        if self.pad is None:
            return causal
        # A padding slot attends to itself: a query that may attend to nothing gets NaN from softmax.
        return causal & (self.is_real[:, None, None, :end] | (keys == queries))

    def update(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new (batch, heads, tokens, head_dim) keys and values; return all of the layer's so far."""
        if self.keys is None:
            self.keys = keys.new_empty(self.shape)
            self.values = values.new_empty(self.shape)
        end = self.length + keys.shape[2]
        self.keys[layer, :, :, self.length:end] = keys
        self.values[layer, :, :, self.length:end] = values
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]


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

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, tokens, _ = x.shape
        queries = self._split_heads(self.W_query(x))
        keys = self._split_heads(self.W_key(x))
        values = self._split_heads(self.W_value(x))
        if cache is not None:
            keys, values = cache.update(layer, keys, values)
        # Without a mask the queries are either all the keys (causal) or one query that sees every key.
        context = F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0,
            is_causal=attn_mask is None and tokens > 1,
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
        self.drop_shortcut = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_shortcut(self.att(self.norm1(x), cache, layer, attn_mask))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


class GPTModel(nn.Module):
    """GPT-2: token + position embeddings, ``n_layers`` pre-norm blocks, final norm, output head.

    ``forward(in_idx)`` takes token ids of shape (batch, tokens) and returns logits of shape
    (batch, tokens, vocab_size). Losses live in :mod:`gptrain.model.loss`. With a :class:`KVCache` the
    tokens continue the cached ones; ``last_only=True`` computes the logits of the last
    position only (all that generation needs from a prompt). Without a cache, ``positions`` and
    ``attn_mask`` replace the causal defaults (several sequences packed in one row, which may be
    longer than the context as long as the positions are not), and ``logits_at`` (indices into
    the flattened batch x tokens) computes only those positions' logits, (len(logits_at), vocab).
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

    def forward(self, in_idx: torch.Tensor, cache: KVCache | None = None, *, last_only: bool = False,
                positions: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                logits_at: torch.Tensor | None = None) -> torch.Tensor:
        _, seq_len = in_idx.shape
        # Packed rows may be longer than the window; their positions are not.
        if seq_len > self.cfg.context_length and positions is None:
            raise ValueError(
                f"input has {seq_len} tokens but the model's context is {self.cfg.context_length}: "
                "crop it to the last context_length tokens"
            )
        if cache is None:
            if positions is None:
                positions = torch.arange(seq_len, device=in_idx.device)
        else:
            if cache.length + seq_len > min(cache.max_len, self.cfg.context_length):
                raise ValueError(
                    f"the cache holds {cache.length} tokens and {seq_len} more do not fit in its "
                    f"{min(cache.max_len, self.cfg.context_length)} positions: reset it and feed the last window"
                )
            positions = cache.positions(seq_len, in_idx.device)
            attn_mask = cache.attention_mask(seq_len, in_idx.device)
        x = self.drop_emb(self.tok_emb(in_idx) + self.pos_emb(positions))
        for layer, block in enumerate(self.trf_blocks):
            x = block(x, cache, layer, attn_mask)
        if cache is not None:
            cache.length += seq_len
        if last_only:
            x = x[:, -1:]
        if logits_at is not None:
            x = x.flatten(0, 1)[logits_at]
        return self.out_head(self.final_norm(x))


def count_parameters(model: nn.Module, include_out_head: bool = True) -> int:
    """Parameters of ``model``, each shared tensor counted once.

    With ``include_out_head=False`` the output head is left out, which for the 124M preset
    gives OpenAI's 124,412,160 (their head is tied to the token embedding).
    """
    model = unwrap_model(model)
    total = sum(p.numel() for p in model.parameters())
    if not include_out_head and not model.cfg.tie_embeddings:
        total -= sum(p.numel() for p in model.out_head.parameters())  # a classifier's head has a bias too
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


class _SkipInit(TorchFunctionMode):
    """Makes torch.nn.init's functions return their tensor untouched. On the meta device they run
    Python reference kernels whose first call imports torch._dynamo: 1.4 s of CPU at every start of
    a command that loads a model, for values nobody reads."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def meta_model(cfg: GPTConfig | Mapping[str, Any] | str) -> GPTModel:
    """A GPTModel of shape ``cfg`` on the meta device, without random init: the frame weights are loaded into."""
    with torch.device("meta"), _SkipInit():
        return GPTModel(cfg)
