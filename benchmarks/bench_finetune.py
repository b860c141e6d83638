"""Fine-tuning: gptrain against the book's loops on the same data, model and batch.

instruct (chapter 7): instruction records made from the-verdict.txt (continue the story after a
sentence: the next sentence), split 85/5/10 with the same seed. One epoch of the book's loop
(llms_from_scratch ch04 GPTModel, ch05 train_model_simple over ch07 InstructionDataset and
custom_collate_fn batches, evaluation every 5 steps on 5 batches and its sample at the epoch's end)
against one epoch of ``gptrain finetune instruct`` (its defaults: prompt masked, length-sorted
batches, precision auto; evaluation every 5 steps on 5 batches) from the same weights, in this
process, both timed around the whole call. The loss check: with ``--no-mask-prompt --batching plain
--precision fp32``, gptrain's first logged loss against the book's calc_loss_batch on the book's
model and collate for the same records.

    python benchmarks/bench_finetune.py instruct [--preset 124M] [--records 200] [--batch-size 8]

classify (chapter 6): see bench_finetune_classify.py.

    python benchmarks/bench_finetune.py classify [--preset 124M] [--train-texts 1045] [--epochs 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_finetune_classify import add_classify_command  # noqa: E402
from common import book_model_from, find_verdict, machine_description  # noqa: E402


def story_records(limit: int) -> list[dict]:
    """Instruction records from the verdict: each sentence's next sentence is its response."""
    text = " ".join(find_verdict().read_text(encoding="utf-8").split())
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if len(s) > 20]
    return [{"instruction": "Continue the story after this sentence.", "input": a, "output": b}
            for a, b in zip(sentences, sentences[1:])][:limit]


def gptrain_run(base: Path, data: Path, out: Path, batch_size: int, *flags: str) -> tuple[float, list[dict]]:
    from gptrain.cli import main

    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["finetune", "instruct", "--model", str(base), "--data", str(data), "--out", str(out),
                     "--batch-size", str(batch_size), "--eval-freq", "5", "--eval-iter", "5", "--seed", "123",
                     "--overwrite", *flags])
    assert code == 0
    wall = time.perf_counter() - started
    return wall, [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def book_epoch(model, records: list[dict], batch_size: int, context: int) -> tuple[float, float]:
    """One epoch of the book's chapter 7 run; (seconds, first evaluated train loss)."""
    from functools import partial

    import torch
    from llms_from_scratch.ch05 import train_model_simple
    from llms_from_scratch.ch07 import InstructionDataset, custom_collate_fn, format_input
    from torch.utils.data import DataLoader

    from gptrain import get_tokenizer
    from gptrain.data.instructions import split_records

    tokenizer = get_tokenizer()
    train, val, _ = split_records(records, 123, 0.05, 0.10)
    collate = partial(custom_collate_fn, allowed_max_length=context, device="cpu")
    torch.manual_seed(123)
    train_loader = DataLoader(InstructionDataset(train, tokenizer), batch_size=batch_size, collate_fn=collate,
                              shuffle=True, drop_last=True)
    val_loader = DataLoader(InstructionDataset(val, tokenizer), batch_size=batch_size, collate_fn=collate)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1)
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        train_losses, _, _ = train_model_simple(model, train_loader, val_loader, optimizer, "cpu", num_epochs=1,
                                                eval_freq=5, eval_iter=5, start_context=format_input(val[0]),
                                                tokenizer=tokenizer)
    return time.perf_counter() - started, train_losses[0]


def same_first_loss(base_model, base: Path, data: Path, records: list[dict], batch_size: int, folder: Path) -> tuple:
    """gptrain's first step loss unmasked in fp32, and the book's calc_loss_batch on the same records."""
    from llms_from_scratch.ch05 import calc_loss_batch
    from llms_from_scratch.ch07 import InstructionDataset, custom_collate_fn

    from gptrain import get_tokenizer
    from gptrain.data.instructions import split_records
    from gptrain.training.step import epoch_order

    _, metrics = gptrain_run(base, data, folder / "unmasked", batch_size, "--no-mask-prompt", "--batching", "plain",
                             "--precision", "fp32", "--max-steps", "1", "--eval-freq", "0")
    ours = next(m["loss"] for m in metrics if m["event"] == "train")
    train, _, _ = split_records(records, 123, 0.05, 0.10)
    first = epoch_order(len(train), 123, 0)[:batch_size].tolist()
    dataset = InstructionDataset(train, get_tokenizer())
    inputs, targets = custom_collate_fn([dataset[i] for i in first], allowed_max_length=base_model.cfg.context_length)
    book = calc_loss_batch(inputs, targets, book_model_from(base_model).eval(), "cpu").item()
    return ours, book


def instruct(args: argparse.Namespace) -> None:
    import torch

    from gptrain import GPTModel, get_preset, save_checkpoint

    records = story_records(args.records)
    torch.manual_seed(123)
    cfg = get_preset(args.preset).replace(drop_rate=0.0, context_length=args.context_length)
    model = GPTModel(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base, data = save_checkpoint(model, folder / "base"), folder / "data.json"
        data.write_text(json.dumps(records))
        print(f"instruct: {len(records)} records from the verdict, {cfg.describe()}, batch {args.batch_size}, "
              f"{machine_description(torch.device('cpu'))}")
        ours, book = same_first_loss(model, base, data, records, args.batch_size, folder)
        print(f"first loss, fp32, --no-mask-prompt: gptrain {ours:.6f}  book {book:.6f}  "
              f"(difference {abs(ours - book):.2e})")
        book_seconds, _ = book_epoch(book_model_from(model).train(), records, args.batch_size, cfg.context_length)
        wall, metrics = gptrain_run(base, data, folder / "run", args.batch_size, "--epochs", "1",
                                    *(["--precision", args.precision] if args.precision else []))
        end = next(m for m in metrics if m["event"] == "end")
        print(f"one epoch: book {book_seconds:.1f} s, gptrain {wall:.1f} s "
              f"({wall / book_seconds:.2f}x the book's; the run's own clock {end['wall_time_s']:.1f} s, set-up, "
              "evaluations and checkpoints included)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("instruct", help="chapter 7: instruction fine-tuning")
    p.add_argument("--preset", default="124M", help="the model's shape (random weights) [124M]")
    p.add_argument("--context-length", type=int, default=1024, help="longest record [1024]")
    p.add_argument("--records", type=int, default=200, help="instruction records made from the verdict [200]")
    p.add_argument("--batch-size", type=int, default=8, help="the book's 8")
    p.add_argument("--precision", default=None, help="gptrain's --precision for the timed epoch [auto]")
    p.set_defaults(run=instruct)
    add_classify_command(commands)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
