"""Tiny GPT-2 checkpoints in each format gptrain reads, written by the libraries that define them."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

TINY_HF = dict(n_layer=2, n_embd=32, n_head=4, n_positions=64, vocab_size=50257)


def tiny_hf_model(seed: int = 0, **overrides):
    """A random ``transformers.GPT2LMHeadModel`` of TINY_HF's shape, in eval mode."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**TINY_HF, **overrides})).eval()


def save_openai_layout(hf_model, folder: Path) -> Path:
    """The layout of openai-community/gpt2's files: no ``transformer.`` prefix, no lm_head, and the
    causal-mask buffers (``h.N.attn.bias``, ``h.N.attn.masked_bias``) that the hub file carries."""
    folder.mkdir(parents=True, exist_ok=True)
    hf_model.config.to_json_file(folder / "config.json")
    ctx = hf_model.config.n_positions
    state = {name.removeprefix("transformer."): tensor.contiguous() for name, tensor in hf_model.state_dict().items()
             if name != "lm_head.weight"}
    for i in range(hf_model.config.n_layer):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(ctx, ctx)).view(1, 1, ctx, ctx)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    safetensors.torch.save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def save_pickle_layout(hf_model, folder: Path) -> Path:
    """``pytorch_model.bin`` as transformers 4 wrote it: ``torch.save(model.state_dict())``, tied lm_head included."""
    folder.mkdir(parents=True, exist_ok=True)
    hf_model.config.to_json_file(folder / "config.json")
    torch.save(hf_model.state_dict(), folder / "pytorch_model.bin")
    return folder


def write_config(folder: Path, **values) -> None:
    (folder / "config.json").write_text(json.dumps(values))


@contextlib.contextmanager
def serving_as_hub_gpt2(folder: Path, size: str, monkeypatch):
    """Serve ``folder``'s config.json and model.safetensors on 127.0.0.1 where the hub serves GPT-2
    ``size``, with the file's own hash as the known one, and point gptrain at that server.
    Yields (server, weights bytes)."""
    from httpserver import FileServer

    from gptrain.interop import hub

    weights = (folder / "model.safetensors").read_bytes()
    monkeypatch.setitem(hub.KNOWN_WEIGHTS, size, (hashlib.sha256(weights).hexdigest(), len(weights)))
    monkeypatch.delenv("GPTRAIN_OFFLINE")
    repo = f"/openai-community/{hub.GPT2_REPOS[size]}/resolve/main"
    files = {f"{repo}/config.json": (folder / "config.json").read_bytes(), f"{repo}/model.safetensors": weights}
    with FileServer(files) as server:
        monkeypatch.setenv("GPTRAIN_HF_ENDPOINT", server.url)
        yield server, weights
