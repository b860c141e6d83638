"""Perplexity of any text: sliding-window cross-entropy, perplexity and bits per byte.

A model sees at most ``context_length`` tokens, so a long text is scored in windows. Windows of
``context_length`` input tokens start every ``stride`` tokens; the first window scores all its
predictions and each later window only its last ``stride``, so every token after the first is
scored exactly once, with at least ``context_length - stride + 1`` tokens of left context once
the first window is past. ``stride == context_length`` gives disjoint windows (the fastest, and
what training's validation loss does); a smaller stride gives more context per prediction at the
cost of more forward passes. This is the recipe of Hugging Face's "perplexity of fixed-length
models", with two differences at the edges: a window's targets are its inputs shifted by one
(as in training), so the token right after a window is scored too; and the last window is slid
back to end at the last token instead of being cut short, so the tail keeps a full context.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from gptrain.core.errors import GptrainError
from gptrain.core.runtime import AUTOCAST_DTYPES, autocast_context
from gptrain.data.corpus import is_shard_dir, load_corpus
from gptrain.data.splits import split_tokens, text_tokens
from gptrain.data.tokenizer import get_tokenizer
from gptrain.data.trained_tokenizer import Tokenizer


@dataclass(frozen=True)
class Window:
    """Inputs ``tokens[start:start + length]`` predicting ``tokens[start + 1:start + length + 1]``;
    the predictions from position ``first_scored`` on are scored."""

    start: int
    first_scored: int


@dataclass(frozen=True)
class Evaluation:
    loss: float  # mean cross-entropy per scored token, in nats
    perplexity: float
    bits_per_byte: float
    total_nats: float
    tokens: int
    scored_tokens: int
    bytes: int
    windows: int
    context_length: int
    stride: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.scored_tokens / max(self.seconds, 1e-9)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"tokens_per_s": self.tokens_per_s}


def check_window_args(context_length: int, stride: int, model_context: int) -> None:
    if context_length < 1:
        raise GptrainError(f"--context-length must be at least 1, not {context_length}")
    if context_length > model_context:
        raise GptrainError(
            f"--context-length {context_length} exceeds the model's window of {model_context} tokens: "
            f"use at most {model_context}"
        )
    if stride < 1:
        raise GptrainError(f"--stride must be at least 1, not {stride}")
    if stride > context_length:
        raise GptrainError(f"--stride {stride} is larger than the context length {context_length}, so tokens between "
                           f"windows would never be scored: use a stride between 1 and {context_length}")


def check_eval_tokens(num_tokens: int) -> None:
    if num_tokens < 2:
        raise GptrainError(f"the text has {num_tokens} token(s): at least two are needed to score a prediction, "
                           "give more text")


def sliding_windows(num_tokens: int, context_length: int, stride: int) -> tuple[int, list[Window]]:
    """The window length (the context, or less for a short text) and the windows over ``num_tokens``.

    Predictions are for tokens 1 .. num_tokens - 1; each is scored in exactly one window.
    """
    check_eval_tokens(num_tokens)
    predictions = num_tokens - 1
    length = min(context_length, predictions)
    windows = [Window(0, 0)]
    scored_through = length  # the last token scored so far
    start = 0
    while scored_through < predictions:
        start = min(start + stride, predictions - length)
        end = start + length
        windows.append(Window(start, length - (end - scored_through)))
        scored_through = end
    return length, windows


@functools.lru_cache(maxsize=4)
def _token_byte_lengths(tokenizer: Tokenizer) -> np.ndarray:
    lengths = np.array([len(tokenizer.decode_single_token_bytes(i)) for i in range(tokenizer.n_vocab)], dtype=np.int64)
    # A document separator is markup added between documents: counting its 13 bytes of "<|endoftext|>"
    # as text would lower bits per byte (by about 5% on short documents).
    lengths[tokenizer.eot_token] = 0
    return lengths


def count_bytes(tokens: np.ndarray, tokenizer: Tokenizer | None = None, chunk: int = 1 << 24) -> int:
    """UTF-8 bytes of the text the tokens (of ``tokenizer``, GPT-2's by default) decode to, document
    separators left out: byte-level BPE tokens are byte strings, so their lengths add up. Bits per
    byte divide by these bytes of text, so they compare models whatever their tokenizers."""
    lengths = _token_byte_lengths(tokenizer or get_tokenizer())
    return int(sum(lengths[np.asarray(tokens[i:i + chunk], dtype=np.int64)].sum() for i in range(0, len(tokens), chunk)))


def _batches(windows: list[Window], batch_size: int) -> Iterator[list[Window]]:
    for i in range(0, len(windows), batch_size):
        yield windows[i:i + batch_size]


def evaluate_tokens(model: nn.Module, tokens: np.ndarray, *, context_length: int | None = None,
                    stride: int | None = None, batch_size: int = 8, precision: str = "fp32",
                    num_bytes: int | None = None, progress: bool = True) -> Evaluation:
    """Score every token of ``tokens`` (a 1-D array, possibly a memmap) with ``model``.

    ``context_length`` defaults to the model's window and ``stride`` to the context length.
    ``num_bytes`` is the size of the text in UTF-8 for bits per byte (counted from the tokens
    when not given). The model runs in eval mode under ``torch.inference_mode`` on the device
    its weights are on.
    """
    model_context = model.cfg.context_length
    context_length = model_context if context_length is None else context_length
    stride = context_length if stride is None else stride
    check_window_args(context_length, stride, model_context)
    if batch_size < 1:
        raise GptrainError(f"--batch-size must be at least 1, not {batch_size}")
    if precision not in {"fp32", *AUTOCAST_DTYPES}:
        raise GptrainError(f"unknown precision {precision!r}: use fp32, bf16 or fp16")
    tokens = np.asarray(tokens) if not isinstance(tokens, np.ndarray) else tokens
    length, windows = sliding_windows(len(tokens), context_length, stride)
    largest = int(tokens.max())
    if largest >= model.cfg.vocab_size:
        raise GptrainError(
            f"the text holds token id {largest} but the model's vocabulary has {model.cfg.vocab_size} entries: "
            "evaluate it on text from the tokenizer it was trained with"
        )
    num_bytes = count_bytes(tokens) if num_bytes is None else num_bytes
    device = next(model.parameters()).device
    autocast = autocast_context(device.type, precision)
    positions = torch.arange(length, device=device)
    batch_sums = []  # summed once at the end: no device sync per batch
    scored = len(tokens) - 1
    was_training = model.training
    model.eval()
    bar = tqdm(total=scored, desc="eval", unit="tok", unit_scale=True, disable=None if progress else True, leave=False)
    started = time.perf_counter()
    try:
        with torch.inference_mode(), autocast:
            for batch in _batches(windows, batch_size):
                rows = np.stack([tokens[w.start:w.start + length + 1] for w in batch]).astype(np.int64)
                rows = torch.from_numpy(rows).to(device, non_blocking=True)
                first = torch.tensor([w.first_scored for w in batch], device=device)
                mask = positions[None, :] >= first[:, None]
                logits = model(rows[:, :-1])
                # Per-token losses, then the mask: no second copy of the (batch x length x vocab) logits.
                losses = F.cross_entropy(logits.flatten(0, 1).float(), rows[:, 1:].flatten(), reduction="none")
                batch_sums.append(losses.view(len(batch), length)[mask].sum())
                bar.update(sum(length - w.first_scored for w in batch))
        total_nats = torch.stack(batch_sums).cpu().double().sum().item()
    finally:
        bar.close()
        model.train(was_training)
    seconds = time.perf_counter() - started
    loss = total_nats / scored
    return Evaluation(loss=loss, perplexity=math.exp(loss), bits_per_byte=total_nats / math.log(2) / max(num_bytes, 1),
                      total_nats=total_nats, tokens=len(tokens), scored_tokens=scored, bytes=num_bytes,
                      windows=len(windows), context_length=length, stride=stride, seconds=seconds)


def evaluate_text(model: nn.Module, text: str, tokenizer: Tokenizer | None = None, **kwargs: Any) -> Evaluation:
    """:func:`evaluate_tokens` on ``text``, tokenized with ``tokenizer`` (the model's; GPT-2's by default)."""
    tokens = text_tokens(text, tokenizer)
    return evaluate_tokens(model, tokens, num_bytes=count_bytes(tokens, tokenizer), **kwargs)


# --- What the CLI evaluates ---

def load_eval_tokens(source: str | Path, split: str | None = None, train_ratio: float = 0.9,
                     text_field: str = "text", tokenizer: Tokenizer | None = None) -> tuple[np.ndarray, int, str]:
    """The tokens (of ``tokenizer``, GPT-2's by default), their size in bytes and a description of a
    text, a folder of .txt files, a named dataset or a prepared shard folder (made with that tokenizer).

    ``split``: for a shard folder ``train`` or ``val`` (default); for text ``all`` (default), or
    ``train``/``val`` to take the same character split of the text as training does.
    """
    if is_shard_dir(source):
        split = split or "val"
        if split not in {"train", "val"}:
            raise GptrainError(f"{source} is a prepared folder with train and val splits: use --split train or --split val")
        tokens = split_tokens(source, names=(split,), tokenizer=tokenizer)[split]
        return tokens, count_bytes(tokens, tokenizer), f"{source} ({split}.bin)"
    split = split or "all"
    if split == "all":
        tokens, label = text_tokens(load_corpus(source, text_field), tokenizer), str(source)
    else:
        tokens = split_tokens(source, train_ratio, text_field, names=(split,), tokenizer=tokenizer)[split]
        label = f"{source} ({split} split at {train_ratio:g})"
    return tokens, count_bytes(tokens, tokenizer), label
