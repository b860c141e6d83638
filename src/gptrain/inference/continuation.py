"""A prompt continued by a model, as ``gptrain generate`` prints it: text pieces as they are
produced, with the number of new tokens and the time they took."""

from __future__ import annotations

import time
from typing import Iterable, Iterator

import torch

from gptrain.core.errors import GptrainError
from gptrain.core.runtime import resolve_device
from gptrain.data.templates import render_instruction
from gptrain.data.tokenizer import text_to_token_ids
from gptrain.data.trained_tokenizer import Tokenizer
from gptrain.inference.cpu import optimize_for_cpu_inference
from gptrain.inference.generate import check_sampling_args, stream_text, stream_tokens, window_warning
from gptrain.interop.sources import resolve_model
from gptrain.store.integrity import checked_after


GENERATION_PRECISIONS = ("fp32", "bf16")  # of the weights: fp32 is a checkpoint's own


class Continuation:
    """The new text, piece by piece while it is iterated; ``tokens`` counts the new tokens so far and
    ``seconds`` is the time since generation started."""

    def __init__(self, tokenizer: Tokenizer, token_ids: Iterable[int], warning: str | None,
                 template: str | None = None) -> None:
        self.warning = warning  # the prompt and new tokens do not fit the model's window; None when they do
        self.template = template  # the template the prompt was formatted with: the text is a response
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
                    device: str = "auto", n_heads: int | None = None, quantize: str | None = None,
                    precision: str = "fp32", raw: bool = False) -> Continuation:
    """Load the model that ``model`` names (see :func:`gptrain.interop.sources.resolve_model`) and start
    continuing ``prompt``: the
    sampling settings are checked before the model is loaded, the tokens come as the result is iterated.
    ``quantize="int8"`` runs the linear layers with int8 weights (:func:`gptrain.model.quantize.quantize`);
    ``precision="bf16"`` the whole model with bfloat16 weights, half of float32's bytes per token.
    An instruction-tuned model's prompt is an instruction, formatted with its saved template, and its
    response ends at end-of-text; ``raw`` passes the prompt through as it is."""
    check_sampling_args(max_new_tokens, temperature, top_k, top_p)
    if not prompt:
        raise GptrainError("the prompt is empty: give --prompt some text")
    if precision not in GENERATION_PRECISIONS:
        raise GptrainError(f"--precision must be one of {', '.join(GENERATION_PRECISIONS)}, not {precision!r}")
    if precision != "fp32" and quantize is not None:
        raise GptrainError(f"--precision {precision} and --quantize {quantize} both set the weights' format: "
                           "give one of them")
    resolved = resolve_device(device)
    with checked_after():  # the weights' hash is checked while they are put in the CPU layout
        source = resolve_model(model, device=resolved, n_heads=n_heads, quantize=quantize)
        loaded, tokenizer, template = source.model, source.tokenizer, None if raw else source.template
        if precision == "bf16":
            loaded = loaded.to(torch.bfloat16)
        text = prompt if template is None else render_instruction(template, prompt)
        idx = text_to_token_ids(text, tokenizer).to(resolved)
        warning = window_warning(idx.shape[1], max_new_tokens, loaded.cfg.context_length)
        # The CPU layout is a copy of every weight, part of loading: made before the clock starts, as a
        # program that generates again and again makes it once.
        optimize_for_cpu_inference(loaded)
    generator = torch.Generator(device=resolved).manual_seed(seed)
    token_ids = stream_tokens(loaded, idx, max_new_tokens, loaded.cfg.context_length, temperature=temperature,
                              top_k=top_k, top_p=top_p, generator=generator,
                              eos_id=None if template is None else tokenizer.eot_token)
    return Continuation(tokenizer, token_ids, warning, template)
