"""Instruction data: the book's chapter 7 dataset and collate, and gptrain's tokenized examples for
``gptrain finetune instruct`` and ``gptrain eval`` on instruction files.

An example is a record rendered by a template (:mod:`gptrain.data.templates`) and tokenized segment by
segment; its targets are the next tokens, with the prompt's set to ``IGNORE_INDEX`` when the prompt is
masked. A batch pads inputs with end-of-text and targets with ``IGNORE_INDEX``, which is the book's
``custom_collate_fn`` when nothing is masked: its first padding token is the reply's end-of-text,
which the template already puts at the end of the reply.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from gptrain.core.errors import GptrainError
from gptrain.data.templates import ALPACA, CHAT, format_input, render_record
from gptrain.data.tokenizer import END_OF_TEXT_ID, encode_text

IGNORE_INDEX = -100  # cross_entropy's default ignore_index: targets that add nothing to the loss
INSTRUCTION_SUFFIXES = (".json", ".jsonl")
OVERLONG = ("truncate", "drop")
# Length-sorted batching sorts within spans of this many global batches of a shuffled order: batches
# of similar lengths (little padding) that still differ from epoch to epoch.
SORT_SPAN_BATCHES = 32


class InstructionDataset(Dataset):
    """The book's (chapter 7): each entry's Alpaca prompt and response, tokenized."""

    def __init__(self, data, tokenizer):
        self.data = data
        self.encoded_texts = [tokenizer.encode(format_input(entry) + f"\n\n### Response:\n{entry['output']}")
                              for entry in data]

    def __getitem__(self, index):
        return self.encoded_texts[index]

    def __len__(self):
        return len(self.data)


def custom_collate_fn(batch, pad_token_id=50256, ignore_index=-100, allowed_max_length=None, device="cpu"):
    """The book's collate (chapter 7): pad with end-of-text, shift targets, and ignore all padding
    targets but the first (the end-of-text the model learns to stop with)."""
    batch_max_length = max(len(item) + 1 for item in batch)
    inputs_lst, targets_lst = [], []
    for item in batch:
        padded = list(item) + [pad_token_id] * (batch_max_length - len(item))
        inputs, targets = torch.tensor(padded[:-1]), torch.tensor(padded[1:])
        padding = torch.nonzero(targets == pad_token_id).flatten()
        if padding.numel() > 1:
            targets[padding[1:]] = ignore_index
        if allowed_max_length is not None:
            inputs, targets = inputs[:allowed_max_length], targets[:allowed_max_length]
        inputs_lst.append(inputs)
        targets_lst.append(targets)
    return torch.stack(inputs_lst).to(device), torch.stack(targets_lst).to(device)


def read_instruction_file(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``.json`` file (a list, as the book's) or ``.jsonl`` file (one per line)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise GptrainError(f"{path} is not a file: give a .json list or .jsonl file of instruction records")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise GptrainError(f"{path} is not UTF-8 text: give a .json or .jsonl file of instruction records") from None
    try:
        if path.suffix == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GptrainError(f"{path} is not JSON (line {exc.lineno}: {exc.msg}): give a .json list of records or "
                           "a .jsonl file with one record per line") from None
    if isinstance(records, dict):
        records = [records]
    if not isinstance(records, list) or not records:
        raise GptrainError(f"{path} holds no records: give a list of {{\"instruction\", \"input\", \"output\"}} "
                           "or {\"messages\": [...]} objects")
    return records


def default_template(records: Sequence[Any]) -> str:
    """The template records are taught with unless one is chosen: chat for conversations, else the book's."""
    first = records[0] if records else None
    return CHAT if isinstance(first, dict) and "messages" in first else ALPACA


def split_records(records: Sequence[Any], seed: int, val_ratio: float, test_ratio: float
                  ) -> tuple[list[Any], list[Any], list[Any]]:
    """(train, val, test) of a seeded shuffle, as the book's 85/5/10 split takes them; val and test keep
    at least one record each when their ratio is above zero."""
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    n = len(shuffled)
    test = max(1, int(n * test_ratio)) if test_ratio else 0
    val = max(1, int(n * val_ratio)) if val_ratio else 0
    if n - test - val < 1:
        raise GptrainError(f"{n} record(s) cannot be split into train, val ({val}) and test ({test}) parts: give "
                           "more records, smaller --val-ratio/--test-ratio, or --val-data")
    return shuffled[:n - test - val], shuffled[n - test - val:n - test], shuffled[n - test:]


def check_records(records: Sequence[Any], template: str, where: str) -> None:
    """Every record renders in ``template``; else one line naming the first bad record by its place in the file."""
    for number, record in enumerate(records, 1):
        try:
            render_record(template, record)
        except GptrainError as exc:
            raise GptrainError(f"{where}, record {number}: {exc}") from None


@dataclass
class Example:
    """A record's tokens and, for each token, whether the loss learns it."""

    tokens: list[int]
    learned: list[bool]


def tokenize_record(tokenizer, template: str, record: Any) -> Example:
    tokens, learned = [], []
    for segment in render_record(template, record):
        ids = encode_text(tokenizer, segment.text)
        tokens += ids
        learned += [segment.learned] * len(ids)
    return Example(tokens, learned)


class InstructionExamples:
    """Tokenized instruction records, batched for training and evaluation like windows of text.

    ``max_length`` is the longest input (the context); a record whose tokens do not fit is cut at the
    context (``overlong="truncate"``) or left out (``"drop"``), and ``overlong_count`` says how many.
    """

    def __init__(self, records: Sequence[Any], tokenizer, template: str, context_length: int, *,
                 mask_prompt: bool = True, overlong: str = "truncate", where: str = "the data"):
        if overlong not in OVERLONG:
            raise GptrainError(f"--overlong must be one of {', '.join(OVERLONG)}, not {overlong!r}")
        self.max_length = context_length
        self.examples: list[Example] = []
        self.overlong_count = 0  # records longer than the context, truncated or dropped
        self.dropped = 0  # records left out: overlong with "drop", or with no reply left after truncation
        for number, record in enumerate(records, 1):
            try:
                example = tokenize_record(tokenizer, template, record)
            except GptrainError as exc:
                raise GptrainError(f"{where}, record {number}: {exc}") from None
            if not mask_prompt:
                example.learned = [True] * len(example.tokens)
            if len(example.tokens) > context_length + 1:
                self.overlong_count += 1
                example = Example(example.tokens[:context_length + 1], example.learned[:context_length + 1])
                if overlong == "drop" or not any(example.learned[1:]):
                    self.dropped += 1
                    continue
            self.examples.append(example)
        if not self.examples:
            raise GptrainError(f"{where}: all {len(records)} record(s) leave no reply inside the context of "
                               f"{context_length} tokens in the {template} template: give shorter records, a model "
                               "with a longer context, or a shorter template")
        self.lengths = np.array([len(e.tokens) - 1 for e in self.examples])

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def tokens(self) -> np.ndarray:
        """Every example's tokens and learned flags in one array: what a resumed run must see again."""
        parts = [np.array(e.tokens + [-1] + [int(x) for x in e.learned] + [-2], dtype=np.int64)
                 for e in self.examples]
        return np.concatenate(parts)

    @property
    def mean_length(self) -> int:
        return max(1, round(float(self.lengths.mean())))

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs padded with end-of-text to the longest of the batch; targets the next tokens, with
        unlearned ones and padding ``IGNORE_INDEX``."""
        chosen = [self.examples[int(i)] for i in indices]
        width = max(len(e.tokens) - 1 for e in chosen)
        inputs = torch.full((len(chosen), width), END_OF_TEXT_ID, dtype=torch.long)
        targets = torch.full((len(chosen), width), IGNORE_INDEX, dtype=torch.long)
        for row, example in enumerate(chosen):
            n = len(example.tokens) - 1
            inputs[row, :n] = torch.tensor(example.tokens[:-1])
            targets[row, :n] = torch.tensor([t if keep else IGNORE_INDEX
                                             for t, keep in zip(example.tokens[1:], example.learned[1:])])
        return inputs, targets

    def step_indices(self, order: torch.Tensor, start: int, size: int, sort: bool) -> torch.Tensor:
        """The ``size`` examples from ``start`` of an epoch's shuffled ``order``; with ``sort``, taken after
        sorting the span of ``SORT_SPAN_BATCHES`` batches they fall in by length."""
        if not sort:
            return order[start:start + size]
        span = size * SORT_SPAN_BATCHES
        span_start = start // span * span
        chunk = order[span_start:span_start + span]
        by_length = chunk[torch.from_numpy(np.argsort(self.lengths[chunk.numpy()], kind="stable"))]
        return by_length[start - span_start:start - span_start + size]


def is_instruction_file(path: str | Path, text_field: str = "text") -> bool:
    """Whether ``path`` holds instruction records: a ``.json`` file, or a ``.jsonl`` file whose first
    record has ``instruction`` or ``messages`` and no ``text_field``."""
    path = Path(path).expanduser()
    if not path.is_file() or not path.name.endswith(INSTRUCTION_SUFFIXES):
        return False
    if path.suffix == ".json":
        return True
    with path.open(encoding="utf-8", errors="replace") as lines:
        first = next((line for line in lines if line.strip()), "")
    try:
        record = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(record, dict) and text_field not in record and ("instruction" in record or "messages" in record)


__all__ = ["IGNORE_INDEX", "InstructionDataset", "InstructionExamples", "check_records", "custom_collate_fn",
           "default_template",
           "is_instruction_file", "read_instruction_file", "split_records"]
