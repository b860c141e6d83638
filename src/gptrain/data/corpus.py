"""Text in, (input, target) windows out: corpora, the train/val split, and the book's data loader."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tiktoken
import torch
from torch.utils.data import DataLoader, Dataset

from gptrain.core.download import cache_dir, download_file
from gptrain.core.errors import GptrainError
from gptrain.core.hashing import sha256_file
from gptrain.data.readers import ReadStats, read_jsonl_documents
from gptrain.data.tokenizer import END_OF_TEXT, encode_text, get_tokenizer
from gptrain.data.trained_tokenizer import (
    TOKENIZER_FILE,
    Tokenizer,
    describe_tokenizer,
    load_tokenizer,
    same_tokenizer,
    tokenizer_from_bytes,
)

SHARD_FORMAT = "gptrain-shards"
JSONL_SUFFIX = ".jsonl"
SHARD_DTYPE = np.uint16  # GPT-2's 50,257 ids fit in 16 bits
META_FILE = "meta.json"


def shard_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    """uint16 while every id fits in it (GPT-2's and most trained vocabularies), uint32 beyond."""
    return SHARD_DTYPE if vocab_size <= np.iinfo(SHARD_DTYPE).max + 1 else np.uint32


class TokenWindows(Dataset):
    """Windows of ``max_length`` tokens over a 1-D token array, window ``i`` starting at ``i * stride``.

    Each item is ``(input_ids, target_ids)`` as LongTensors, the targets being the inputs
    shifted one token to the right. The last window starts strictly before
    ``len(tokens) - max_length``, as in the book. ``tokens`` may be a ``np.memmap``: only the
    windows asked for are read.
    """

    def __init__(self, tokens: np.ndarray, max_length: int, stride: int):
        if max_length < 1 or stride < 1:
            raise GptrainError(f"max_length and stride must be positive, not {max_length} and {stride}")
        if len(tokens) < max_length + 1:
            raise GptrainError(
                f"the text has {len(tokens):,} tokens, fewer than one window of {max_length} plus one token: "
                "give more text or a smaller context length"
            )
        self.tokens = tokens
        self.max_length = max_length
        self.starts = range(0, len(tokens) - max_length, stride)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.starts[idx]
        window = torch.from_numpy(self.tokens[start:start + self.max_length + 1].astype(np.int64))
        return window[:-1], window[1:]


class GPTDatasetV1(TokenWindows):
    """The book's dataset: tokenize ``txt`` and cut it into (overlapping if stride < max_length) windows."""

    def __init__(self, txt: str, tokenizer: tiktoken.Encoding, max_length: int, stride: int):
        token_ids = encode_text(tokenizer, txt)
        super().__init__(np.array(token_ids, dtype=np.uint16), max_length, stride)


def create_dataloader_v1(txt: str, batch_size: int = 4, max_length: int = 256, stride: int = 128,
                         shuffle: bool = True, drop_last: bool = True, num_workers: int = 0,
                         tokenizer: tiktoken.Encoding | None = None,
                         generator: torch.Generator | None = None) -> DataLoader:
    """The book's loader over :class:`GPTDatasetV1`, using the bundled GPT-2 tokenizer."""
    dataset = GPTDatasetV1(txt, tokenizer or get_tokenizer(), max_length, stride)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      num_workers=num_workers, generator=generator)


def split_text(text: str, train_ratio: float = 0.9) -> tuple[str, str]:
    """Split by characters, as the book does: the first ``train_ratio`` trains, the rest validates."""
    if not 0.0 < train_ratio < 1.0:
        raise GptrainError(f"train_ratio must be between 0 and 1, not {train_ratio}")
    split_idx = int(train_ratio * len(text))
    return text[:split_idx], text[split_idx:]


@dataclass(frozen=True)
class NamedDataset:
    name: str
    filename: str
    url: str
    sha256: str


DATASETS = {
    "the-verdict": NamedDataset(
        name="the-verdict",
        filename="the-verdict.txt",
        url="https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch02/01_main-chapter-code/the-verdict.txt",
        sha256="b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f",
    ),
}


def data_dirs() -> list[Path]:
    """Folders searched for named datasets: ``$GPTRAIN_DATA_DIR`` (may list several), then the cache."""
    dirs = [Path(p).expanduser() for p in os.environ.get("GPTRAIN_DATA_DIR", "").split(os.pathsep) if p]
    return dirs + [cache_dir() / "data"]


def fetch_dataset(name: str) -> Path:
    """The path of a named dataset: a checked copy on disk, else downloaded into the cache."""
    dataset = DATASETS[name]
    for folder in data_dirs():
        candidate = folder / dataset.filename
        if candidate.is_file():
            digest = sha256_file(candidate)
            if digest != dataset.sha256:
                raise GptrainError(
                    f"{candidate} is not the canonical {dataset.filename} (sha256 {digest[:12]}…, expected "
                    f"{dataset.sha256[:12]}…): delete it, or train on it anyway with --data {candidate}"
                )
            return candidate
    target = cache_dir() / "data" / dataset.filename
    searched = ", ".join(str(d) for d in data_dirs())
    return download_file(
        dataset.url, target, sha256=dataset.sha256,
        where_to_put_it=f"put {dataset.filename} in one of: {searched} (or point GPTRAIN_DATA_DIR at its folder)",
    )


def read_text_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise GptrainError(
            f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}): "
            "convert it to UTF-8 or leave it out"
        ) from None
    except OSError as exc:
        raise GptrainError(f"cannot read {path}: {exc.strerror}") from None


def read_jsonl_text(path: Path, text_field: str) -> list[str]:
    """The non-empty documents of a JSON-lines file, read as ``gptrain prepare`` reads them, but a bad
    line is refused: training on a corpus with lines silently missing would go unnoticed."""
    stats = ReadStats()
    try:
        documents = [text for text in read_jsonl_documents(path, text_field, False, stats) if text]
    except OSError as exc:
        raise GptrainError(f"cannot read {path}: {exc.strerror}") from None
    if stats.skipped_lines:
        raise GptrainError(
            f"{stats.skipped_lines:,} line(s) of {path} give no text, the first: {stats.first_skipped}: fix them, "
            "name the field that holds the text with --text-field, or run gptrain prepare (which skips them)"
        )
    return documents


def read_documents(path: Path, text_field: str) -> list[str]:
    return read_jsonl_text(path, text_field) if path.suffix == JSONL_SUFFIX else [read_text_file(path)]


def load_corpus(source: str | Path, text_field: str = "text") -> str:
    """The text of a named dataset (``the-verdict``), a ``.txt`` or ``.jsonl`` file, or a folder of them.

    Each ``.txt`` file is a document, and so is the ``text_field`` of each JSON line. Documents are
    joined with ``<|endoftext|>``, GPT-2's document separator; a folder's files in sorted order.
    """
    if isinstance(source, str) and source in DATASETS and not Path(source).exists():
        path = fetch_dataset(source)
    else:
        path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", JSONL_SUFFIX))
        if not files:
            raise GptrainError(f"folder {path} holds no .txt files and no .jsonl files: point --data at a text file "
                               "or a folder of them")
        text = END_OF_TEXT.join(doc for p in files for doc in read_documents(p, text_field))
    elif path.is_file():
        text = END_OF_TEXT.join(read_documents(path, text_field))
    else:
        names = ", ".join(DATASETS)
        raise GptrainError(f"{source} is neither a file, a folder nor a named dataset ({names}): check the path")
    if not text.strip():
        raise GptrainError(f"the corpus {path} is empty: give it some text")
    return text


@dataclass(frozen=True)
class Shards:
    """A folder made by ``gptrain prepare``: token files read through ``np.memmap``."""

    path: Path
    meta: dict
    train: np.ndarray
    val: np.ndarray


def is_shard_dir(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / META_FILE).is_file()


def nested_shard_dirs(path: str | Path) -> list[Path]:
    """The prepared folders inside ``path`` (itself none), which training reads one at a time."""
    path = Path(path)
    if not path.is_dir() or is_shard_dir(path):
        return []
    return sorted(meta.parent for meta in path.rglob(META_FILE) if is_shard_dir(meta.parent))


def check_not_nested(path: str | Path) -> None:
    """Refuse a folder of prepared folders: one tokenizer's shards are read, from one folder."""
    nested = nested_shard_dirs(path)
    if not nested:
        return
    identities = {}
    for folder in nested:
        try:
            meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
            identity = meta.get("tokenizer") or {}
        except (OSError, ValueError, AttributeError):
            identity = {}
        identities.setdefault(identity.get("sha256"), (folder, identity))
    if len(identities) > 1:
        (a, first), (b, second) = list(identities.values())[:2]
        raise GptrainError(f"{path} mixes shards of {len(identities)} tokenizers ({a.name}: "
                           f"{describe_tokenizer(first)}, {b.name}: {describe_tokenizer(second)}): give --data one "
                           "prepared folder, or prepare all the text with one --tokenizer into one folder")
    raise GptrainError(f"{path} holds {len(nested)} prepared folders, not one ({nested[0].name}, ...): give --data "
                       "one of them, or prepare all the text into one folder")


def open_shards(path: str | Path) -> Shards:
    """Open a prepared folder, checking that no file is truncated."""
    path = Path(path)
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GptrainError(f"{path / META_FILE} cannot be read ({exc}): run gptrain prepare again") from None
    if not isinstance(meta, dict) or meta.get("format") != SHARD_FORMAT:
        raise GptrainError(f"{path / META_FILE} was not written by gptrain prepare: run gptrain prepare on the text")
    dtype = np.dtype(meta.get("dtype", np.dtype(SHARD_DTYPE).name))
    arrays = {}
    for split in ("train", "val"):
        file = path / f"{split}.bin"
        expected = meta.get(f"{split}_tokens", 0)
        size = file.stat().st_size if file.exists() else -1
        if size != expected * dtype.itemsize:
            raise GptrainError(
                f"{file} holds {max(size, 0):,} bytes but meta.json counts {expected:,} tokens: the folder is "
                "incomplete, run gptrain prepare again"
            )
        arrays[split] = np.memmap(file, dtype=dtype, mode="r") if expected else np.zeros(0, dtype=dtype)
    return Shards(path, meta, arrays["train"], arrays["val"])


def shards_tokenizer(shards: Shards) -> Tokenizer:
    """The tokenizer a prepared folder was made with: GPT-2's, the copy of a trained one that
    ``gptrain prepare`` keeps in the folder, or (a folder prepared before it kept one) the
    tokenizer's own folder, if it still holds the same tokenizer."""
    recorded = shards.meta.get("tokenizer") or {}
    if same_tokenizer(recorded, get_tokenizer()):
        return get_tokenizer()
    copy = shards.path / TOKENIZER_FILE
    if copy.is_file():
        tokenizer = tokenizer_from_bytes(copy.read_bytes(), str(recorded.get("name")), copy)
    elif (Path(str(recorded.get("name"))) / TOKENIZER_FILE).is_file():
        tokenizer = load_tokenizer(str(recorded.get("name")))
    else:
        raise GptrainError(f"{shards.path} was prepared with the tokenizer {describe_tokenizer(recorded)}, which is "
                           f"neither in the folder nor at {recorded.get('name')}: run gptrain prepare again")
    if not same_tokenizer(recorded, tokenizer):
        raise GptrainError(f"{shards.path} was prepared with the tokenizer {describe_tokenizer(recorded)}, not with "
                           f"{describe_tokenizer(tokenizer)}: run gptrain prepare again")
    return tokenizer
