"""Shared by the benchmarks: where the lecture's corpus is."""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent


def find_verdict() -> Path:
    """the-verdict.txt from $GPTRAIN_DATA_DIR or ../shared/data beside the checkout."""
    for folder in [*os.environ.get("GPTRAIN_DATA_DIR", "").split(os.pathsep), HERE.parent.parent / "shared" / "data"]:
        if folder and (Path(folder) / "the-verdict.txt").is_file():
            return Path(folder) / "the-verdict.txt"
    raise SystemExit("the-verdict.txt not found: set GPTRAIN_DATA_DIR to the folder that holds it")


def book_model_from(model):
    """The book's GPTModel (llms_from_scratch.ch04) holding ``model``'s weights."""
    from llms_from_scratch.ch04 import GPTModel as BookGPTModel

    cfg = model.cfg
    if cfg.tie_embeddings:
        raise SystemExit("the book's model has no tied output head")
    book = BookGPTModel(cfg.to_dict() | {"tie_embeddings": None})
    names = {"weight": "scale", "bias": "shift"}
    state = {}
    for name, tensor in model.state_dict().items():
        parts = name.split(".")
        if parts[-2] in {"norm1", "norm2", "final_norm"}:
            parts[-1] = names[parts[-1]]
        state[".".join(parts)] = tensor.clone()
    missing, unexpected = book.load_state_dict(state, strict=False)
    assert not unexpected and all(key.endswith(".mask") for key in missing), (missing, unexpected)
    return book


def hf_model_from(model):
    """HF transformers' GPT2LMHeadModel holding ``model``'s weights (zero q/k/v biases if it has none)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = model.cfg
    hf_cfg = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.context_length, n_embd=cfg.emb_dim,
                        n_layer=cfg.n_layers, n_head=cfg.n_heads, resid_pdrop=cfg.drop_rate,
                        embd_pdrop=cfg.drop_rate, attn_pdrop=cfg.drop_rate,
                        tie_word_embeddings=cfg.tie_embeddings, activation_function="gelu_new")
    hf = GPT2LMHeadModel(hf_cfg)
    ours = model.state_dict()
    state = {"transformer.wte.weight": ours["tok_emb.weight"], "transformer.wpe.weight": ours["pos_emb.weight"],
             "transformer.ln_f.weight": ours["final_norm.weight"], "transformer.ln_f.bias": ours["final_norm.bias"],
             "lm_head.weight": ours["out_head.weight"]}
    for i in range(cfg.n_layers):
        p, h = f"trf_blocks.{i}.", f"transformer.h.{i}."
        qkv = [ours[p + f"att.W_{n}.weight"] for n in ("query", "key", "value")]
        state[h + "attn.c_attn.weight"] = torch.cat(qkv, 0).t()
        if cfg.qkv_bias:
            state[h + "attn.c_attn.bias"] = torch.cat([ours[p + f"att.W_{n}.bias"] for n in ("query", "key", "value")])
        else:
            state[h + "attn.c_attn.bias"] = torch.zeros(3 * cfg.emb_dim)
        state[h + "attn.c_proj.weight"] = ours[p + "att.out_proj.weight"].t()
        state[h + "attn.c_proj.bias"] = ours[p + "att.out_proj.bias"]
        state[h + "mlp.c_fc.weight"] = ours[p + "ff.layers.0.weight"].t()
        state[h + "mlp.c_fc.bias"] = ours[p + "ff.layers.0.bias"]
        state[h + "mlp.c_proj.weight"] = ours[p + "ff.layers.2.weight"].t()
        state[h + "mlp.c_proj.bias"] = ours[p + "ff.layers.2.bias"]
        for n in ("1", "2"):
            state[h + f"ln_{n}.weight"] = ours[p + f"norm{n}.weight"]
            state[h + f"ln_{n}.bias"] = ours[p + f"norm{n}.bias"]
    hf.load_state_dict({k: v.contiguous().clone() for k, v in state.items()}, strict=False)
    return hf


def machine_description(device) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__}"


def matmul_peak(device, dtype, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an n x n x n matrix product on this device: the practical ceiling."""
    import time

    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    (a @ b).sum().item()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        (a @ b).sum().item()
        best = min(best, time.perf_counter() - started)
    return 2 * n ** 3 / best
