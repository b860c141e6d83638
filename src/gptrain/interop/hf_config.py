"""Hugging Face's GPT-2 ``config.json``: read into a GPTConfig, and written for an exported model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch

from gptrain.core.errors import GptrainError
from gptrain.data.tokenizer import VOCAB_SIZE, get_tokenizer
from gptrain.data.trained_tokenizer import Tokenizer, TrainedTokenizer, tokenizer_identity
from gptrain.model.config import GPTConfig

HF_CONFIG = "config.json"
HF_SAFETENSORS = "model.safetensors"
HF_PICKLE = "pytorch_model.bin"
# GPT-2's format has qkv biases always: gptrain marks the export of a model without them (written as
# zeros), so that it reads back as that model. transformers keeps the key as an unused attribute.
QKV_BIAS_KEY = "gptrain_qkv_bias"
# The export of a model with a trained tokenizer names it (name, sha256) beside its tokenizer.json,
# which transformers reads and gptrain reads back: without the key the folder is GPT-2's.
TOKENIZER_KEY = "gptrain_tokenizer"


def config_from_hf(hf: Mapping[str, Any], source: str | Path = HF_CONFIG) -> GPTConfig:
    """The GPTConfig of a Hugging Face GPT-2 ``config.json`` (qkv bias on, head tied unless it says not)."""
    if not isinstance(hf, Mapping) or hf.get("model_type") != "gpt2":
        model_type = hf.get("model_type") if isinstance(hf, Mapping) else None
        raise GptrainError(f"{source} is not a GPT-2 config (model_type {model_type!r}, not 'gpt2'): "
                           "give a GPT-2 checkpoint")
    emb_dim = hf.get("n_embd", 768)
    supported = {
        "activation_function": (hf.get("activation_function", "gelu_new"), ("gelu_new", "gelu_pytorch_tanh")),
        "layer_norm_epsilon": (hf.get("layer_norm_epsilon", 1e-5), (1e-5,)),
        "n_inner": (hf.get("n_inner"), (None, 4 * emb_dim)),
        "scale_attn_weights": (hf.get("scale_attn_weights", True), (True,)),
        "scale_attn_by_inverse_layer_idx": (hf.get("scale_attn_by_inverse_layer_idx", False), (False,)),
        "add_cross_attention": (hf.get("add_cross_attention", False), (False,)),
    }
    for key, (value, allowed) in supported.items():
        if value not in allowed:
            raise GptrainError(f"{source}: {key} {value!r} is not supported (GPTModel has {allowed[-1]!r}): "
                               "this GPT-2 variant cannot be loaded")
    try:
        return GPTConfig(
            vocab_size=hf.get("vocab_size", VOCAB_SIZE), context_length=hf.get("n_positions", 1024), emb_dim=emb_dim,
            n_heads=hf.get("n_head", 12), n_layers=hf.get("n_layer", 12), drop_rate=hf.get("resid_pdrop", 0.1),
            qkv_bias=hf.get(QKV_BIAS_KEY, True) is not False, tie_embeddings=hf.get("tie_word_embeddings", True),
        )
    except GptrainError as exc:
        raise GptrainError(f"{source}: {exc}") from None


def read_hf_config(path: Path) -> GPTConfig:
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GptrainError(f"{path} is not a readable JSON config ({exc}): give a GPT-2 checkpoint") from None
    return config_from_hf(hf, path)


def hf_config_dict(cfg: GPTConfig, dtype: torch.dtype = torch.float32,
                   tokenizer: Tokenizer | None = None) -> dict[str, Any]:
    """The ``config.json`` with which transformers builds ``cfg`` as a ``GPT2LMHeadModel``."""
    tokenizer = tokenizer or get_tokenizer()
    trained = {TOKENIZER_KEY: tokenizer_identity(tokenizer)} if isinstance(tokenizer, TrainedTokenizer) else {}
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.context_length,
        "n_embd": cfg.emb_dim,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": None,
        "activation_function": "gelu_new",  # the tanh approximation, as GPTModel's GELU
        "resid_pdrop": cfg.drop_rate,
        "embd_pdrop": cfg.drop_rate,
        "attn_pdrop": cfg.drop_rate,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "use_cache": True,
        "bos_token_id": tokenizer.eot_token,
        "eos_token_id": tokenizer.eot_token,
        "tie_word_embeddings": cfg.tie_embeddings,
        "torch_dtype": str(dtype).removeprefix("torch."),
    } | ({} if cfg.qkv_bias else {QKV_BIAS_KEY: False}) | trained
