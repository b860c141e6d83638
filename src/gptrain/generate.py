"""Turning logits into text: greedy decoding, temperature and top-k sampling."""

from __future__ import annotations

import torch
from torch import nn

from gptrain.errors import GptrainError
from gptrain.model import unwrap_model
from gptrain.tokenizer import text_to_token_ids, token_ids_to_text


def check_sampling_args(max_new_tokens: int, temperature: float, top_k: int | None) -> None:
    if max_new_tokens < 0:
        raise GptrainError(f"max_new_tokens must not be negative, not {max_new_tokens}")
    if temperature < 0:
        raise GptrainError(f"temperature must be >= 0 (0 means greedy), not {temperature}")
    if top_k is not None and top_k < 1:
        raise GptrainError(f"top_k must be at least 1 (or None for no filtering), not {top_k}")


def select_next_token(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token id for each row of ``logits`` (batch, vocab); returns (batch, 1).

    Top-k keeps the ``top_k`` largest logits (and any tied with the k-th) and sets the rest
    to -inf; temperature divides the logits before the softmax; temperature 0 is greedy.
    """
    if top_k is not None:
        top_k = min(top_k, logits.size(-1))
        kth_largest = torch.topk(logits, top_k).values[:, -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if temperature > 0.0:
        probs = torch.softmax(logits / temperature, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator)
    return torch.argmax(logits, dim=-1, keepdim=True)


@torch.no_grad()
def generate(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, context_size: int,
             temperature: float = 0.0, top_k: int | None = None, eos_id: int | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Append up to ``max_new_tokens`` tokens to ``idx`` (batch, tokens) and return the result.

    Each step feeds the last ``context_size`` tokens (never more than the model's window) and
    samples from the last position's logits. Generation stops early once every row has
    produced ``eos_id``; as in the book, the end-of-text token itself is not appended.
    Runs in eval mode (no dropout) and restores the model's mode afterwards.
    """
    check_sampling_args(max_new_tokens, temperature, top_k)
    context_size = min(context_size, unwrap_model(model).cfg.context_length)
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            logits = model(idx[:, -context_size:])[:, -1, :]
            idx_next = select_next_token(logits, temperature, top_k, generator)
            if eos_id is not None and bool((idx_next == eos_id).all()):
                break
            idx = torch.cat((idx, idx_next), dim=1)
    finally:
        model.train(was_training)
    return idx


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
