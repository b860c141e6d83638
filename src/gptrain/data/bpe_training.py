"""Train a byte-level BPE tokenizer on your own corpus; inspect it; compare it with others.

The training is Hugging Face ``tokenizers``': it is well kept, written in Rust (a corpus of
gigabytes trains in minutes), its trainer takes an iterator, so the corpus streams from
disk in blocks and only the counts of distinct words stay in memory, and its
``tokenizer.json`` is the file that ``transformers`` (``AutoTokenizer``) and the GGUF
converters of llama.cpp read. The tokenizer is GPT-2's design: bytes as the base alphabet
(no unknown token, any text round-trips), GPT-2's pre-tokenizer split, or GPT-4's
(cl100k) with ``pattern="gpt4"``, and ``<|endoftext|>`` between documents.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer
from tqdm import tqdm

from gptrain.core.errors import GptrainError
from gptrain.core.files import staged_dir, write_json_atomic
from gptrain.core.oserrors import check_output_dir
from gptrain.data.prepare import BLOCK_CHARS, Stats, batch_pieces, find_inputs, input_bytes, iter_pieces
from gptrain.data.tokenizer import END_OF_TEXT, GPT4_PATTERN
from gptrain.data.trained_tokenizer import BYTE_ALPHABET, TOKENIZER_FILE, Tokenizer, TrainedTokenizer, load_tokenizer

PATTERNS = ("gpt2", "gpt4")
SPECIAL_TOKENS = [END_OF_TEXT]
# AutoTokenizer reads these beside tokenizer.json; without them it would guess, or go online.
TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": END_OF_TEXT,
    "eos_token": END_OF_TEXT,
    "unk_token": END_OF_TEXT,
    "add_prefix_space": False,
    "clean_up_tokenization_spaces": False,  # decode must give back the text exactly
    "model_max_length": 1024,
}
SPECIAL_TOKENS_MAP = {"bos_token": END_OF_TEXT, "eos_token": END_OF_TEXT, "unk_token": END_OF_TEXT}


def new_tokenizer(pattern: str) -> HFTokenizer:
    """An untrained byte-level BPE with GPT-2's or GPT-4's pre-tokenizer split."""
    if pattern not in PATTERNS:
        raise GptrainError(f"--pattern {pattern!r} is not one of {', '.join(PATTERNS)}")
    tokenizer = HFTokenizer(models.BPE())
    if pattern == "gpt2":
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(GPT4_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def corpus_texts(paths: list[Path], text_field: str, stats: Stats) -> Iterator[list[str]]:
    """The corpus in lists of about BLOCK_CHARS characters, read as ``gptrain prepare`` reads it."""
    pieces = iter_pieces(paths, text_field, strict=False, val_fraction=0.0, seed=0, stats=stats)
    for batch in batch_pieces(pieces):
        yield [piece.text for piece in batch]


def train_tokenizer(corpus: list[str], out: str | Path, vocab_size: int, *, pattern: str = "gpt2",
                    text_field: str = "text", overwrite: bool = False) -> Tokenizer:
    """Train on the files of ``corpus`` and write ``out/tokenizer.json`` (+ transformers' config)."""
    if vocab_size < BYTE_ALPHABET + len(SPECIAL_TOKENS):
        raise GptrainError(f"--vocab-size must be at least {BYTE_ALPHABET + len(SPECIAL_TOKENS)} (the "
                           f"{BYTE_ALPHABET} bytes and {END_OF_TEXT}), not {vocab_size}")
    out = check_output_dir(out)
    if out.exists() and any(out.iterdir()) and not ((out / TOKENIZER_FILE).exists() and overwrite):
        hint = "pass --overwrite to replace it" if (out / TOKENIZER_FILE).exists() else "choose an empty or new --out"
        raise GptrainError(f"{out} is not empty: {hint}")
    tokenizer = new_tokenizer(pattern)
    paths = find_inputs(corpus)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    stats = Stats()
    total = input_bytes(paths)
    with tqdm(total=total, unit="B", unit_scale=True, desc="read corpus", disable=None) as progress:
        def texts() -> Iterator[list[str]]:
            for batch in corpus_texts(paths, text_field, stats):
                yield batch
                progress.update(stats.bytes_read - progress.n)

        # The length is the number of blocks, for the trainer's own accounting; a guess is fine.
        tokenizer.train_from_iterator(texts(), trainer, length=math.ceil((total or 0) / BLOCK_CHARS) or None)
    if stats.documents["train"] == 0:
        raise GptrainError("the corpus holds no text: give files with some content")
    with staged_dir(out) as tmp:
        tokenizer.save(str(tmp / TOKENIZER_FILE))
        write_json_atomic(tmp / "tokenizer_config.json", TOKENIZER_CONFIG)
        write_json_atomic(tmp / "special_tokens_map.json", SPECIAL_TOKENS_MAP)
    return load_tokenizer(out)


@dataclass(frozen=True)
class TokenizerInfo:
    vocab_size: int
    special_tokens: list[str]
    pattern: str  # "gpt2", "gpt4" or the regex itself
    sha256: str


def tokenizer_info(folder: str | Path) -> TokenizerInfo:
    tokenizer = load_tokenizer(folder)
    if not isinstance(tokenizer, TrainedTokenizer):
        raise GptrainError(f"{folder} is the bundled GPT-2 tokenizer: give a folder written by gptrain tokenizer train")
    spec = json.loads((Path(folder) / TOKENIZER_FILE).read_text(encoding="utf-8"))
    return TokenizerInfo(tokenizer.n_vocab, [t["content"] for t in spec.get("added_tokens", []) if t.get("special")],
                         pattern_name(spec.get("pre_tokenizer") or {}), tokenizer.sha256)


def pattern_name(pre_tokenizer: dict) -> str:
    if pre_tokenizer.get("type") == "ByteLevel" and pre_tokenizer.get("use_regex"):
        return "gpt2"
    for step in pre_tokenizer.get("pretokenizers", []):
        regex = (step.get("pattern") or {}).get("Regex") if step.get("type") == "Split" else None
        if regex is not None:
            return "gpt4" if regex == GPT4_PATTERN else regex
    return json.dumps(pre_tokenizer)


@dataclass(frozen=True)
class Comparison:
    name: str
    vocab_size: int
    tokens: int
    bytes: int

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / max(self.tokens, 1)


def compare_tokenizers(corpus: list[str], specs: list[str], text_field: str = "text") -> list[Comparison]:
    """Each tokenizer's vocabulary size and bytes per token (of UTF-8 text) on the corpus."""
    tokenizers = [load_tokenizer(spec) for spec in specs]
    tokens, text_bytes = [0] * len(specs), 0
    for batch in corpus_texts(find_inputs(corpus), text_field, Stats()):
        for text in batch:
            text_bytes += len(text.encode("utf-8"))
            for i, tokenizer in enumerate(tokenizers):
                tokens[i] += len(tokenizer.encode_ordinary(text))
    return [Comparison(spec, tokenizer.n_vocab, count, text_bytes)
            for spec, tokenizer, count in zip(specs, tokenizers, tokens)]


def format_comparison(rows: list[Comparison]) -> str:
    width = max(len("tokenizer"), *(len(row.name) for row in rows))
    lines = [f"{'tokenizer':<{width}}  {'vocab':>9}  {'tokens':>12}  {'bytes/token':>11}"]
    lines += [f"{row.name:<{width}}  {row.vocab_size:>9,}  {row.tokens:>12,}  {row.bytes_per_token:>11.3f}"
              for row in rows]
    return "\n".join(lines)
