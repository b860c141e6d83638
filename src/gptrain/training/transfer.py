"""Transfer learning: a training run that starts from pretrained weights (``gptrain train --init``).

The lecture's last step: pre-training is the expensive investment, and a practitioner starts
from a quality baseline (OpenAI's GPT-2, or a model of their own) and adapts it to their text,
either fully or with LoRA adapters (:mod:`gptrain.model.lora`). The run is a new one (step 0, fresh
optimizer and schedule); its architecture is SOURCE's, its window may be shorter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gptrain.core.errors import GptrainError
from gptrain.core.hashing import sha256_file
from gptrain.interop.sources import resolve_model
from gptrain.model.config import GPTConfig, get_preset
from gptrain.model.gpt import GPTModel, meta_model
from gptrain.store.checkpoint import load_state_into, weights_state_dict
from gptrain.training.config import SHAPE_FLAGS, TrainConfig

# Settings a resumed transfer run must keep: the base it adapts and the shape of its adapters.
TRANSFER_MUST_MATCH = ("init", "init_sha256", "lora_rank", "lora_alpha", "lora_targets")


def init_config(cfg: TrainConfig, source_cfg: GPTConfig) -> GPTConfig:
    """SOURCE's architecture at the run's window and drop rate; a preset that disagrees, or a longer
    window than SOURCE has position embeddings for, is an error."""
    if cfg.preset is not None:
        preset = get_preset(cfg.preset)
        shape = lambda c: (c.vocab_size, c.emb_dim, c.n_layers, c.n_heads)
        if shape(preset) != shape(source_cfg):
            raise GptrainError(f"--preset {cfg.preset} ({preset.describe()}) disagrees with --init {cfg.init} "
                               f"({source_cfg.describe()}): leave --preset out, the architecture comes from SOURCE")
    for name in SHAPE_FLAGS:
        given, source_value = getattr(cfg, name), getattr(source_cfg, name)
        if given is not None and given != source_value:
            flag = "--" + name.replace("_", "-")
            raise GptrainError(f"{flag} {given} disagrees with --init {cfg.init}'s {source_value} "
                               f"({source_cfg.describe()}): leave {flag} out, the architecture comes from SOURCE")
    context = cfg.context_length or source_cfg.context_length
    if context > source_cfg.context_length:
        raise GptrainError(f"--context-length {context} is longer than --init {cfg.init}'s "
                           f"{source_cfg.context_length} positions: give at most {source_cfg.context_length}")
    drop_rate = source_cfg.drop_rate if cfg.dropout is None else cfg.dropout
    return source_cfg.replace(context_length=context, drop_rate=drop_rate)


def load_init_model(cfg: TrainConfig, device: torch.device | str = "cpu") -> tuple[GPTModel, str]:
    """The model a run with ``cfg.init`` starts from, and the sha256 of SOURCE's weights file.

    Position embeddings beyond the run's window are dropped (the first rows are the ones a
    shorter window uses). With ``cfg.init_sha256`` set, SOURCE must still hold those weights.
    """

    # Weights files without a config do not record the head count: a given preset says it.
    n_heads = get_preset(cfg.preset).n_heads if cfg.preset is not None else None
    source = resolve_model(cfg.init, device=device, n_heads=n_heads)
    model, sha256 = source.model, sha256_file(source.weights_file)
    if cfg.init_sha256 is not None and sha256 != cfg.init_sha256:
        raise GptrainError(f"--init {cfg.init} holds other weights (sha256 {sha256[:12]}…) than the run started from "
                           f"({cfg.init_sha256[:12]}…): restore them, or start a new run with another --out")
    run_cfg = init_config(cfg, model.cfg)
    if run_cfg != model.cfg:
        state = weights_state_dict(model)
        state["pos_emb.weight"] = state["pos_emb.weight"][:run_cfg.context_length].clone()
        shorter = meta_model(run_cfg)
        model = load_state_into(shorter, state, cfg.init)
    return model.train(), sha256


def check_same_transfer(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    """Refuse to resume a run with another base or other adapters than it was trained with."""
    for name in TRANSFER_MUST_MATCH:
        before, now = saved.get(name), getattr(cfg, name)
        if isinstance(before, list):
            before = tuple(before)
        if before != now:
            raise GptrainError(f"cannot resume {path} with --{name.replace('_', '-')} {now!r}: it was trained with "
                               f"{before!r}; keep the setting, or start a new run with another --out")


def describe_start(cfg: TrainConfig, model: torch.nn.Module) -> str:
    """One line saying where a transfer run starts and, with LoRA, what it trains."""
    line = f"Starting from --init {cfg.init} (weights sha256 {cfg.init_sha256})"
    if cfg.lora_rank is None:
        return line + ": full fine-tuning"
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return (line + f": LoRA rank {cfg.lora_rank}, alpha {cfg.lora_alpha:g} on {','.join(cfg.lora_targets)}, "
            f"training {trained:,} of {total:,} parameters ({100 * trained / total:.2f}%)")
