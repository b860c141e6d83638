"""The model's shape: GPTConfig, the GPT-2 presets and their aliases.

The book passes plain dicts such as ``GPT_CONFIG_124M``; every function that takes a model
config accepts such a dict, a preset name or a :class:`GPTConfig` alike.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, Mapping

from gptrain.core.errors import GptrainError


def describe_unknown(unknown: list[str], known: set[str]) -> tuple[str, bool]:
    """``"epoch (did you mean epochs?), foo"`` and whether every unknown name had a close match."""
    matches = {name: difflib.get_close_matches(name, sorted(known), n=1) for name in unknown}
    text = ", ".join(f"{name} (did you mean {match[0]}?)" if match else name for name, match in matches.items())
    return text, all(matches.values())


# The book's dict, exactly as chapter 4 defines it.
GPT_CONFIG_124M = {
    "vocab_size": 50257,
    "context_length": 1024,
    "emb_dim": 768,
    "n_heads": 12,
    "n_layers": 12,
    "drop_rate": 0.1,
    "qkv_bias": False,
}


@dataclass
class GPTConfig:
    """The shape of a GPT-2 style model; the field names are the book's dict keys."""

    vocab_size: int = 50257
    context_length: int = 1024
    emb_dim: int = 768
    n_heads: int = 12
    n_layers: int = 12
    drop_rate: float = 0.1
    qkv_bias: bool = False
    # The book keeps a separate output head (163M parameters for "124M"); OpenAI's GPT-2 ties
    # it to the token embedding (124M parameters).
    tie_embeddings: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise GptrainError(f"model config: {name} must be a positive integer, not {value!r}")
        if self.emb_dim % self.n_heads:
            raise GptrainError(
                f"model config: emb_dim {self.emb_dim} is not divisible by n_heads {self.n_heads}: "
                "choose a width that is a multiple of the head count"
            )
        if not 0.0 <= self.drop_rate < 1.0:
            raise GptrainError(f"model config: drop_rate must be in [0, 1), not {self.drop_rate!r}")

    # The book indexes its config dict (cfg["emb_dim"]); keep that working on the dataclass.
    def __getitem__(self, key: str) -> Any:
        if key not in self.to_dict():
            raise KeyError(key)
        return getattr(self, key)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "GPTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            text, all_matched = describe_unknown(unknown, known)
            raise GptrainError(f"model config: unknown key(s) {text}"
                               + ("" if all_matched else f"; known keys are {', '.join(sorted(known))}"))
        return cls(**values)

    def describe(self) -> str:
        """``12 layers, 12 heads, 768 wide, context 1024, 50257 tokens``: the shape in words."""
        return (f"{self.n_layers} layers, {self.n_heads} heads, {self.emb_dim} wide, context {self.context_length}, "
                f"{self.vocab_size} tokens")

    def replace(self, **changes: Any) -> "GPTConfig":
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, GPTConfig] = {
    "tiny": GPTConfig(context_length=128, emb_dim=64, n_heads=4, n_layers=2),
    "124M": GPTConfig(emb_dim=768, n_layers=12, n_heads=12),
    "355M": GPTConfig(emb_dim=1024, n_layers=24, n_heads=16),
    "774M": GPTConfig(emb_dim=1280, n_layers=36, n_heads=20),
    "1558M": GPTConfig(emb_dim=1600, n_layers=48, n_heads=25),
}


# Hugging Face names of OpenAI's checkpoints, for users who think in those.
PRESET_ALIASES = {"gpt2": "124M", "gpt2-medium": "355M", "gpt2-large": "774M", "gpt2-xl": "1558M"}


def get_preset(name: str) -> GPTConfig:
    """A fresh copy of the named preset (``tiny``, ``124M``, ``355M``, ``774M``, ``1558M``)."""
    key = PRESET_ALIASES.get(name, name)
    if key not in PRESETS:
        raise GptrainError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[key].replace()


def as_model_config(cfg: GPTConfig | Mapping[str, Any] | str) -> GPTConfig:
    """Accept a GPTConfig, the book's dict or a preset name."""
    if isinstance(cfg, GPTConfig):
        return cfg
    if isinstance(cfg, str):
        return get_preset(cfg)
    if isinstance(cfg, Mapping):
        return GPTConfig.from_dict(cfg)
    raise GptrainError(f"a model config must be a GPTConfig, a dict or a preset name, not {type(cfg).__name__}")


