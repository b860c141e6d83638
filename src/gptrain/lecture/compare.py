"""Side by side: continuations of one prompt from a trained checkpoint and a pretrained GPT-2."""

from __future__ import annotations

from pathlib import Path

import torch

from gptrain.core.errors import GptrainError
from gptrain.data.tokenizer import (
    END_OF_TEXT_ID,
    get_tokenizer,
    text_to_token_ids,
    token_ids_to_text,
)
from gptrain.inference.generate import generate
from gptrain.interop.sources import load_gpt2
from gptrain.model.gpt import GPTModel


def compare_continuations(prompt: str, *, checkpoint: str | Path | None = None,
                          pretrained: str | Path | None = "124M", max_new_tokens: int = 30,
                          temperature: float = 1.0, top_k: int | None = 40, top_p: float | None = None,
                          seed: int = 123,
                          device: torch.device | str = "cpu", n_heads: int | None = None) -> list[tuple[str, str]]:
    """The lecture's before/after activity: ``[(label, continuation), ...]`` for a randomly
    initialised model, the trained ``checkpoint`` and the ``pretrained`` weights (each if given).

    All use the same prompt, seed and sampling settings. The random model has the config of
    the pretrained model (else of the checkpoint) and is initialised after ``torch.manual_seed(seed)``.
    """
    if checkpoint is None and pretrained is None:
        raise GptrainError("nothing to compare with: give --checkpoint, --pretrained or both")
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
            model = load_gpt2(sources[kind], device=device, n_heads=n_heads)
            if reference is None:
                reference = model.cfg
            texts[kind] = continuation(model)
            del model  # one model in memory at a time
    torch.manual_seed(seed)
    rows = [("random init", continuation(GPTModel(reference)))]
    rows += [(f"{kind} {sources[kind]}", texts[kind]) for kind in ("trained", "pretrained") if kind in texts]
    return rows


