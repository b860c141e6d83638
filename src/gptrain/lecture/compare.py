"""Side by side: continuations of one prompt from a trained checkpoint and a pretrained GPT-2."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import torch

from gptrain.core.errors import GptrainError
from gptrain.core.runtime import resolve_device
from gptrain.data.tokenizer import (
    END_OF_TEXT_ID,
    get_tokenizer,
    text_to_token_ids,
    token_ids_to_text,
)
from gptrain.inference.generate import check_sampling_args, generate
from gptrain.interop.hub import download_gpt2, gpt2_size
from gptrain.interop.sources import load_gpt2
from gptrain.model.gpt import GPTModel
from gptrain.model.quantize import quantize as quantize_model


def compare_continuations(prompt: str, *, checkpoint: str | Path | None = None,
                          pretrained: str | Path | None = "124M", max_new_tokens: int = 30,
                          temperature: float = 1.0, top_k: int | None = 40, top_p: float | None = None,
                          seed: int = 123,
                          device: torch.device | str = "cpu", n_heads: int | None = None,
                          quantize: str | None = None) -> list[tuple[str, str]]:
    """The lecture's before/after activity: ``[(label, continuation), ...]`` for a randomly
    initialised model, the trained ``checkpoint`` and the ``pretrained`` weights (each if given).

    All use the same prompt, seed and sampling settings. The random model has the config of
    the pretrained model (else of the checkpoint) and is initialised after ``torch.manual_seed(seed)``.
    ``quantize="int8"`` runs all three with int8 weights (see :func:`gptrain.model.quantize.quantize`).
    """
    if checkpoint is None and pretrained is None:
        raise GptrainError("nothing to compare with: give --model, --baseline or both")
    tokenizer = get_tokenizer()
    idx = text_to_token_ids(prompt, tokenizer)
    if idx.shape[1] == 0:
        raise GptrainError("the prompt is empty: give --prompt some text")

    def continuation(model: GPTModel) -> str:
        generator = torch.Generator(device=device).manual_seed(seed)
        out = generate(model.to(device), idx.to(device), max_new_tokens, model.cfg.context_length,
                       temperature=temperature, top_k=top_k, top_p=top_p, eos_id=END_OF_TEXT_ID,
                       generator=generator)
        return token_ids_to_text(out[0, idx.shape[1]:], tokenizer)

    sources = {"trained": checkpoint, "pretrained": pretrained}
    texts, reference = {}, None
    for kind in ("pretrained", "trained"):  # the pretrained model's config comes first
        if sources[kind] is not None:
            model = load_gpt2(sources[kind], device=device, n_heads=n_heads, quantize=quantize)
            if reference is None:
                reference = model.cfg
            texts[kind] = continuation(model)
            del model  # one model in memory at a time
    torch.manual_seed(seed)
    random_model = GPTModel(reference)
    if quantize is not None:
        random_model = quantize_model(random_model.to(device), quantize)
    rows = [("random init", continuation(random_model))]
    rows += [(f"{kind} {sources[kind]}", texts[kind]) for kind in ("trained", "pretrained") if kind in texts]
    return rows


def side_by_side(prompt: str, *, checkpoint: str | None = None, pretrained: str | None = "124M",
                 max_new_tokens: int = 30, temperature: float = 1.0, top_k: int | None = 40,
                 top_p: float | None = None, seed: int = 123, device: str = "auto", n_heads: int | None = None,
                 quantize: str | None = None, width: int = 80) -> str:
    """``gptrain compare``'s page: the settings, then :func:`compare_continuations`' rows as a table of
    ``width`` columns. A GPT-2 size for ``pretrained`` is downloaded first unless it is cached."""
    check_sampling_args(max_new_tokens, temperature, top_k, top_p)
    if pretrained is not None and gpt2_size(pretrained) and not os.path.exists(pretrained):
        # --pretrained 124M is the default: one without network or cache must learn how to skip it.
        try:
            download_gpt2(pretrained)
        except GptrainError as exc:
            raise GptrainError(f"{exc}; or pass --baseline none to compare without GPT-2 (or --baseline FOLDER "
                               "for a local copy)") from None
    rows = compare_continuations(prompt, checkpoint=checkpoint, pretrained=pretrained, max_new_tokens=max_new_tokens,
                                 temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                                 device=resolve_device(device), n_heads=n_heads, quantize=quantize)
    shown_top_p = "" if top_p is None else f", top-p {top_p}"
    header = (f"Prompt: {prompt!r} (seed {seed}, temperature {temperature}, top-k {top_k}{shown_top_p}, "
              f"up to {max_new_tokens} new tokens)")
    lines = [header, ""]
    label_width = max(len(label) for label, _ in rows)
    text_width = max(30, width - label_width - 3)
    for label, text in rows:
        wrapped = textwrap.wrap(" ".join(text.split()), text_width, break_long_words=False,
                                break_on_hyphens=False) or [""]
        lines.append(f"{label:<{label_width}} | {wrapped[0]}")
        lines += [f"{'':<{label_width}} | {line}" for line in wrapped[1:]]
    return "\n".join(lines)
