"""A corpus's train and val tokens, as training reads them and evaluation scores them.

A prepared shard folder holds both splits (memmapped), in the tokens of the tokenizer it was
prepared with; a text is split by characters as the book does
(:func:`gptrain.data.corpus.split_text`), then each part is tokenized on its own with the
tokenizer asked for (GPT-2's by default).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gptrain.core.errors import GptrainError
from gptrain.data.corpus import (
    check_not_nested,
    is_shard_dir,
    load_corpus,
    open_shards,
    shard_dtype,
    shards_tokenizer,
    split_text,
)
from gptrain.data.tokenizer import encode_text, get_tokenizer
from gptrain.data.trained_tokenizer import Tokenizer, describe_tokenizer, same_tokenizer

SPLITS = ("train", "val")


def text_tokens(text: str, tokenizer: Tokenizer | None = None) -> np.ndarray:
    """``text``'s tokens (GPT-2's by default), its document separators kept, in the narrowest dtype
    that holds the tokenizer's ids."""
    tokenizer = tokenizer or get_tokenizer()
    return np.array(encode_text(tokenizer, text), dtype=shard_dtype(tokenizer.n_vocab))


def data_tokenizer(source: str | Path) -> Tokenizer | None:
    """The tokenizer a prepared folder was made with; None for text, which any tokenizer reads."""
    check_not_nested(source)
    return shards_tokenizer(open_shards(source)) if is_shard_dir(source) else None


def split_tokens(source: str | Path, train_ratio: float = 0.9, text_field: str = "text",
                 names: tuple[str, ...] = SPLITS, tokenizer: Tokenizer | None = None) -> dict[str, np.ndarray]:
    """The tokens of the splits ``names`` of ``source``: a prepared folder or anything
    :func:`~gptrain.data.corpus.load_corpus` reads, in ``tokenizer``'s ids (GPT-2's by default): a
    prepared folder made with another tokenizer is refused."""
    unknown = [name for name in names if name not in SPLITS]
    if unknown:
        raise GptrainError(f"unknown split {unknown[0]!r}: use train or val")
    tokenizer = tokenizer or get_tokenizer()
    check_not_nested(source)
    if is_shard_dir(source):
        shards = open_shards(source)
        made_with = shards_tokenizer(shards)
        if not same_tokenizer(made_with, tokenizer):
            raise GptrainError(f"{source} was prepared with the tokenizer {describe_tokenizer(made_with)}, but the "
                               f"model reads text with {describe_tokenizer(tokenizer)}: prepare the text again with "
                               "the model's tokenizer (gptrain prepare --tokenizer)")
        return {name: getattr(shards, name) for name in names}
    texts = dict(zip(SPLITS, split_text(load_corpus(source, text_field), train_ratio)))
    return {name: text_tokens(texts[name], tokenizer) for name in names}
