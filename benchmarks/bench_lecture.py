"""The lecture's full run: the book's own code against `gptrain train`, figures and wall times.

1. The book's code (llms_from_scratch ch04 GPTModel + ch05 train_model_simple) exactly as chapter 5
   runs it: seed 123, the 124M architecture at context 256, drop rate 0.1, batch 2, AdamW lr 4e-4,
   weight decay 0.1, 10 epochs, evaluation every 5 steps on 5 batches. It prints the book's
   figures on the canonical the-verdict.txt.
2. The same code with the lines its users add for speed ("book tuned", the strongest peer): the
   loop under bf16 autocast (where the CPU has native bf16, as gptrain's precision auto decides),
   `fused=True` AdamW, and gptrain's allocator setting (retain_freed_memory).
3. `gptrain train` with its defaults (the same run; precision auto), in a subprocess, timed end to end.
4. `gptrain train --precision fp32`, to show the fp32 curve next to the default's (--skip-fp32 leaves it out).

Each run is a whole process, timed from its start to its exit (imports, data, evaluations, samples
and writing checkpoints included). It prints step-0 and final losses with wall times, gptrain's
ratio to the book as written and to the tuned book (the README's headline uses both), where
`gptrain train`'s time went (its own split from metrics.jsonl: start-up, steps, evaluation, sampling,
checkpoint writes, the rest; imports before train(); report and exit after) and where the book's
went (imports; set-up and steps; its evaluate_model and generate_and_print_sample), and writes a plot of
the loss curves. It exits with status 1 when a run's step-0 or lowest validation loss is more than
3% from the book's: then the runs did not train the same model.

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
from common import find_verdict, machine_description, provenance  # noqa: E402

AGREEMENT = 0.03  # relative: step-0 and lowest validation losses of runs that train the same model


def run_book(text: str, epochs: int = 10, tuned: bool = False) -> dict:
    import torch
    from llms_from_scratch import ch05
    from llms_from_scratch.ch02 import GPTDatasetV1
    from llms_from_scratch.ch04 import GPTModel

    from gptrain import (
        get_tokenizer,  # the book's tokenizer, built offline (tiktoken "gpt2")
    )
    from gptrain.core.runtime import cpu_has_native_bf16, retain_freed_memory

    if tuned:
        retain_freed_memory()
    bf16 = tuned and cpu_has_native_bf16()

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
    if bf16:
        # Around each forward, not around the whole loop: autocast caches its bf16 copies of the weights
        # until its context exits, so a loop run inside one context would never see the updates.
        model.forward = torch.autocast("cpu", dtype=torch.bfloat16)(model.forward)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0004, weight_decay=0.1, fused=True if tuned else None)
    # Its loop's evaluations and samples timed where train_model_simple looks them up, for the split.
    spent = {"evaluations": 0.0, "samples": 0.0}

    def timed(part, fn):
        def run(*args, **kwargs):
            part_started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[part] += time.perf_counter() - part_started
        return run

    ch05.evaluate_model = timed("evaluations", ch05.evaluate_model)
    ch05.generate_and_print_sample = timed("samples", ch05.generate_and_print_sample)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        train_losses, val_losses, tokens_seen = ch05.train_model_simple(
            model, train_loader, val_loader, optimizer, "cpu", num_epochs=epochs, eval_freq=5, eval_iter=5,
            start_context="Every effort moves you", tokenizer=tokenizer)
    wall = time.perf_counter() - started
    lines = printed.getvalue().splitlines()
    name = f"book tuned, {'bf16' if bf16 else 'fp32'}" if tuned else "book (llms-from-scratch), fp32"
    return {"name": name, "train_losses": train_losses, "val_losses": val_losses,
            "tokens_seen": tokens_seen, "wall_s": wall, "last_sample": lines[-1],
            "loop": {"set-up and steps": wall - sum(spent.values()), **spent}}


def run_book_process(epochs: int, tuned: bool) -> dict:
    """The book's run in a fresh process, timed whole."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, __file__, "--book-only", "--epochs", str(epochs),
                             *(["--tuned"] if tuned else [])], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode:
        raise SystemExit(f"the book's run failed: {result.stderr[-2000:]}")
    run = json.loads(result.stdout.splitlines()[-1])
    run["breakdown"] = {"imports": wall - run["wall_s"], **run.pop("loop")}
    run["wall_s"] = wall
    return run


def time_breakdown(events: list[dict], wall: float) -> dict[str, float]:
    """Where a gptrain run's time went: its own split from the end record of metrics.jsonl, the
    imports before train(), and the report and exit after it."""
    end = next(e for e in events if e["event"] == "end")
    split = {f"{name} (MFU {end['mfu']:.0%})" if name == "steps" and end.get("mfu") else name: seconds
             for name, seconds in end["time_split_s"].items()}
    return {"imports before train()": end["before_train_s"], **split,
            "report and exit": wall - end["before_train_s"] - end["wall_time_s"]}


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
    parser.add_argument("--skip-tuned", action="store_true", help="do not run the tuned book")
    parser.add_argument("--book-only", action="store_true", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--tuned", action="store_true", help=argparse.SUPPRESS)  # the child process's variant
    args = parser.parse_args()
    if not args.book_only:
        print(provenance(), flush=True)
    verdict = find_verdict()
    os.environ.setdefault("GPTRAIN_DATA_DIR", str(verdict.parent))
    if args.book_only:
        print(json.dumps(run_book(verdict.read_text(encoding="utf-8"), args.epochs, args.tuned)))
        return
    import torch

    print(machine_description(torch.device("cpu")))
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        epochs = ["--epochs", str(args.epochs)]
        if not args.skip_book:
            runs.append(run_book_process(args.epochs, tuned=False))
        if not args.skip_tuned:
            runs.append(run_book_process(args.epochs, tuned=True))
        runs.append(run_gptrain(Path(tmp) / "default", epochs, "gptrain train (defaults)"))
        if not args.skip_fp32:
            runs.append(run_gptrain(Path(tmp) / "fp32", ["--precision", "fp32", *epochs], "gptrain train"))
    print(f"{'run':40} {'step 0 train/val':>17} {'final train/val':>16} {'min val':>8} {'wall':>8}")
    for run in runs:
        t, v = run["train_losses"], run["val_losses"]
        print(f"{run['name']:40} {t[0]:8.3f}/{v[0]:<8.3f} {t[-1]:7.3f}/{v[-1]:<8.3f} {min(v):8.3f} {run['wall_s']:7.0f}s")
    for run in runs:
        print(f"{run['name']}: " + ", ".join(f"{part} {seconds:.1f} s" for part, seconds in run["breakdown"].items()))
    peers = [run for run in runs if run["name"].startswith("book")]
    for run in runs:
        for peer in peers:
            if run["name"].startswith("gptrain"):
                print(f"{run['name']}: {peer['wall_s'] / run['wall_s']:.2f}x {peer['name']}, whole processes")
    for run in runs:
        print(f"{run['name']}, last sample: {run['last_sample']}")
    plot(runs, Path(args.plot), args.epochs)
    print(f"plot: {args.plot}")
    check_agreement(runs)


def check_agreement(runs: list[dict]) -> None:
    """Step-0 and lowest validation losses within AGREEMENT of the first run's, or exit with status 1."""
    reference = runs[0]
    for run in runs[1:]:
        for label, a, b in (("step-0 train loss", reference["train_losses"][0], run["train_losses"][0]),
                            ("lowest val loss", min(reference["val_losses"]), min(run["val_losses"]))):
            if abs(a - b) > AGREEMENT * abs(a):
                raise SystemExit(f"{run['name']}: {label} {b:.3f} is more than {AGREEMENT:.0%} from "
                                 f"{reference['name']}'s {a:.3f}: the runs did not train the same model")
    print(f"losses agree: step-0 train and lowest val loss of every run within {AGREEMENT:.0%} of {reference['name']}'s")


if __name__ == "__main__":
    main()
