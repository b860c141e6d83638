"""LoRA: fine-tune a few low-rank matrices beside frozen pretrained weights.

Each adapted linear layer keeps its weight ``W`` frozen and learns ``A`` (rank x in) and ``B``
(out x rank); it computes ``W x + scale * B A dropout(x)`` with ``scale = alpha / rank``. ``B``
starts at zero, so before the first update the model is exactly the base model. Merging folds
the product into the weight, ``W + scale * B @ A``, and gives back a plain GPTModel.

Layers are named for what they are in a GPT-2 block::

    q, k, v, o    attention's W_query, W_key, W_value, out_proj   (the group "attn")
    fc, proj      the feed-forward's two layers, ff.layers.0/2     (the group "ff")

A live model keeps its parameter names (``...W_query.weight``) and adds ``...W_query.lora_A``
and ``...W_query.lora_B``. An adapter file (``adapter.safetensors``) holds only those, with the
rank, alpha and targets in its metadata. :func:`export_peft_adapter` writes them in the format
Hugging Face ``peft`` loads onto an exported GPT-2 (``gptrain export``), whose fused ``c_attn``
takes the q, k and v adapters as one adapter of rank 3R with a block-diagonal ``B``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Sequence

import safetensors
import torch
import torch.nn.functional as F
from torch import nn

from gptrain.core.errors import GptrainError
from gptrain.core.files import atomic_path, staged_dir
from gptrain.core.tensorfile import save_tensors
from gptrain.model.gpt import GPTModel, unwrap_model

# Short name -> the layer's path inside trf_blocks.N, and the GPT-2 (Hugging Face) module it becomes.
TARGETS = {
    "q": ("att.W_query", "attn.c_attn"),
    "k": ("att.W_key", "attn.c_attn"),
    "v": ("att.W_value", "attn.c_attn"),
    "o": ("att.out_proj", "attn.c_proj"),
    "fc": ("ff.layers.0", "mlp.c_fc"),
    "proj": ("ff.layers.2", "mlp.c_proj"),
}
TARGET_GROUPS = {"attn": ("q", "k", "v", "o"), "ff": ("fc", "proj"), "all": tuple(TARGETS)}
DEFAULT_TARGETS = tuple(TARGETS)
ADAPTER_FILE = "adapter.safetensors"
PEFT_DIR = "peft"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"


def expand_targets(names: Iterable[str]) -> tuple[str, ...]:
    """The short layer names that ``names`` stand for (groups expanded, order kept, no repeats)."""
    expanded: list[str] = []
    for name in names:
        for part in str(name).split(","):
            part = part.strip()
            if not part:
                continue
            if part not in TARGETS and part not in TARGET_GROUPS:
                raise GptrainError(f"unknown --lora-targets name {part!r}: choose from "
                                   f"{', '.join([*TARGETS, *TARGET_GROUPS])}")
            expanded += [n for n in TARGET_GROUPS.get(part, (part,)) if n not in expanded]
    if not expanded:
        raise GptrainError("--lora-targets names no layer: give some of " + ", ".join([*TARGETS, *TARGET_GROUPS]))
    return tuple(expanded)


class LoRALinear(nn.Linear):
    """A frozen ``nn.Linear`` plus a trainable low-rank update ``scale * B @ A``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias  # the same Parameter objects: nothing is copied
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.rank, self.alpha = rank, alpha
        self.scale = alpha / rank
        self.lora_dropout = nn.Dropout(dropout)
        # As peft and the LoRA paper: A random (nn.Linear's own initialisation), B zero.
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)
        return super().forward(x) + self.scale * update

    def delta_weight(self) -> torch.Tensor:
        return self.scale * (self.lora_B @ self.lora_A)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha:g}"


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The adapted layers of ``model`` by their module names."""
    return {name: module for name, module in unwrap_model(model).named_modules() if isinstance(module, LoRALinear)}


def has_lora(model: nn.Module) -> bool:
    return bool(lora_layers(model))


def add_lora(model: GPTModel, rank: int = 8, alpha: float | None = None, dropout: float = 0.0,
             targets: Sequence[str] = DEFAULT_TARGETS) -> GPTModel:
    """Freeze every parameter of ``model`` and give the ``targets`` layers of each block a LoRA
    adapter of ``rank`` (``alpha`` defaults to 2 x rank). Changes ``model`` in place and returns it.

    Then ``[p for p in model.parameters() if p.requires_grad]`` are the adapters alone, which is
    what any optimizer (and ``gptrain.optim.make_optimizer``) should be given.
    """
    model = unwrap_model(model)
    if has_lora(model):
        raise GptrainError("the model already has LoRA adapters: merge them first (merge_lora) to add new ones")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise GptrainError(f"--lora-rank must be a positive integer, not {rank!r}")
    alpha = 2.0 * rank if alpha is None else float(alpha)
    names = expand_targets(targets)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for block in model.trf_blocks:
        for name in names:
            parent_path, _, attr = TARGETS[name][0].rpartition(".")
            parent = block.get_submodule(parent_path)
            base = getattr(parent, attr) if not attr.isdigit() else parent[int(attr)]
            width = min(base.in_features, base.out_features)
            if rank > width:
                raise GptrainError(f"--lora-rank {rank} is larger than layer {name}'s width {width}: "
                                   f"give a rank of at most {width}")
            adapted = LoRALinear(base, rank, alpha, dropout)
            if attr.isdigit():
                parent[int(attr)] = adapted
            else:
                setattr(parent, attr, adapted)
    return model


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict with every adapter folded into its weight (W + scale * B @ A), under
    a plain GPTModel's names; the same as ``model.state_dict()`` for a model without adapters."""
    model = unwrap_model(model)
    state = model.state_dict()
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            weight = state[f"{name}.weight"]
            state[f"{name}.weight"] = (weight.float() + layer.delta_weight().float()).to(weight.dtype)
            del state[f"{name}.lora_A"], state[f"{name}.lora_B"]
    return state


def merge_lora(model: GPTModel) -> GPTModel:
    """Fold every adapter into its weight in place and put plain layers back: a GPTModel without
    LoRA, whose outputs equal the adapted model's."""
    model = unwrap_model(model)
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
            plain.weight = nn.Parameter(layer.weight + layer.delta_weight().to(layer.weight.dtype))
            if layer.bias is not None:
                plain.bias = nn.Parameter(layer.bias.detach().clone())
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            if attr.isdigit():
                parent[int(attr)] = plain
            else:
                setattr(parent, attr, plain)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


def lora_settings(model: nn.Module) -> dict[str, object]:
    """Rank, alpha and the short target names of an adapted model."""
    layers = lora_layers(model)
    if not layers:
        raise GptrainError("the model has no LoRA adapters: add them with add_lora")
    first = next(iter(layers.values()))
    paths = {path: short for short, (path, _) in TARGETS.items()}
    targets = [paths[name.split(".", 2)[2]] for name in layers if name.startswith("trf_blocks.0.")]
    return {"rank": first.rank, "alpha": first.alpha, "dropout": first.lora_dropout.p, "targets": targets}


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapters: ``<layer>.lora_A`` and ``<layer>.lora_B`` of every adapted layer."""
    return {f"{name}.{part}": getattr(layer, part).detach().contiguous()
            for name, layer in lora_layers(model).items() for part in ("lora_A", "lora_B")}


def save_adapter(model: nn.Module, path: str | Path) -> Path:
    """Write the adapters to a safetensors file (rank, alpha and targets in its metadata)."""
    path = Path(path)
    settings = lora_settings(model)
    metadata = {"format": "pt", "lora": json.dumps(settings)}
    tensors = {name: tensor.cpu() for name, tensor in adapter_state_dict(model).items()}
    with atomic_path(path) as tmp:
        save_tensors(tensors, tmp, metadata=metadata)
    return path


def read_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """The tensors and settings of an adapter file written by :func:`save_adapter`."""
    path = Path(path)
    try:
        with safetensors.safe_open(path, framework="pt") as f:
            settings = json.loads((f.metadata() or {})["lora"])
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (safetensors.SafetensorError, OSError, KeyError, ValueError) as exc:
        raise GptrainError(f"{path} is missing, damaged or not a gptrain LoRA adapter ({exc}): "
                           "use another checkpoint") from None
    return tensors, settings


def load_adapter(model: GPTModel, path: str | Path) -> GPTModel:
    """Copy an adapter file's tensors into ``model``; adds the adapters first if it has none."""
    tensors, settings = read_adapter(path)
    model = unwrap_model(model)
    if not has_lora(model):
        add_lora(model, settings["rank"], settings["alpha"], settings.get("dropout", 0.0), settings["targets"])
    live = adapter_state_dict(model)
    if set(live) != set(tensors) or any(live[n].shape != tensors[n].shape for n in live):
        raise GptrainError(f"{path} does not fit the model's adapters (other rank, targets or size): "
                           "load it into the model it was trained on")
    layers = lora_layers(model)
    with torch.no_grad():
        for name, tensor in tensors.items():
            layer, _, part = name.rpartition(".")
            getattr(layers[layer], part).copy_(tensor)
    return model


# --- peft ---------------------------------------------------------------------------------

def peft_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, int], dict[str, float]]:
    """The adapters under peft's names for GPT2LMHeadModel, with the rank and alpha of each fused module.

    GPT-2 computes q, k and v with one ``c_attn`` (out = 3 x width). Its adapter stacks the
    adapted parts' A matrices (rank k*R for k adapted parts) and places each B in its own rows
    and columns of a block-diagonal B, so B @ A is each part's B_p @ A_p in its third of the
    output. peft scales by alpha / rank, so the fused adapter's alpha is k x alpha.
    """
    model = unwrap_model(model)
    layers = lora_layers(model)
    settings = lora_settings(model)
    rank, alpha = settings["rank"], settings["alpha"]
    width = model.cfg.emb_dim
    tensors: dict[str, torch.Tensor] = {}
    fused_parts = [name for name in ("q", "k", "v") if name in settings["targets"]]
    for i in range(model.cfg.n_layers):
        prefix = f"base_model.model.transformer.h.{i}."
        if fused_parts:
            a_parts, b = [], torch.zeros(3 * width, rank * len(fused_parts))
            for column, name in enumerate(fused_parts):
                layer = layers[f"trf_blocks.{i}.{TARGETS[name][0]}"]
                row = "qkv".index(name) * width
                a_parts.append(layer.lora_A.detach().float().cpu())
                b[row:row + width, column * rank:(column + 1) * rank] = layer.lora_B.detach().float().cpu()
            tensors[f"{prefix}attn.c_attn.lora_A.weight"] = torch.cat(a_parts).contiguous()
            tensors[f"{prefix}attn.c_attn.lora_B.weight"] = b
        for name in settings["targets"]:
            ours, theirs = TARGETS[name]
            if theirs == "attn.c_attn":
                continue
            layer = layers[f"trf_blocks.{i}.{ours}"]
            tensors[f"{prefix}{theirs}.lora_A.weight"] = layer.lora_A.detach().float().cpu().contiguous()
            tensors[f"{prefix}{theirs}.lora_B.weight"] = layer.lora_B.detach().float().cpu().contiguous()
    ranks, alphas = {}, {}
    if fused_parts:
        ranks["attn.c_attn"] = rank * len(fused_parts)
        alphas["attn.c_attn"] = alpha * len(fused_parts)
    return tensors, ranks, alphas


def export_peft_adapter(model: nn.Module, out: str | Path, *, base_model: str | None = None) -> Path:
    """Write ``model``'s adapters as a peft LoRA adapter folder (``adapter_config.json`` and
    ``adapter_model.safetensors``) for GPT2LMHeadModel. Load it onto the base model exported with
    ``gptrain export``: ``PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(base), out)``."""
    settings = lora_settings(model)
    tensors, ranks, alphas = peft_tensors(model)
    modules = list(dict.fromkeys(TARGETS[name][1] for name in settings["targets"]))
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": settings["rank"], "lora_alpha": settings["alpha"], "lora_dropout": settings["dropout"],
        "target_modules": modules, "rank_pattern": ranks, "alpha_pattern": alphas,
        # GPT-2's Conv1D stores its weight as (in, out): peft must transpose the update.
        "fan_in_fan_out": True, "bias": "none", "inference_mode": True,
    }

    out = Path(out)
    with staged_dir(out) as tmp:
        save_tensors(tensors, tmp / PEFT_WEIGHTS, metadata={"format": "pt"})
        (tmp / PEFT_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out


__all__ = [
    "ADAPTER_FILE",
    "DEFAULT_TARGETS",
    "LoRALinear",
    "TARGETS",
    "add_lora",
    "adapter_state_dict",
    "export_peft_adapter",
    "has_lora",
    "load_adapter",
    "lora_layers",
    "merge_lora",
    "merged_state_dict",
    "save_adapter",
]
