"""A corpus's train and val tokens, as training reads them and evaluation scores them.

A prepared shard folder holds both splits (memmapped); a text is split by characters as the book
does (:func:`gptrain.data.corpus.split_text`), then each part is tokenized on its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gptrain.core.errors import GptrainError
from gptrain.data.corpus import is_shard_dir, load_corpus, open_shards, split_text
from gptrain.data.tokenizer import encode_text, get_tokenizer

SPLITS = ("train", "val")


def gpt2_tokens(text: str) -> np.ndarray:
    """``text``'s GPT-2 tokens, its document separators kept, as uint16 (GPT-2's ids fit)."""
    return np.array(encode_text(get_tokenizer(), text), dtype=np.uint16)


def split_tokens(source: str | Path, train_ratio: float = 0.9, text_field: str = "text",
                 names: tuple[str, ...] = SPLITS) -> dict[str, np.ndarray]:
    """The tokens of the splits ``names`` of ``source``: a prepared folder or anything
    :func:`~gptrain.data.corpus.load_corpus` reads."""
    unknown = [name for name in names if name not in SPLITS]
    if unknown:
        raise GptrainError(f"unknown split {unknown[0]!r}: use train or val")
    if is_shard_dir(source):
        shards = open_shards(source)
        return {name: getattr(shards, name) for name in names}
    texts = dict(zip(SPLITS, split_text(load_corpus(source, text_field), train_ratio)))
    return {name: gpt2_tokens(texts[name]) for name in names}
