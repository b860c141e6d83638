"""A prompt continued by a model, as ``gptrain generate`` prints it: text pieces as they are
produced, with the number of new tokens and the time they took."""

from __future__ import annotations

import time
from typing import Iterable, Iterator

import tiktoken
import torch

from gptrain.core.errors import GptrainError
from gptrain.core.runtime import resolve_device
from gptrain.data.tokenizer import get_tokenizer, text_to_token_ids
from gptrain.inference.cpu import optimize_for_cpu_inference
from gptrain.inference.generate import check_sampling_args, stream_text, stream_tokens, window_warning
from gptrain.interop.sources import resolve_model


class Continuation:
    """The new text, piece by piece while it is iterated; ``tokens`` counts the new tokens so far and
    ``seconds`` is the time since generation started."""

    def __init__(self, tokenizer: tiktoken.Encoding, token_ids: Iterable[int], warning: str | None) -> None:
        self.warning = warning  # the prompt and new tokens do not fit the model's window; None when they do
        self.tokens = 0
        self._started = time.perf_counter()
        self._pieces = stream_text(tokenizer, self._counted(token_ids))

    def _counted(self, token_ids: Iterable[int]) -> Iterator[int]:
        for token in token_ids:
            self.tokens += 1
            yield token

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self._started


def continue_prompt(model: str, prompt: str, *, max_new_tokens: int = 50, temperature: float = 0.0,
                    top_k: int | None = None, top_p: float | None = None, seed: int = 123,
                    device: str = "auto", n_heads: int | None = None, quantize: str | None = None) -> Continuation:
    """Load the model that ``model`` names (see :func:`gptrain.interop.sources.resolve_model`) and start
    continuing ``prompt``: the
    sampling settings are checked before the model is loaded, the tokens come as the result is iterated.
    ``quantize="int8"`` runs the linear layers with int8 weights (:func:`gptrain.model.quantize.quantize`)."""
    check_sampling_args(max_new_tokens, temperature, top_k, top_p)
    resolved = resolve_device(device)
    loaded = resolve_model(model, device=resolved, n_heads=n_heads, quantize=quantize).model
    tokenizer = get_tokenizer()
    idx = text_to_token_ids(prompt, tokenizer).to(resolved)
    if idx.shape[1] == 0:
        raise GptrainError("the prompt is empty: give --prompt some text")
    warning = window_warning(idx.shape[1], max_new_tokens, loaded.cfg.context_length)
    # The CPU layout is a copy of every weight, part of loading: made before the clock starts, as a
    # program that generates again and again makes it once.
    optimize_for_cpu_inference(loaded)
    generator = torch.Generator(device=resolved).manual_seed(seed)
    token_ids = stream_tokens(loaded, idx, max_new_tokens, loaded.cfg.context_length, temperature=temperature,
                              top_k=top_k, top_p=top_p, generator=generator)
    return Continuation(tokenizer, token_ids, warning)
