"""GPT-2 models out of gptrain, to a Hugging Face folder; and the lecture's summary of a loaded model.

The way in, from any model reference, is :mod:`gptrain.interop.sources`; the conversion itself is in
:mod:`gptrain.interop.weights`, the download in :mod:`gptrain.interop.hub` and the folder written in
:mod:`gptrain.interop.export`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

from torch import nn

from gptrain.core.errors import GptrainError
from gptrain.core.oserrors import check_output_dir
from gptrain.data.tokenizer import get_tokenizer
from gptrain.data.trained_tokenizer import Tokenizer
from gptrain.interop.export import write_hf_folder
from gptrain.interop.hub import download_gpt2, gpt2_size
from gptrain.interop.sources import resolve_model
from gptrain.model.gpt import GPTModel, count_parameters, unwrap_model

# download_gpt2 and gpt2_size are the hub's, named here with the rest of GPT-2's way in and out.
__all__ = ["download_gpt2", "export_hf", "gpt2_size", "inspect_loaded_model"]


def export_hf(source: GPTModel | str | Path, out: str | Path, *, overwrite: bool = False,
              n_heads: int | None = None, tokenizer: Tokenizer | None = None) -> Path:
    """Write a model as a Hugging Face GPT-2 folder that ``GPT2LMHeadModel.from_pretrained`` and
    ``AutoTokenizer.from_pretrained`` read: ``config.json``, ``model.safetensors`` and its
    tokenizer's files (GPT-2's, or a trained one's ``tokenizer.json``).

    ``source`` is a GPTModel (with ``tokenizer``, GPT-2's by default) or anything
    :func:`gptrain.interop.sources.resolve_model` takes (its own tokenizer). The folder is written
    under a temporary name and renamed into place; an existing non-empty ``out`` is only replaced
    with ``overwrite=True``.
    """
    if isinstance(source, nn.Module):
        model, tokenizer = unwrap_model(source), tokenizer or get_tokenizer()
    else:
        resolved = resolve_model(source, n_heads=n_heads)
        model, tokenizer = resolved.model, resolved.tokenizer
    if model.cfg.vocab_size < tokenizer.n_vocab:
        raise GptrainError(f"the model has {model.cfg.vocab_size} token embeddings, fewer than its tokenizer "
                           f"{tokenizer.name} needs ({tokenizer.n_vocab}): it cannot be exported with that tokenizer")
    out = check_output_dir(Path(out).expanduser())
    if not isinstance(source, nn.Module):
        target, model_path = out.resolve(), Path(source).expanduser().resolve()
        if target == model_path or target in model_path.parents or model_path in target.parents:
            raise GptrainError(f"{out} would replace the model being exported ({source}) or lie inside it: "
                               "choose another --out")
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise GptrainError(f"{out} already exists: choose another --out, or pass --overwrite to replace it")
    return write_hf_folder(model, out, tokenizer)


def inspect_loaded_model(model: nn.Module, file: TextIO | None = None) -> int:
    """Print the lecture's summary of a loaded model and return its parameter count (each tensor once)."""
    model = unwrap_model(model)
    out = file or sys.stdout
    cfg = model.cfg
    vocab_size, emb_dim = model.tok_emb.weight.shape
    block = model.trf_blocks[0]
    total = count_parameters(model)
    head = model.out_head.weight.numel()
    lines = [
        "Model parameter summary:",
        f"Token embeddings: {tuple(model.tok_emb.weight.shape)}",
        f"  Vocabulary size: {vocab_size:,}",
        f"  Embedding dimension: {emb_dim}",
        f"Position embeddings: {tuple(model.pos_emb.weight.shape)}",
        f"  Context length: {model.pos_emb.weight.shape[0]:,}",
        f"Number of transformer blocks: {len(model.trf_blocks)}",
        f"  Block 0: attention params: {sum(p.numel() for p in block.att.parameters()):,}, "
        f"feed-forward params: {sum(p.numel() for p in block.ff.parameters()):,}",
    ]
    if cfg.tie_embeddings:
        lines += [f"Output head: {tuple(model.out_head.weight.shape)}, tied to the token embedding",
                  f"Total parameters: {total:,} (the tied head counted once)",
                  f"  with the head counted as a matrix of its own: {total + head:,}"]
    else:
        lines += [f"Output head: {tuple(model.out_head.weight.shape)}, separate from the token embedding",
                  f"Total parameters: {total:,}",
                  f"  without the output head: {total - head:,}"]
    lines.append(f"Config: {json.dumps(cfg.to_dict())}")
    print("\n".join(lines), file=out)
    return total
