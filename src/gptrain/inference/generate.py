"""Turning logits into text: greedy decoding, temperature, top-k and top-p sampling.

Generation feeds the prompt once and then one token per step through a :class:`KVCache`.
``generate(..., use_cache=False)`` is the book's loop, which runs the whole window through the
model for every token; the cached path gives the same tokens (greedy, and sampled with the
same seed: one draw per step for the whole batch in both).

A window that fills up slides as in the book's loop: the model then sees the last
``context_size`` tokens at positions 0..context_size-1, so every cached key and value is
stale and each further step recomputes the window from scratch.
"""

from __future__ import annotations

import codecs
import contextlib
import math
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from gptrain.core.errors import GptrainError
from gptrain.data.tokenizer import text_to_token_ids, token_ids_to_text
from gptrain.inference.cpu import optimize_for_cpu_inference
from gptrain.model.gpt import KVCache, unwrap_model


class SamplingError(GptrainError):
    """A sampling setting out of range; ``param`` names it (the server's error objects say which)."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def check_sampling(temperature: float, top_k: int | None, top_p: float | None = None) -> None:
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise SamplingError("temperature", f"temperature must be >= 0 (0 means greedy), not {temperature}")
    if top_k is not None and top_k < 1:
        raise SamplingError("top_k", f"top_k must be at least 1 (or unset for no filtering), not {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise SamplingError("top_p", f"top_p must be in (0, 1] (1 keeps every token, unset disables it), not {top_p}")


def check_sampling_args(max_new_tokens: int, temperature: float, top_k: int | None,
                        top_p: float | None = None) -> None:
    if max_new_tokens < 0:
        raise SamplingError("max_new_tokens", f"max_new_tokens must not be negative, not {max_new_tokens}")
    check_sampling(temperature, top_k, top_p)


def window_warning(prompt_tokens: int, max_new_tokens: int, context_length: int) -> str | None:
    """What the CLI says when a prompt, or prompt plus new tokens, does not fit the model's window
    (the Python functions crop silently, as the book's generate does); None when it fits."""
    if prompt_tokens > context_length:
        return (f"the prompt has {prompt_tokens} tokens but the model's context is {context_length}: its first "
                f"{prompt_tokens - context_length} tokens are dropped, and generation past the window slides it "
                f"(the model sees only the last {context_length} tokens, recomputed at every step)")
    if prompt_tokens + max_new_tokens > context_length:
        return (f"the prompt ({prompt_tokens} tokens) and {max_new_tokens} new tokens exceed the model's context of "
                f"{context_length}: no prompt token is dropped, but once the window is full generation slides it "
                f" (the model sees only the last {context_length} tokens, recomputed at every step)")
    return None


def keep_top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero all but the most likely tokens whose probabilities add up to at least ``top_p``.

    A token stays when the tokens more likely than it hold less than ``top_p``, so the most
    likely token always stays.
    """
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    drop_sorted = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
    return probs.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), 0.0)


def keep_top_k(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """Set all but the ``top_k`` largest logits of the last dimension (and any tied with the k-th) to -inf."""
    if top_k is None:
        return logits
    kth_largest = torch.topk(logits, min(top_k, logits.size(-1))).values[..., -1:]
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def sampling_probs(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                   top_p: float | None = None) -> torch.Tensor:
    """What sampling at ``temperature`` > 0 draws from: top-k, temperature, softmax, then top-p
    (the zeroed tokens are not renormalised away; ``torch.multinomial`` does not need it)."""
    probs = torch.softmax(keep_top_k(logits, top_k) / temperature, dim=-1)
    if top_p is not None and top_p < 1.0:
        probs = keep_top_p(probs, top_p)
    return probs


def select_next_token(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                      generator: torch.Generator | None = None, top_p: float | None = None) -> torch.Tensor:
    """Pick the next token id for each row of ``logits`` (batch, vocab); returns (batch, 1).

    Top-k keeps the ``top_k`` largest logits (and any tied with the k-th) and sets the rest to
    -inf; temperature divides the logits before the softmax; top-p then keeps the smallest set
    of most likely tokens holding ``top_p`` of the probability. Temperature 0 is greedy.
    """
    if temperature > 0.0:
        return torch.multinomial(sampling_probs(logits, temperature, top_k, top_p), num_samples=1, generator=generator)
    return torch.argmax(keep_top_k(logits, top_k), dim=-1, keepdim=True)


@torch.inference_mode()
def _next_logits(model: nn.Module, tokens: torch.Tensor, length: int, window: int, cache: KVCache | None,
                 pad: torch.Tensor | None) -> torch.Tensor:
    """Logits (batch, vocab) after ``tokens[:, :length]``, seeing at most its last ``window`` tokens."""
    start = max(0, length - window)
    if cache is None:
        return model(tokens[:, start:length])[:, -1]
    if cache.length in (0, window):  # the first step, or the window slides
        cache.reset(None if pad is None else (pad - start).clamp(min=0))
        return model(tokens[:, start:length], cache, last_only=True)[:, -1]
    return model(tokens[:, length - 1:length], cache)[:, -1]


def _token_steps(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, context_size: int,
                 pick: Callable[[torch.Tensor], torch.Tensor], pad: torch.Tensor | None = None,
                 use_cache: bool = True) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (batch, 1), ``max_new_tokens`` times.

    The model is in eval mode until the generator finishes or is closed. ``pad`` counts the
    left padding of each row of ``idx`` (cached path only).
    """
    plain = unwrap_model(model)
    if context_size < 1:
        raise GptrainError(f"context_size must be at least 1, not {context_size}")
    window = min(context_size, plain.cfg.context_length)
    batch, length = idx.shape
    tokens = idx.new_empty(batch, length + max_new_tokens)
    tokens[:, :length] = idx
    # The cached path calls the unwrapped model: a compiled or DDP wrapper would see a new
    # input shape at every step.
    cache = KVCache(plain.cfg, batch, window) if use_cache else None
    was_training = model.training
    optimize_for_cpu_inference(plain)  # the layout only for a model already in eval mode: see there
    model.eval()
    try:
        for _ in range(max_new_tokens):
            next_token = pick(_next_logits(plain if use_cache else model, tokens, length, window, cache, pad))
            tokens[:, length] = next_token[:, 0]
            length += 1
            yield next_token
    finally:
        model.train(was_training)


def _sampler(temperature: float, top_k: int | None, top_p: float | None,
             generator: torch.Generator | None) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda logits: select_next_token(logits, temperature, top_k, generator, top_p)


@torch.no_grad()
def generate(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, context_size: int,
             temperature: float = 0.0, top_k: int | None = None, eos_id: int | None = None,
             generator: torch.Generator | None = None, top_p: float | None = None,
             use_cache: bool = True) -> torch.Tensor:
    """Append up to ``max_new_tokens`` tokens to ``idx`` (batch, tokens) and return the result.

    Each step sees the last ``context_size`` tokens (never more than the model's window) and
    samples from the last position's logits. Generation stops early once every row has
    produced ``eos_id`` at the same step; as in the book, the end-of-text token itself is not
    appended (for rows that stop on their own, see :func:`generate_batch`). Runs in eval mode
    (no dropout) and restores the model's mode afterwards. ``use_cache=False`` runs the book's
    loop, which recomputes the whole window for every token.
    """
    check_sampling_args(max_new_tokens, temperature, top_k, top_p)
    new_tokens = []
    steps = _token_steps(model, idx, max_new_tokens, context_size, _sampler(temperature, top_k, top_p, generator),
                         use_cache=use_cache)
    with contextlib.closing(steps):
        for next_token in steps:
            if eos_id is not None and bool((next_token == eos_id).all()):
                break
            new_tokens.append(next_token)
    return torch.cat([idx, *new_tokens], dim=1)


@torch.no_grad()
def generate_batch(model: nn.Module, prompts: Sequence[Sequence[int] | torch.Tensor], max_new_tokens: int,
                   context_size: int | None = None, temperature: float = 0.0, top_k: int | None = None,
                   eos_id: int | None = None, generator: torch.Generator | None = None,
                   top_p: float | None = None) -> list[torch.Tensor]:
    """Continue prompts of different lengths in one batch; returns each prompt followed by its new tokens.

    The prompts are left-padded; padding is masked out of attention and every row's positions
    start at its first real token, so a greedy row equals generating its prompt alone. Each
    row stops at its own ``eos_id`` (not appended). Sampled rows share one random stream (one
    draw per step for the batch): reproducible with a seeded ``generator``, but not the
    tokens the prompt would get alone.
    """
    check_sampling_args(max_new_tokens, temperature, top_k, top_p)
    device = next(unwrap_model(model).parameters()).device
    rows = [torch.as_tensor(prompt, dtype=torch.long, device=device).flatten() for prompt in prompts]
    if not rows or any(row.numel() == 0 for row in rows):
        raise GptrainError("generate_batch needs at least one prompt and no empty prompt: give every row a token")
    longest = max(row.numel() for row in rows)
    pad = torch.tensor([longest - row.numel() for row in rows], device=device)
    idx = torch.zeros(len(rows), longest, dtype=torch.long, device=device)  # token 0 fills the (masked) padding
    for i, row in enumerate(rows):
        idx[i, longest - row.numel():] = row
    context_size = unwrap_model(model).cfg.context_length if context_size is None else context_size
    finished = torch.zeros(len(rows), dtype=torch.bool, device=device)
    new_tokens = []
    steps = _token_steps(model, idx, max_new_tokens, context_size, _sampler(temperature, top_k, top_p, generator),
                         pad=pad)
    with contextlib.closing(steps):
        for next_token in steps:
            new_tokens.append(next_token)
            if eos_id is not None:
                finished |= next_token[:, 0] == eos_id
                if bool(finished.all()):
                    break
    new = torch.cat(new_tokens, dim=1) if new_tokens else idx.new_empty(len(rows), 0)
    results = []
    for row, row_new in zip(rows, new):
        if eos_id is not None:
            stops = (row_new == eos_id).nonzero()
            if len(stops):
                row_new = row_new[:stops[0, 0]]
        results.append(torch.cat([row, row_new]))
    return results


def stream_tokens(model: nn.Module, idx: torch.Tensor | Sequence[int], max_new_tokens: int,
                  context_size: int | None = None, temperature: float = 0.0, top_k: int | None = None,
                  eos_id: int | None = None, generator: torch.Generator | None = None,
                  top_p: float | None = None) -> Iterator[int]:
    """Yield the new token ids of one prompt as they are produced (the tokens :func:`generate` appends).

    The model stays in eval mode until the stream ends or is closed.
    """
    check_sampling_args(max_new_tokens, temperature, top_k, top_p)
    device = next(unwrap_model(model).parameters()).device
    idx = torch.as_tensor(idx, dtype=torch.long, device=device).reshape(1, -1)
    if idx.shape[1] == 0:
        raise GptrainError("the prompt is empty: give it at least one token")
    context_size = unwrap_model(model).cfg.context_length if context_size is None else context_size
    return _until_eos(_token_steps(model, idx, max_new_tokens, context_size,
                                   _sampler(temperature, top_k, top_p, generator)), eos_id)


def _until_eos(steps: Iterator[torch.Tensor], eos_id: int | None) -> Iterator[int]:
    with contextlib.closing(steps):
        for next_token in steps:
            token = next_token.item()
            if token == eos_id:
                return
            yield token


def stream_text(tokenizer, token_ids: Iterable[int]) -> Iterator[str]:
    """Decode token ids into text pieces as they arrive, never splitting a multi-byte character.

    A GPT-2 token can end in the middle of a UTF-8 character; its bytes wait for the next
    token. Invalid bytes become U+FFFD, as in ``tokenizer.decode``.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token in token_ids:
        piece = decoder.decode(tokenizer.decode_single_token_bytes(token))
        if piece:
            yield piece
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


def generate_text_simple(model: nn.Module, idx: torch.Tensor, max_new_tokens: int,
                         context_size: int) -> torch.Tensor:
    """Greedy decoding: always the most likely next token (chapter 4's function)."""
    return generate(model, idx, max_new_tokens, context_size)


def generate_text_advanced(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, context_size: int,
                           temperature: float = 1.0, top_k: int | None = None,
                           eos_id: int | None = None) -> torch.Tensor:
    """The lecture's name for :func:`generate`, with its default temperature of 1.0."""
    return generate(model, idx, max_new_tokens, context_size, temperature=temperature, top_k=top_k,
                    eos_id=eos_id)


def generate_and_print_sample(model: nn.Module, tokenizer, device: torch.device | str, start_context: str,
                              max_new_tokens: int = 50) -> str:
    """Print (and return) a greedy continuation of ``start_context``, newlines flattened."""
    context_size = unwrap_model(model).pos_emb.weight.shape[0]
    encoded = text_to_token_ids(start_context, tokenizer).to(device)
    token_ids = generate_text_simple(model, encoded, max_new_tokens, context_size)
    decoded_text = token_ids_to_text(token_ids, tokenizer).replace("\n", " ")
    print(decoded_text)
    return decoded_text
