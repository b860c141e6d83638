"""Corpus to shards: tokenize text files and records into ``train.bin`` / ``val.bin``.

The corpus is streamed: files are read in blocks, tokenized in worker processes a few blocks
at a time, and written in order, so memory does not grow with the corpus. Every document
ends with ``<|endoftext|>``. Documents go to the validation split by a seeded hash of their
position, so the split is by document and the same every time. The output directory is
built under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import collections
import functools
import glob
import hashlib
import multiprocessing
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from gptrain.core.errors import GptrainError
from gptrain.core.files import staged_dir, write_json_atomic
from gptrain.core.oserrors import check_output_dir
from gptrain.data.corpus import SHARD_FORMAT, shard_dtype
from gptrain.data.readers import (
    DATASET_STATE,
    SUFFIX_LIST,
    TABLE_READERS,
    ReadStats,
    dataset_files,
    input_kind,
    is_compressed,
    read_jsonl_documents,
)
from gptrain.data.tokenizer import TOKENIZER_NAME
from gptrain.data.trained_tokenizer import TOKENIZER_FILE, TrainedTokenizer, load_tokenizer, tokenizer_identity

BLOCK_CHARS = 1 << 20  # text per work item: large enough to amortise the process hop


@dataclass
class Piece:
    """Part of a document; ``last`` marks its end, where ``<|endoftext|>`` goes."""

    text: str
    val: bool
    last: bool


@dataclass
class Stats(ReadStats):
    documents: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})


def find_inputs(inputs: list[str]) -> list[Path]:
    """Expand files, folders (recursively) and glob patterns into a sorted list of corpus files."""
    found: list[Path] = []
    for item in inputs:
        matches = [Path(m) for m in sorted(glob.glob(item, recursive=True))] if glob.has_magic(item) else [Path(item)]
        if not matches:
            raise GptrainError(f"the pattern {item} matches no files: check it (quote it to stop the shell expanding it)")
        for path in matches:
            if path.is_dir() and (path / DATASET_STATE).is_file():
                found.extend(dataset_files(path))
            elif path.is_dir():
                files = sorted(p for p in path.rglob("*") if p.is_file() and input_kind(p))
                if not files:
                    raise GptrainError(f"folder {path} holds no {SUFFIX_LIST} files: point gptrain prepare at text")
                found.extend(files)
            elif path.is_file():
                if not input_kind(path):
                    raise GptrainError(f"{path} is not a {SUFFIX_LIST} file: convert it, or leave it out")
                found.append(path)
            else:
                raise GptrainError(f"input {path} does not exist: check the path")
    return list(dict.fromkeys(found))


def goes_to_val(ordinal: int, val_fraction: float, seed: int) -> bool:
    digest = hashlib.blake2b(f"{seed}/{ordinal}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


def split_point(text: str) -> int:
    """The last index where the text can be cut without changing its tokens, or -1.

    GPT-2's pre-tokenizer never joins a single newline to the word after it when the newline
    follows a non-space, and a run of whitespace at the end of a string is one piece whether
    or not more text follows only if it is that single newline. So a cut right after such a
    newline, before a non-space, tokenizes exactly as the whole text does.
    """
    i = text.rfind("\n", 0, len(text) - 1)
    while i > 0:
        if not text[i - 1].isspace() and not text[i + 1].isspace():
            return i + 1
        i = text.rfind("\n", 0, i)
    return -1


def read_text_document(path: Path, stats: Stats) -> Iterator[str]:
    """The text of one file, in blocks of about BLOCK_CHARS cut where tokenization allows."""
    carry = ""
    with open(path, encoding="utf-8", errors="strict") as f:
        while True:
            try:
                block = f.read(BLOCK_CHARS)
            except UnicodeDecodeError as exc:
                raise GptrainError(f"{path} is not UTF-8 text ({exc.reason} near byte {exc.start}): "
                                   "convert it to UTF-8 or leave it out") from None
            stats.bytes_read += len(block.encode("utf-8", errors="surrogatepass"))
            if not block:
                break
            carry += block
            cut = split_point(carry)
            if cut > 0:
                yield carry[:cut]
                carry = carry[cut:]
    if carry:
        yield carry


def iter_pieces(paths: list[Path], text_field: str, strict: bool, val_fraction: float, seed: int,
                stats: Stats) -> Iterator[Piece]:
    ordinal = 0
    for path in paths:
        kind = input_kind(path)
        if kind == "text":
            documents = iter([read_text_document(path, stats)])
        else:
            read = read_jsonl_documents if kind == "jsonl" else TABLE_READERS[kind]
            documents = ([doc] for doc in read(path, text_field, strict, stats))
        for blocks in documents:
            val = goes_to_val(ordinal, val_fraction, seed)
            ordinal += 1
            previous = None
            for block in blocks:
                if previous is not None:
                    yield Piece(previous, val, last=False)
                previous = block
            if previous is None:  # an empty document contributes nothing, not even a separator
                continue
            yield Piece(previous, val, last=True)
            stats.documents["val" if val else "train"] += 1


def input_bytes(paths: list[Path]) -> int | None:
    """The corpus's size on disk, for progress; None when compression hides how much text it holds."""
    return None if any(is_compressed(p) for p in paths) else sum(p.stat().st_size for p in paths)


def batch_pieces(pieces: Iterator[Piece]) -> Iterator[list[Piece]]:
    """Group small documents so each work item carries about BLOCK_CHARS of text."""
    batch, size = [], 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece.text)
        if size >= BLOCK_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def encode_batch(tokenizer_spec: str, dtype: str, batch: list[Piece]) -> list[tuple[bool, bytes]]:
    tokenizer = load_tokenizer(tokenizer_spec)  # cached: built once per process
    out = []
    for piece in batch:
        ids = tokenizer.encode_ordinary(piece.text)
        if piece.last:
            ids.append(tokenizer.eot_token)
        out.append((piece.val, np.array(ids, dtype=dtype).tobytes()))
    return out


def ordered_map(func, items: Iterator, workers: int) -> Iterator:
    """``map`` over worker processes, in order, with only a few items in flight at a time.

    ``Pool.imap`` would read the whole input ahead into its task queue; this keeps memory
    bounded by ``2 * workers`` items.
    """
    if workers <= 1:
        yield from map(func, items)
        return
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with context.Pool(workers) as pool:
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append(pool.apply_async(func, (item,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def prepare(inputs: list[str], out: str | Path, *, val_fraction: float = 0.1, text_field: str = "text",
            strict: bool = False, workers: int | None = None, seed: int = 123,
            overwrite: bool = False, tokenizer: str = TOKENIZER_NAME) -> dict:
    """Tokenize ``inputs`` into ``out/train.bin``, ``out/val.bin`` and ``out/meta.json``; returns the meta.

    ``tokenizer`` is ``"gpt2"`` or a folder written by ``gptrain tokenizer train``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise GptrainError(f"--val-fraction must be in [0, 1), not {val_fraction}")
    out = check_output_dir(out)
    if out.exists() and any(out.iterdir()) and not ((out / "meta.json").exists() and overwrite):
        hint = "pass --overwrite to replace it" if (out / "meta.json").exists() else "choose an empty or new --out"
        raise GptrainError(f"{out} is not empty: {hint}")
    paths = find_inputs(inputs)
    # Loaded here, before the workers fork, so that they inherit it built (and a bad one stops us early),
    # with the fast encoder of a trained one.
    encoder = load_tokenizer(tokenizer)
    if isinstance(encoder, TrainedTokenizer):
        encoder.twin
    dtype = shard_dtype(encoder.n_vocab)
    encode = functools.partial(encode_batch, tokenizer, np.dtype(dtype).name)
    workers = workers or os.cpu_count() or 1
    stats = Stats()
    counts = {"train": 0, "val": 0}
    started = time.perf_counter()
    with staged_dir(out) as tmp:
        total_bytes = input_bytes(paths)
        with open(tmp / "train.bin", "wb") as train_file, open(tmp / "val.bin", "wb") as val_file, tqdm(
            total=total_bytes, unit="B", unit_scale=True, desc="prepare", disable=None
        ) as progress:
            pieces = iter_pieces(paths, text_field, strict, val_fraction, seed, stats)
            for encoded in ordered_map(encode, batch_pieces(pieces), workers):
                for val, data in encoded:
                    (val_file if val else train_file).write(data)
                    counts["val" if val else "train"] += len(data) // np.dtype(dtype).itemsize
                progress.update(stats.bytes_read - progress.n)
                elapsed = max(time.perf_counter() - started, 1e-9)
                progress.set_postfix(tokens=f"{sum(counts.values()):,}", tok_s=f"{sum(counts.values()) / elapsed:,.0f}")
        if counts["train"] == 0 and counts["val"] == 0:
            raise GptrainError("the inputs hold no text: give files with some content")
        split = "document"
        if val_fraction > 0 and (counts["val"] == 0 or counts["train"] == 0):
            # Too few documents to split by document: validate on the last tokens, as the book does.
            counts = tail_split(tmp, counts, val_fraction, dtype)
            split = "tail"
        elapsed = time.perf_counter() - started
        meta = {
            "format": SHARD_FORMAT,
            "format_version": 1,
            "tokenizer": tokenizer_identity(encoder),
            "dtype": np.dtype(dtype).name,
            "vocab_size": encoder.n_vocab,
            "eot_token": encoder.eot_token,
            "train_tokens": counts["train"],
            "val_tokens": counts["val"],
            "documents": stats.documents,
            "val_fraction": val_fraction,
            "split": split,
            "seed": seed,
            "skipped_lines": stats.skipped_lines,
            "first_skipped": stats.first_skipped,
            "sources": [str(p) for p in paths],
            "seconds": round(elapsed, 3),
            "tokens_per_second": round(sum(counts.values()) / max(elapsed, 1e-9)),
        }
        if isinstance(encoder, TrainedTokenizer):  # the folder reads alone: train saves it in its checkpoints
            (tmp / TOKENIZER_FILE).write_bytes(encoder.data)
        write_json_atomic(tmp / "meta.json", meta)
    return meta


def tail_split(folder: Path, counts: dict[str, int], val_fraction: float, dtype) -> dict[str, int]:
    """Move the last ``val_fraction`` of the tokens into val.bin, streaming, when the documents
    were too few to split (all of them landed in one file)."""
    train_path, val_path = folder / "train.bin", folder / "val.bin"
    if counts["train"] == 0:
        os.replace(val_path, train_path)
    total = counts["train"] + counts["val"]
    cut = total - max(1, int(total * val_fraction))
    itemsize = np.dtype(dtype).itemsize
    with open(train_path, "r+b") as source, open(val_path, "wb") as target:
        source.seek(cut * itemsize)
        shutil.copyfileobj(source, target, 1 << 24)
        source.truncate(cut * itemsize)
    return {"train": cut, "val": total - cut}
