"""Labelled texts for classification: read from CSV, TSV, JSON Lines or a JSON list, split, and
encoded as the book's chapter 6 does (each text truncated to one length and padded with end-of-text).

:class:`SpamDataset` is the book's dataset over its CSV files (columns ``Text`` and ``Label``).
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from gptrain.core.errors import GptrainError
from gptrain.data.readers import CSV_FIELD_LIMIT
from gptrain.data.tokenizer import END_OF_TEXT_ID

LABELED_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
SPLIT_FRACTIONS = (0.7, 0.1)  # the book's train and validation shares; the test set is the rest


@dataclass(frozen=True)
class LabeledTexts:
    """Texts and their labels as the file spells them (a label read from JSON keeps its type's text);
    ``labels`` is None for a file read with ``optional_labels`` that has no label column."""

    source: str
    texts: list[str]
    labels: list[str] | None

    def __len__(self) -> int:
        return len(self.texts)


def _decode(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        raise GptrainError(f"{path} is not UTF-8 text, so not CSV, TSV or JSON: give a text file of "
                           "labelled rows") from None


def _records(path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """The column names and each (line number, row) of a labelled file."""
    suffix = path.suffix.lower()
    if suffix not in LABELED_SUFFIXES:
        raise GptrainError(f"{path} is not CSV, TSV or JSON ({suffix or 'no suffix'}): give a "
                           f"{', '.join(LABELED_SUFFIXES)} file of texts and labels")
    text = _decode(path)
    if suffix in (".csv", ".tsv"):
        csv.field_size_limit(CSV_FIELD_LIMIT)
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
        try:
            rows = [(reader.line_num, row) for row in reader]
        except csv.Error as exc:
            raise GptrainError(f"{path} is not valid CSV near line {reader.line_num} ({exc}): fix it") from None
        return list(reader.fieldnames or []), rows
    try:
        if suffix == ".json":
            values = json.loads(text)
            if not isinstance(values, list):
                raise ValueError("not a list of records")
            rows = list(enumerate(values, 1))
        else:
            rows = [(number, json.loads(line)) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    except ValueError as exc:
        raise GptrainError(f"{path} is not valid JSON ({exc}): give one record per line (.jsonl) or a list "
                           "of records (.json)") from None
    if any(not isinstance(row, dict) for _, row in rows):
        raise GptrainError(f"{path} holds JSON values that are not records: give objects with a text and a label field")
    columns = list(dict.fromkeys(key for _, row in rows for key in row))
    return columns, rows


def _field(columns: list[str], name: str, flag: str, path: Path) -> str:
    """``name``, or the one column that matches it when case is ignored (the book's ``Text``/``Label``)."""
    if name in columns:
        return name
    matches = [column for column in columns if column.lower() == name.lower()]
    if len(matches) == 1:
        return matches[0]
    raise GptrainError(f"{path} has no {flag.removeprefix('--').removesuffix('-field')} column {name!r} (its "
                       f"columns: {', '.join(columns) or 'none'}): name it with {flag}")


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    if isinstance(value, bool):
        return str(value).lower()
    value = str(value).strip()
    return value or None


def read_labeled(path: str | Path, text_field: str = "text", label_field: str = "label", *,
                 optional_labels: bool = False) -> LabeledTexts:
    """Every row's text and label; a row without either is refused, naming the rows. With
    ``optional_labels`` a file without the label column gives its texts alone."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise GptrainError(f"{path} does not exist or is not a file: give a CSV, TSV or JSON Lines file")
    columns, rows = _records(path)
    if not rows:
        raise GptrainError(f"{path} holds no rows: give a file of labelled texts")
    text_key = _field(columns, text_field, "--text-field", path)
    try:
        label_key = _field(columns, label_field, "--label-field", path)
    except GptrainError:
        if not optional_labels:
            raise
        label_key = None
    texts, labels, unlabeled, untexted = [], [], [], []
    for number, row in rows:
        text, label = row.get(text_key), _as_text(row.get(label_key)) if label_key else ""
        if label is None:
            unlabeled.append(number)
        if not isinstance(text, str) or not text.strip():
            untexted.append(number)
        texts.append(text)
        labels.append(label)
    for missing, what in ((unlabeled, "label"), (untexted, "text")):
        if missing:
            where = "line" if path.suffix.lower() != ".json" else "record"
            raise GptrainError(f"{path}: {len(missing)} of {len(rows)} rows have no {what} (first at {where} "
                               f"{missing[0]}): fill them in or remove those rows")
    return LabeledTexts(str(path), texts, labels if label_key else None)


def label_order(labels: list[str]) -> list[str]:
    """The classes in index order: numerically when every label is an integer (the book's 0 and 1),
    else alphabetically."""
    unique = set(labels)
    if all(label.lstrip("-").isdigit() for label in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def check_classes(classes: list[str], data: LabeledTexts) -> None:
    if len(classes) < 2:
        raise GptrainError(f"{data.source} has a single class ({classes[0]!r}): a classifier needs rows of at "
                           f"least two labels")


def split_labeled(data: LabeledTexts, seed: int, *, test: bool = True) -> tuple[LabeledTexts, ...]:
    """Shuffle with ``seed`` and cut as the book's ``random_split`` does: 70% train, 10% validation and
    the rest test; without ``test``, train and validation keep their 7:1 ratio."""
    order = list(range(len(data)))
    random.Random(seed).shuffle(order)
    train_frac, val_frac = SPLIT_FRACTIONS
    if not test:
        train_frac, val_frac = train_frac / (train_frac + val_frac), 1.0
    train_end = int(len(order) * train_frac)
    val_end = train_end + int(len(order) * val_frac) if test else len(order)
    cuts = [order[:train_end], order[train_end:val_end]] + ([order[val_end:]] if test else [])
    names = ("train", "validation", "test")
    if not all(cuts[:2]):
        raise GptrainError(f"{data.source} has {len(data)} rows, too few to split into train and validation "
                           "sets: give more rows, or a validation file with --val-data")
    return tuple(LabeledTexts(f"{data.source} ({name} split)", [data.texts[i] for i in cut],
                              [data.labels[i] for i in cut]) for name, cut in zip(names, cuts))


def pad_encoded(encoded: list[list[int]], max_length: int, pad_token_id: int = END_OF_TEXT_ID) -> list[list[int]]:
    """Each token list cut to ``max_length`` and padded to it with ``pad_token_id``, as the book's SpamDataset."""
    return [ids[:max_length] + [pad_token_id] * (max_length - len(ids[:max_length])) for ids in encoded]


def encode_labeled(data: LabeledTexts, tokenizer, classes: list[str], max_length: int,
                   pad_token_id: int = END_OF_TEXT_ID) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(rows, max_length) token ids, each row's class index, and how many texts were cut to fit."""
    index = {label: i for i, label in enumerate(classes)}
    unknown = sorted(set(data.labels) - set(index))
    if unknown:
        raise GptrainError(f"{data.source} has label(s) {', '.join(map(repr, unknown))} that the training data "
                           f"lacks (its classes: {', '.join(classes)}): train with every class")
    encoded = [tokenizer.encode(text, allowed_special="all") for text in data.texts]
    cut = sum(len(ids) > max_length for ids in encoded)
    ids = pad_encoded(encoded, max_length, pad_token_id)
    return (torch.tensor(ids, dtype=torch.long), torch.tensor([index[label] for label in data.labels], dtype=torch.long),
            cut)


class SpamDataset(Dataset):
    """The book's dataset: the ``Text`` column tokenized, truncated to ``max_length`` (the longest text by
    default) and padded with ``pad_token_id``; items are (token ids, the integer ``Label``)."""

    def __init__(self, csv_file, tokenizer, max_length=None, pad_token_id=END_OF_TEXT_ID):
        with open(csv_file, encoding="utf-8", newline="") as handle:
            self.data = list(csv.DictReader(handle))
        encoded = [tokenizer.encode(row["Text"]) for row in self.data]
        self.max_length = max((len(ids) for ids in encoded), default=0) if max_length is None else max_length
        self.encoded_texts = pad_encoded(encoded, self.max_length, pad_token_id)

    def __getitem__(self, index):
        return (torch.tensor(self.encoded_texts[index], dtype=torch.long),
                torch.tensor(int(self.data[index]["Label"]), dtype=torch.long))

    def __len__(self):
        return len(self.data)


__all__ = ["LABELED_SUFFIXES", "LabeledTexts", "SpamDataset", "check_classes", "encode_labeled", "label_order",
           "pad_encoded", "read_labeled", "split_labeled"]
