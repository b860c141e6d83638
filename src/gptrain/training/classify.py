"""``gptrain finetune classify``: the book's chapter 6 fine-tuning of a GPT model into a classifier.

The output head is replaced by one with an output per class, trained on the last token's logits
(cross-entropy against each text's class) with AdamW (:func:`gptrain.training.optim.make_optimizer`).
By default only the last block, the final norm and the head learn, as in the book; ``train_all`` or
``lora_rank`` change that. When the blocks before the trainable ones are frozen and dropout is off, their
output for each text is computed once and reused in every epoch and evaluation: an epoch then costs
the trainable blocks alone, with the same numbers as running the whole model.

The run directory holds ``metrics.jsonl`` (losses, accuracies and confusion tables), ``config.json``
and the classifier's checkpoint in ``final/``, whose config records the labels.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from gptrain.core.errors import GptrainError
from gptrain.core.files import write_json_atomic
from gptrain.core.runtime import autocast_context, resolve_device, resolve_precision
from gptrain.data.labeled import (
    LabeledTexts,
    check_classes,
    encode_labeled,
    label_order,
    read_labeled,
    split_labeled,
)
from gptrain.interop.sources import resolve_model
from gptrain.model.classifier import (
    add_class_head,
    class_logits,
    freeze_for_classification,
    frozen_prefix,
    hidden_states,
    set_dropout,
)
from gptrain.model.lora import add_lora
from gptrain.reporting.metrics import MetricsLog
from gptrain.store.checkpoint import save_checkpoint
from gptrain.store.layout import FINAL_DIR
from gptrain.training.config import TrainConfig
from gptrain.training.optim import make_optimizer

CACHE_LIMIT_BYTES = 4 << 30  # frozen blocks' outputs kept for reuse up to this size; above it, recomputed
SPLITS = ("train", "validation", "test")


@dataclass
class ClassifyConfig:
    """Everything ``gptrain finetune classify`` needs; the defaults are the book's chapter 6 run."""

    model: str
    data: str
    out: str
    val_data: str | None = None
    test_data: str | None = None
    text_field: str = "text"
    label_field: str = "label"
    epochs: int = 5
    batch_size: int = 8
    lr: float = 5e-5
    weight_decay: float = 0.1
    max_length: int | None = None  # the longest training text (at most the context) by default
    train_all: bool = False
    lora_rank: int | None = None
    lora_alpha: float | None = None
    drop_rate: float = 0.0
    seed: int = 123
    device: str = "auto"
    precision: str = "auto"

    def check(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise GptrainError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.max_length is not None and self.max_length < 1:
            raise GptrainError(f"--max-length must be at least 1, not {self.max_length}")
        if not self.lr > 0:
            raise GptrainError(f"--lr must be positive, not {self.lr}")
        if not self.weight_decay >= 0:
            raise GptrainError(f"--weight-decay must not be negative, not {self.weight_decay}")
        if not 0.0 <= self.drop_rate < 1.0:
            raise GptrainError(f"--drop-rate must be in [0, 1), not {self.drop_rate}")
        if self.train_all and self.lora_rank is not None:
            raise GptrainError("--train-all and --lora-rank exclude each other: LoRA trains adapters only; give one")
        if self.precision == "fp16":
            raise GptrainError("--precision fp16 is not offered for classification: use bf16 or fp32")
        out = Path(self.out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise GptrainError(f"--out {out} already exists and is not an empty folder: choose a new run directory")


@dataclass
class Splits:
    """The labelled texts of each split (test may be None) and the classes, in head order."""

    train: LabeledTexts
    validation: LabeledTexts
    test: LabeledTexts | None
    classes: list[str]


def load_splits(cfg: ClassifyConfig) -> Splits:
    """Read ``--data`` (and ``--val-data``/``--test-data``); split what is not given as the book does."""
    read = lambda path: read_labeled(path, cfg.text_field, cfg.label_field)
    data = read(cfg.data)
    test = read(cfg.test_data) if cfg.test_data else None
    if cfg.val_data:
        train, validation = data, read(cfg.val_data)
    elif test is not None:
        train, validation = split_labeled(data, cfg.seed, test=False)
    else:
        train, validation, test = split_labeled(data, cfg.seed)
    classes = label_order(train.labels)
    check_classes(classes, train)
    if len(train) < cfg.batch_size:
        raise GptrainError(f"the training set has {len(train)} rows, fewer than --batch-size {cfg.batch_size}: "
                           "give more rows or a smaller batch")
    return Splits(train, validation, test if test is not None and len(test) else None, classes)


class Inputs:
    """One split's token ids and classes, and what enters the first trainable block for each row: the
    frozen blocks' output, computed once (kept on the device when it fits ``CACHE_LIMIT_BYTES``)."""

    def __init__(self, model: nn.Module, ids: torch.Tensor, targets: torch.Tensor, device: torch.device,
                 precision: str):
        self.model, self.ids, self.targets, self.device, self.precision = model, ids, targets, device, precision
        self.start = frozen_prefix(model)
        self._cache: torch.Tensor | None = None
        size = ids.numel() * model.cfg.emb_dim * 4
        if self.start and size <= CACHE_LIMIT_BYTES:
            self._cache = torch.cat([self._prefix(part) for part in torch.arange(len(ids)).split(64)]) if len(ids) else None

    def __len__(self) -> int:
        return len(self.targets)

    def _prefix(self, rows: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast_context(self.device.type, self.precision):
            return hidden_states(self.model, self.ids[rows].to(self.device), self.start)

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What :func:`gptrain.model.classifier.class_logits` takes for ``rows``, and their classes."""
        targets = self.targets[rows].to(self.device)
        if not self.start:
            return self.ids[rows].to(self.device), targets
        return (self._cache[rows.to(self._cache.device)] if self._cache is not None else self._prefix(rows)), targets


def train_epoch(model: nn.Module, inputs: Inputs, optimizer: torch.optim.Optimizer, batch_size: int) -> list[float]:
    """One pass over ``inputs`` in shuffled batches; the loss of each step. The rows come in the order
    (and with the draws from torch's global generator) of the book's ``DataLoader(shuffle=True,
    drop_last=True)``, so that a seed gives the book's batches."""
    model.train()
    losses = []
    for rows in DataLoader(range(len(inputs)), batch_size=batch_size, shuffle=True, drop_last=True):
        hidden, targets = inputs.batch(rows)
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(inputs.device.type, inputs.precision):
            logits = class_logits(model, hidden, inputs.start)
        loss = F.cross_entropy(logits.float(), targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def predict(model: nn.Module, inputs: Inputs, batch_size: int = 64) -> tuple[torch.Tensor, float]:
    """Each row's predicted class, and the mean loss over the rows."""
    model.eval()
    predicted, total = [], 0.0
    with torch.no_grad():
        for rows in torch.arange(len(inputs)).split(batch_size):
            hidden, targets = inputs.batch(rows)
            with autocast_context(inputs.device.type, inputs.precision):
                logits = class_logits(model, hidden, inputs.start).float()
            total += F.cross_entropy(logits, targets, reduction="sum").item()
            predicted.append(logits.argmax(-1).cpu())
    return torch.cat(predicted), total / max(1, len(inputs))


def confusion(predicted: torch.Tensor, targets: torch.Tensor, n_classes: int) -> list[list[int]]:
    """Counts of (true class, predicted class): row i, column j is class i predicted as j."""
    counts = torch.bincount(targets.cpu() * n_classes + predicted, minlength=n_classes * n_classes)
    return counts.view(n_classes, n_classes).tolist()


def format_confusion(matrix: list[list[int]], labels: list[str]) -> str:
    """The confusion table as text: a row per true label, a column per predicted label."""
    width = max(len("true \\ predicted"), *(len(label) for label in labels))
    cells = [max(len(label), *(len(str(row[j])) for row in matrix)) for j, label in enumerate(labels)]
    lines = ["true \\ predicted".ljust(width) + "".join(f"  {label:>{cells[j]}}" for j, label in enumerate(labels))]
    lines += [label.ljust(width) + "".join(f"  {count:>{cells[j]}}" for j, count in enumerate(row))
              for label, row in zip(labels, matrix)]
    return "\n".join(lines)


def build_classifier(cfg: ClassifyConfig, n_classes: int, device: torch.device) -> tuple[nn.Module, Any]:
    """The source model with a class head, and which of its parameters learn (as ``cfg`` says)."""
    source = resolve_model(cfg.model, device=device)
    model = set_dropout(source.model, cfg.drop_rate)
    torch.manual_seed(cfg.seed)
    add_class_head(model, n_classes)
    if cfg.lora_rank is not None:
        add_lora(model, rank=cfg.lora_rank, alpha=cfg.lora_alpha)
        model.out_head.requires_grad_(True)  # a new head has nothing to adapt: it learns whole
    elif cfg.train_all:
        model.requires_grad_(True)
    else:
        freeze_for_classification(model)
    return model.to(device), source


def finetune_classifier(cfg: ClassifyConfig, echo: Callable[[str], None] = print) -> Path:
    """Fine-tune ``cfg.model`` into a classifier of ``cfg.data``'s labels; returns the run directory."""
    cfg.check()
    splits = load_splits(cfg)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    model, source = build_classifier(cfg, len(splits.classes), device)
    tokenizer = source.tokenizer
    longest = max(len(tokenizer.encode(text, allowed_special="all")) for text in splits.train.texts)
    max_length = min(cfg.max_length or longest, model.cfg.context_length)
    encoded = {name: encode_labeled(data, tokenizer, splits.classes, max_length, tokenizer.eot_token)
               for name, data in zip(SPLITS, (splits.train, splits.validation, splits.test)) if data is not None}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "config.json", {"model": model.cfg.to_dict(), "train": dataclasses.asdict(cfg),
                                            "classifier": {"labels": splits.classes, "max_length": max_length},
                                            "source": source.origin})
    cut = sum(count for _, _, count in encoded.values())
    echo(f"Classes: {', '.join(splits.classes)}; " + ", ".join(f"{name} {len(ids)}" for name, (ids, _, _) in encoded.items())
         + f" texts, padded to {max_length} tokens" + (f"; {cut} longer texts cut to that length" if cut else ""))
    log = MetricsLog(out)
    try:
        _train_and_evaluate(cfg, model, {name: (ids, targets) for name, (ids, targets, _) in encoded.items()},
                            splits.classes, device, precision, log, echo)
    finally:
        log.close()
    save_checkpoint(model, out / FINAL_DIR, train_config=dataclasses.asdict(cfg), tokenizer=tokenizer,
                    classifier={"labels": splits.classes, "max_length": max_length})
    echo(f"Saved the classifier to {out / FINAL_DIR}")
    return out


def _train_and_evaluate(cfg: ClassifyConfig, model: nn.Module, encoded: dict[str, tuple[torch.Tensor, torch.Tensor]],
                        classes: list[str], device: torch.device, precision: str, log: MetricsLog,
                        echo: Callable[[str], None]) -> None:
    optimizer = make_optimizer(model, TrainConfig(lr=cfg.lr, weight_decay=cfg.weight_decay), device)
    inputs = {name: Inputs(model, ids, targets, device, precision) for name, (ids, targets) in encoded.items()}
    started, step = time.perf_counter(), 0
    torch.manual_seed(cfg.seed)
    for epoch in range(1, cfg.epochs + 1):
        losses = train_epoch(model, inputs["train"], optimizer, cfg.batch_size)
        for loss in losses:
            log.write("train", step=step, epoch=epoch, loss=loss)
            step += 1
        predicted, val_loss = predict(model, inputs["validation"])
        val_accuracy = (predicted == inputs["validation"].targets).float().mean().item()
        train_loss = sum(losses) / len(losses)
        log.write("eval", step=step - 1, epoch=epoch, train_loss=train_loss, val_loss=val_loss,
                  val_accuracy=val_accuracy, elapsed_s=time.perf_counter() - started)
        echo(f"Ep {epoch} (Step {step - 1:06d}): Train loss {train_loss:.3f}, Val loss {val_loss:.3f}, "
             f"Validation accuracy {val_accuracy * 100:.2f}%")
    matrices = {}
    for name, split in inputs.items():
        predicted, loss = predict(model, split)
        accuracy = (predicted == split.targets).float().mean().item()
        matrices[name] = confusion(predicted, split.targets, len(classes))
        log.write("classification", step=step - 1, split=name, accuracy=accuracy, loss=loss, examples=len(split),
                  labels=classes, confusion=matrices[name])
        echo(f"{name.capitalize()} accuracy: {accuracy * 100:.2f}% ({len(split)} texts)")
    last = "test" if "test" in matrices else "validation"
    echo(f"Confusion on the {last} set (rows: true label, columns: predicted):\n"
         + format_confusion(matrices[last], classes))
