"""Model quality per unit of compute: the book's recipe, gptrain's defaults and the fast recipe, side by side.

Corpus: the Python standard library's own source of the running interpreter (every machine with
Python has it offline), the ``.py`` files outside ``site-packages`` and test folders, sorted by
path; every tenth file is held out for validation. A small GPT (4 layers, width 128, 4 heads,
context 128, the GPT-2 vocabulary) trains from the same initial weights under each recipe:

- ``book``: the lecture's recipe: AdamW lr 4e-4, weight decay 0.1, constant, batch 2, fp32,
  dropout 0.1, no clipping.
- ``gptrain-default``: ``gptrain train``'s defaults: the same, plus gradient clipping at 1.0 and
  bf16 autocast where the CPU has native bf16.
- ``fast``: Muon + WSD at higher rates and a larger batch (``--optimizer muon --muon-lr 3e-2
  --lr 6e-3 --schedule wsd --decay-fraction 0.4 --warmup-steps 5 --batch-size 16 --dropout 0
  --precision fp32``): at this width bf16 autocast's casts cost more than its products save.
- ``fast, half the tokens``: the same recipe given half the budget, so that its decay ends
  at half the book's tokens: does it reach the book's final loss by then?

Every recipe but the last gets the same token budget. The recipes run interleaved, one optimizer step each
in turn, so a change in the load of a shared machine hits all of them alike; each recipe's clock
counts only its own steps (evaluations excluded). The validation loss (fixed held-out windows)
is taken at regular token counts. It prints a table and writes the curves against tokens and
against time.

    python benchmarks/bench_quality.py --plot benchmarks/results/quality.png
    python benchmarks/bench_quality.py --recipes-json benchmarks/results/quality_sweep_2.json   # a sweep
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description, provenance  # noqa: E402

from gptrain import GPTModel, TrainConfig, get_tokenizer  # noqa: E402
from gptrain.core.runtime import resolve_precision
from gptrain.data.corpus import TokenWindows
from gptrain.data.tokenizer import END_OF_TEXT
from gptrain.training.optim import lr_at, make_optimizer, set_lr
from gptrain.training.step import epoch_order

MODEL = dict(preset="tiny", context_length=128)
MODEL_SHAPE = dict(emb_dim=128, n_heads=4, n_layers=4)

FAST = dict(optimizer="muon", muon_lr=3e-2, lr=6e-3, schedule="wsd", decay_fraction=0.4, warmup_steps=5,
            batch_size=16, dropout=0.0, precision="fp32")
RECIPES = {
    "book": dict(lr=4e-4, batch_size=2, grad_clip=None, precision="fp32", dropout=0.1),
    "gptrain-default": dict(lr=4e-4, batch_size=2, dropout=0.1),
    "fast": FAST,
    "fast, half the tokens": FAST,
}
BUDGET_SHARE = {"fast, half the tokens": 0.5}  # of --tokens; the others get all of it


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test"}
    return sorted((p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts)),
                  key=lambda p: p.relative_to(root).as_posix())


def corpus_tokens(max_train_tokens: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Train and validation tokens of the standard library; returns (train, val, files used)."""
    tokenizer = get_tokenizer()
    train, val, used = [], [], 0
    train_count = 0
    for index, path in enumerate(stdlib_files()):
        ids = tokenizer.encode(path.read_text(encoding="utf-8", errors="replace") + END_OF_TEXT,
                               allowed_special={END_OF_TEXT})
        (val if index % 10 == 9 else train).append(ids)
        train_count += len(ids) if index % 10 != 9 else 0
        used = index + 1
        if train_count >= max_train_tokens:
            break
    flat = lambda parts: np.array([t for ids in parts for t in ids], dtype=np.uint16)
    return flat(train), flat(val), used


@dataclasses.dataclass
class Trainee:
    name: str
    cfg: TrainConfig
    model: GPTModel
    optimizer: torch.optim.Optimizer
    total_steps: int
    step: int = 0
    tokens: int = 0
    seconds: float = 0.0
    curve: list = dataclasses.field(default_factory=list)  # (tokens, seconds, val loss)

    def autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16")


def make_trainee(name: str, settings: dict, initial: dict, total_tokens: int, context: int) -> Trainee:
    cfg = TrainConfig(**MODEL, **settings)
    cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, torch.device("cpu")))
    model = GPTModel(cfg.model_config().replace(**MODEL_SHAPE))
    model.load_state_dict(initial)
    total_steps = math.ceil(total_tokens / (cfg.batch_size * context))
    return Trainee(name, cfg, model, make_optimizer(model, cfg, torch.device("cpu")), total_steps)


def train_step(t: Trainee, windows: TokenWindows) -> None:
    first = t.step * t.cfg.batch_size
    batch = [windows[int(epoch_order(len(windows), t.cfg.seed, i // len(windows))[i % len(windows)])]
             for i in range(first, first + t.cfg.batch_size)]
    inputs, targets = torch.stack([x for x, _ in batch]), torch.stack([y for _, y in batch])
    started = time.perf_counter()
    set_lr(t.optimizer, lr_at(t.step, t.cfg, t.total_steps))
    t.optimizer.zero_grad(set_to_none=True)
    with t.autocast():
        loss = torch.nn.functional.cross_entropy(t.model(inputs).flatten(0, 1).float(), targets.flatten())
    loss.backward()
    if t.cfg.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(t.model.parameters(), t.cfg.grad_clip)
    t.optimizer.step()
    t.seconds += time.perf_counter() - started
    t.step += 1
    t.tokens += inputs.numel()


@torch.no_grad()
def val_loss(t: Trainee, val: TokenWindows, windows: int) -> float:
    t.model.eval()
    total = 0.0
    for start in range(0, windows, 8):
        batch = [val[i] for i in range(start, min(start + 8, windows))]
        inputs, targets = torch.stack([x for x, _ in batch]), torch.stack([y for _, y in batch])
        with t.autocast():
            logits = t.model(inputs)
        total += torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                                                   reduction="sum").item()
    t.model.train()
    return total / (windows * val.max_length)


def time_to_reach(curve, target: float) -> tuple[float, int] | None:
    for tokens, seconds, loss in curve:
        if loss <= target:
            return seconds, tokens
    return None


def loss_at_time(curve, seconds: float) -> float | None:
    """The last validation loss measured at or before ``seconds`` of the recipe's own training time."""
    before = [loss for _, s, loss in curve if s <= seconds]
    return before[-1] if before else None


def plot(trainees, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_tokens, by_time) = plt.subplots(1, 2, figsize=(10, 4))
    for t in trainees:
        tokens, seconds, losses = zip(*t.curve)
        by_tokens.plot([n / 1000 for n in tokens], losses, label=t.name, marker=".")
        by_time.plot(seconds, losses, label=t.name, marker=".")
    book = next((t for t in trainees if t.name == "book"), trainees[0])
    lowest = min(loss for t in trainees for _, _, loss in t.curve)
    by_tokens.set_xlabel("training tokens (thousands)")
    by_time.set_xlabel("own training time (s), recipes interleaved")
    for ax in (by_tokens, by_time):
        ax.axhline(book.curve[-1][2], color="grey", linestyle=":", linewidth=1, label="the book's final loss")
        ax.set_ylim(lowest - 0.1, lowest + 1.5)  # the first evaluations (from ~10.8) would flatten the rest
        ax.set_ylabel("validation loss")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle("Python standard library, 4-layer GPT width 128: validation loss")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=200_000, help="training tokens per recipe")
    parser.add_argument("--eval-every", type=int, default=10_000, help="tokens between validation losses")
    parser.add_argument("--val-windows", type=int, default=64, help="held-out windows of 128 tokens evaluated")
    parser.add_argument("--recipes", nargs="+", default=None, help=f"which to run, of {', '.join(RECIPES)}")
    parser.add_argument("--recipes-json", type=Path, default=None,
                        help="run these recipes instead: a JSON object {name: {TrainConfig field: value}} (a sweep)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    print(provenance(), flush=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.recipes_json:
        try:
            recipes = json.loads(args.recipes_json.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            parser.error(f"cannot read --recipes-json {args.recipes_json}: {exc}")
        if not isinstance(recipes, dict) or not all(isinstance(v, dict) for v in recipes.values()):
            parser.error("--recipes-json must hold an object of recipes: {name: {TrainConfig field: value}}")
        RECIPES.clear()
        RECIPES.update(recipes)
    args.recipes = args.recipes or list(RECIPES)
    unknown = set(args.recipes) - set(RECIPES)
    if unknown:
        parser.error(f"unknown recipes {sorted(unknown)}: choose from {', '.join(RECIPES)}")

    context = MODEL["context_length"]
    train_ids, val_ids, files = corpus_tokens(max(args.tokens, 2_000_000))
    train, val = TokenWindows(train_ids, context, context), TokenWindows(val_ids, context, context)
    print(f"{machine_description(torch.device('cpu'))}, {torch.get_num_threads()} torch threads; "
          f"load average at the start {os.getloadavg()[0]:.2f}")
    print(f"Corpus: the first {files} .py files of Python {sys.version.split()[0]}'s standard library "
          f"(every tenth held out): {len(train_ids):,} train / {len(val_ids):,} validation tokens; "
          f"{args.val_windows} validation windows of {context}")
    torch.manual_seed(123)
    initial = GPTModel(TrainConfig(**MODEL).model_config().replace(**MODEL_SHAPE)).state_dict()
    trainees = [make_trainee(name, RECIPES[name], initial, round(args.tokens * BUDGET_SHARE.get(name, 1.0)), context)
                for name in args.recipes]
    print(f"Model: {sum(p.numel() for p in trainees[0].model.parameters()):,} parameters; "
          f"{args.tokens:,} tokens per recipe (but where said), one step of each in turn")
    for t in trainees:
        t.curve.append((0, 0.0, val_loss(t, val, args.val_windows)))
    next_eval = {t.name: args.eval_every for t in trainees}
    while any(t.step < t.total_steps for t in trainees):
        for t in trainees:
            if t.step >= t.total_steps:
                continue
            train_step(t, train)
            if t.tokens >= next_eval[t.name] or t.step == t.total_steps:
                next_eval[t.name] += args.eval_every
                t.curve.append((t.tokens, t.seconds, val_loss(t, val, args.val_windows)))
                print(f"  {t.name:16s} {t.tokens:>9,} tokens {t.seconds:8.1f} s  val loss {t.curve[-1][2]:.3f}",
                      flush=True)

    book = next((t for t in trainees if t.name == "book"), trainees[0])
    target = book.curve[-1][2]
    print(f"\n| recipe | final val loss | own time | tokens/s | time to {target:.3f} (book's final) "
          f"| val loss at the book's time |\n|---|---:|---:|---:|---:|---:|")
    for t in trainees:
        reached = time_to_reach(t.curve, target)
        reached_text = (f"{reached[0]:.0f} s ({reached[0] / book.seconds:.2f}x the book's), {reached[1]:,} tokens"
                        if reached else "not reached")
        at_book_time = loss_at_time(t.curve, book.seconds)
        print(f"| {t.name} | {t.curve[-1][2]:.3f} | {t.seconds:.0f} s | {t.tokens / t.seconds:,.0f} | {reached_text} | "
              f"{'' if at_book_time is None else f'{at_book_time:.3f}'} |")
    for t in trainees:
        print(f"{t.name}: " + " ".join(f"{k}={v}" for k, v in RECIPES[t.name].items())
              + f" tokens={t.total_steps * t.cfg.batch_size * context:,}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    if args.plot:
        plot(trainees, args.plot)
        print(f"curves: {args.plot}")


if __name__ == "__main__":
    main()
