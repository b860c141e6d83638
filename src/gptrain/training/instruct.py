"""The data of an instruction fine-tuning run (``gptrain finetune instruct``): records read, split
(seeded, the book's 85/5/10 by default) and tokenized with the run's template, for the same loop as
pre-training; :mod:`gptrain.data.instructions` makes their batches."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from gptrain.data.instructions import (
    InstructionExamples,
    check_records,
    default_template,
    read_instruction_file,
    split_records,
)
from gptrain.training.config import TrainConfig

TEST_RECORDS_FILE = "test.jsonl"  # in an instruction run's directory: its held-out records


@dataclasses.dataclass
class InstructionRecords:
    """An instruction run's records, read, checked and split: everything that needs no model."""

    train: list[Any]
    val: list[Any]
    test: list[Any]


def read_instructions(cfg: TrainConfig) -> tuple[TrainConfig, InstructionRecords]:
    """(cfg with its template resolved, its records split); a run reads them before it loads its model,
    so a bad --data costs no model load."""
    ft = cfg.finetune
    records = read_instruction_file(cfg.data)
    template = ft.template or default_template(records)
    check_records(records, template, cfg.data)
    if ft.val_data is None:
        train, val, test = split_records(records, cfg.seed, ft.val_ratio, ft.test_ratio)
    else:
        val = read_instruction_file(ft.val_data)
        check_records(val, template, ft.val_data)
        train, _, test = split_records(records, cfg.seed, 0.0, ft.test_ratio)
    cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(ft, template=template))
    return cfg, InstructionRecords(train, val, test)


def load_instructions(cfg: TrainConfig, records: InstructionRecords, context_length: int, tokenizer,
                      echo: Callable[[str], None]) -> tuple[InstructionExamples, InstructionExamples]:
    """The train and val examples of ``records`` (from :func:`read_instructions`) in the model's tokens."""
    ft = cfg.finetune
    made = {}
    for name, part, where in (("train", records.train, cfg.data), ("val", records.val, ft.val_data or cfg.data)):
        made[name] = InstructionExamples(part, tokenizer, ft.template, context_length, mask_prompt=ft.mask_prompt,
                                         overlong=ft.overlong, where=f"{where} ({name} records)")
    echo(f"Instruction data: {len(records.train)} train, {len(records.val)} val, {len(records.test)} test "
         f"record(s); template {ft.template}, "
         f"{'loss on the replies only' if ft.mask_prompt else 'loss on every token (--no-mask-prompt)'}, "
         f"{ft.batching} batches")
    for name, examples in made.items():
        if examples.overlong_count:
            kept = examples.overlong_count - examples.dropped
            echo(f"{examples.overlong_count} {name} record(s) are longer than the context of {context_length} "
                 f"tokens: {kept} truncated, {examples.dropped} dropped (--overlong {ft.overlong})")
    return made["train"], made["val"]


__all__ = ["TEST_RECORDS_FILE", "InstructionRecords", "load_instructions", "read_instructions"]
