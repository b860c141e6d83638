"""The lecture's full run: the book's own code against `gptrain train`, figures and wall times.

1. The book's code (llms_from_scratch ch04 GPTModel + ch05 train_model_simple) exactly as chapter 5
   runs it: seed 123, the 124M architecture at context 256, drop rate 0.1, batch 2, AdamW lr 4e-4,
   weight decay 0.1, 10 epochs, evaluation every 5 steps on 5 batches. It prints the book's
   figures on the canonical the-verdict.txt.
2. `gptrain train` with its defaults (the same run; precision auto), in a subprocess, timed end to end.
3. `gptrain train --precision fp32`, to show the fp32 curve next to the default's.

Each run is a whole process, timed from its start to its exit (imports, data, evaluations, samples
and writing checkpoints included). It prints step-0 and final losses with wall times, where
`gptrain train`'s time went (training steps, evaluations with samples and checkpoints, and the
rest: imports, set-up, plot and report), and writes a plot of the loss curves.

    python benchmarks/bench_lecture.py [--skip-book] [--epochs 3] [--plot benchmarks/results/lecture_losses.png]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import find_verdict, machine_description  # noqa: E402


def run_book(text: str, epochs: int = 10) -> dict:
    import torch
    from llms_from_scratch.ch02 import GPTDatasetV1
    from llms_from_scratch.ch04 import GPTModel
    from llms_from_scratch.ch05 import train_model_simple

    from gptrain import get_tokenizer  # the book's tokenizer, built offline (tiktoken "gpt2")

    tokenizer = get_tokenizer()
    cfg = {"vocab_size": 50257, "context_length": 256, "emb_dim": 768, "n_heads": 12, "n_layers": 12,
           "drop_rate": 0.1, "qkv_bias": False}

    def loader(txt, shuffle, drop_last):
        dataset = GPTDatasetV1(txt, tokenizer, cfg["context_length"], cfg["context_length"])
        return torch.utils.data.DataLoader(dataset, batch_size=2, shuffle=shuffle, drop_last=drop_last)

    started = time.perf_counter()
    split = int(0.9 * len(text))
    torch.manual_seed(123)
    train_loader = loader(text[:split], True, True)
    val_loader = loader(text[split:], False, False)
    torch.manual_seed(123)
    model = GPTModel(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0004, weight_decay=0.1)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        train_losses, val_losses, tokens_seen = train_model_simple(
            model, train_loader, val_loader, optimizer, "cpu", num_epochs=epochs, eval_freq=5, eval_iter=5,
            start_context="Every effort moves you", tokenizer=tokenizer)
    wall = time.perf_counter() - started
    lines = printed.getvalue().splitlines()
    return {"name": "book (llms-from-scratch), fp32", "train_losses": train_losses, "val_losses": val_losses,
            "tokens_seen": tokens_seen, "wall_s": wall, "last_sample": lines[-1]}


def run_book_process(epochs: int) -> dict:
    """The book's run in a fresh process, timed whole."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, __file__, "--book-only", "--epochs", str(epochs)],
                            capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode:
        raise SystemExit(f"the book's run failed: {result.stderr[-2000:]}")
    run = json.loads(result.stdout.splitlines()[-1])
    run["breakdown"] = {"its loop (steps, evaluations, samples)": run["wall_s"], "imports and set-up": wall - run["wall_s"]}
    run["wall_s"] = wall
    return run


def time_breakdown(events: list[dict], wall: float) -> dict[str, float]:
    """Where a gptrain run's time went, from its metrics.jsonl (with --log-every 1 each train record's
    tokens/s covers its own step)."""
    train = [e for e in events if e["event"] == "train"]
    seen = [e["tokens_seen"] for e in train]
    step_s = sum((b - a) / e["tokens_per_s"] for e, a, b in zip(train, [0, *seen], seen))
    loop_s = next(e["wall_time_s"] for e in events if e["event"] == "end")
    return {f"{len(train)} training steps": step_s, "set-up, evaluations, samples and checkpoints": loop_s - step_s,
            "imports, plot and report": wall - loop_s}


def run_gptrain(out: Path, extra: list[str], name: str) -> dict:
    cmd = [sys.executable, "-m", "gptrain", "train", "--out", str(out), "--overwrite", *extra]
    started = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode:
        raise SystemExit(f"gptrain train failed: {result.stderr[-2000:]}")
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in events if e["event"] == "eval"]
    samples = [e for e in events if e["event"] == "sample"]
    precision = json.loads((out / "config.json").read_text())["train"]["precision"]
    return {"name": f"{name}, {precision}", "train_losses": [e["train_loss"] for e in evals],
            "val_losses": [e["val_loss"] for e in evals], "tokens_seen": [e["tokens_seen"] for e in evals],
            "wall_s": wall, "last_sample": samples[-1]["text"].replace("\n", " ") if samples else "",
            "breakdown": time_breakdown(events, wall)}


def plot(runs: list[dict], path: Path, epochs: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for run, color in zip(runs, ["black", "tab:blue", "tab:orange"]):
        ax.plot(run["tokens_seen"], run["train_losses"], color=color, label=f"{run['name']}: train")
        ax.plot(run["tokens_seen"], run["val_losses"], color=color, linestyle="-.", label=f"{run['name']}: val")
    ax.set_xlabel("Tokens seen")
    ax.set_ylabel("Loss")
    ax.set_title(f"The lecture's run: GPT-2 124M (context 256) on the-verdict.txt, {epochs} epochs")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-book", action="store_true", help="do not run the book's code (it takes ~8 minutes)")
    parser.add_argument("--plot", default="benchmarks/results/lecture_losses.png")
    parser.add_argument("--epochs", type=int, default=10, help="the lecture's 10, or fewer")
    parser.add_argument("--skip-fp32", action="store_true", help="do not run gptrain train --precision fp32")
    parser.add_argument("--book-only", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    verdict = find_verdict()
    os.environ.setdefault("GPTRAIN_DATA_DIR", str(verdict.parent))
    if args.book_only:
        print(json.dumps(run_book(verdict.read_text(encoding="utf-8"), args.epochs)))
        return
    import torch

    print(machine_description(torch.device("cpu")))
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        epochs = ["--epochs", str(args.epochs)]
        if not args.skip_book:
            runs.append(run_book_process(args.epochs))
        runs.append(run_gptrain(Path(tmp) / "default", epochs, "gptrain train (defaults)"))
        if not args.skip_fp32:
            runs.append(run_gptrain(Path(tmp) / "fp32", ["--precision", "fp32", *epochs], "gptrain train"))
    print(f"{'run':40} {'step 0 train/val':>17} {'final train/val':>16} {'min val':>8} {'wall':>8}")
    for run in runs:
        t, v = run["train_losses"], run["val_losses"]
        print(f"{run['name']:40} {t[0]:8.3f}/{v[0]:<8.3f} {t[-1]:7.3f}/{v[-1]:<8.3f} {min(v):8.3f} {run['wall_s']:7.0f}s")
    for run in runs:
        print(f"{run['name']}: " + ", ".join(f"{part} {seconds:.1f} s" for part, seconds in run["breakdown"].items()))
    book = next((run for run in runs if run["name"].startswith("book")), None)
    for run in runs:
        if book is not None and run is not book:
            print(f"{run['name']}: {book['wall_s'] / run['wall_s']:.2f}x the book's run, whole processes")
    for run in runs:
        print(f"{run['name']}, last sample: {run['last_sample']}")
    plot(runs, Path(args.plot), args.epochs)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
