"""Transfer learning: continued pre-training against training from scratch, full fine-tuning against LoRA.

(a) A small model (the ``tiny`` preset at context 64) is pre-trained on English prose of another
    domain: the docstrings of Python's standard library. It is then trained on the-verdict.txt
    (fiction, never seen) with ``gptrain train --init``, fully and with LoRA, against the same
    architecture trained from scratch on the-verdict.txt for the same steps. The figure is the
    validation loss on the verdict's held-out 10%.
(b) GPT-2 124M, full fine-tuning against LoRA: peak resident memory, trained parameters,
    checkpoint sizes and time per step, at batch 1 and context 128. Uses OpenAI's weights from
    the gptrain cache when they are there, else random weights of the same shape (memory and
    sizes do not depend on the values; its losses then mean nothing and are not shown).

Every run is ``python -m gptrain train`` in its own process; its peak RSS comes from
``os.wait4``'s resource usage of that process alone.

    python benchmarks/bench_transfer.py [--pretrain-steps 150] [--steps 30] [--skip-124m] [--keep DIR]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shlex
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from common import find_verdict, machine_description, provenance


def stdlib_docstrings(limit_chars: int) -> str:
    """English prose from the standard library's module, class and function docstrings."""
    parts, size = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 200:
                    parts.append(doc)
                    size += len(doc)
        if size >= limit_chars:
            break
    return "\n\n".join(parts)[:limit_chars]


def run_train(out: Path, *args) -> dict:
    """One `gptrain train` in a fresh process: its summary figures and peak RSS."""
    command = [sys.executable, "-m", "gptrain", "train", "--out", str(out), "--device", "cpu", "--sample-tokens", "0",
               "--overwrite", *map(str, args)]
    started = time.perf_counter()
    with open(out.with_suffix(".log"), "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {shlex.join(command)}\n{out.with_suffix('.log').read_text()[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["event"] == "eval"]
    steps = [r for r in records if r["event"] == "train"]
    log_text = out.with_suffix(".log").read_text()
    trained = next((line for line in log_text.splitlines() if "training " in line and " of " in line), None)
    final = out / "final"
    return {
        "command": shlex.join(["gptrain", *command[3:]]),
        "initial_val": next((r["val_loss"] for r in evals if r.get("initial")), None),
        "final_val": evals[-1]["val_loss"],
        "best_val": min(r["val_loss"] for r in evals),
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "wall_s": wall,
        # tokens_per_s counts training time only (no evaluation or saving); the first step is a warm-up
        "s_per_step": statistics.median(steps[0]["tokens_seen"] / r["tokens_per_s"] for r in steps[1:] or steps),
        "trained_line": trained,
        "final_mib": sum(p.stat().st_size for p in final.rglob("*") if p.is_file()) / 2**20,
        "weights_mib": (final / "model.safetensors").stat().st_size / 2**20,
        "adapter_mib": (final / "adapter.safetensors").stat().st_size / 2**20
        if (final / "adapter.safetensors").exists() else None,
    }


def trained_parameters(result: dict, total: int) -> int:
    line = result["trained_line"]
    if line and "LoRA" in line:
        return int(line.split("training ")[1].split(" of ")[0].replace(",", ""))
    return total


def gpt2_124m_source(work: Path) -> tuple[str, bool]:
    """OpenAI's 124M from the cache, or random weights in its shape (tied head, qkv bias)."""
    from gptrain import GPTModel, save_checkpoint
    from gptrain.core.download import cache_dir

    if (cache_dir() / "gpt2" / "124M" / "model.safetensors").is_file():
        return "124M", True
    import torch

    torch.manual_seed(0)
    model = GPTModel(dict(vocab_size=50257, context_length=1024, emb_dim=768, n_heads=12, n_layers=12,
                          drop_rate=0.1, qkv_bias=True, tie_embeddings=True))
    save_checkpoint(model, work / "random-124m")
    return str(work / "random-124m"), False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrain-steps", type=int, default=150)
    parser.add_argument("--steps", type=int, default=30, help="steps on the-verdict.txt of each compared run")
    parser.add_argument("--steps-124m", type=int, default=3)
    parser.add_argument("--skip-124m", action="store_true")
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs in this folder")
    args = parser.parse_args()
    print(provenance(), flush=True)

    import torch

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_transfer_"))
    work.mkdir(parents=True, exist_ok=True)
    verdict = find_verdict()
    print(f"# bench_transfer on {machine_description(torch.device('cpu'))}; the machine was shared with other "
          f"jobs, so times are rough")
    print(f"# {shlex.join([Path(sys.executable).name, *sys.argv])}")

    prose = work / "stdlib_docstrings.txt"
    prose.write_text(stdlib_docstrings(1_000_000), encoding="utf-8")
    print(f"\n## (a) tiny preset at context 64: pre-trained on {len(prose.read_text()):,} characters of Python "
          f"standard-library docstrings, then {args.steps} steps of batch 4 (256 tokens) on the-verdict.txt")
    common = ["--context-length", 64, "--precision", "fp32", "--seed", 123]
    pretrain = run_train(work / "pretrain", "--data", prose, "--preset", "tiny", *common, "--batch-size", 8,
                         "--max-steps", args.pretrain_steps, "--lr", "3e-3", "--warmup-steps", 20, "--cosine",
                         "--min-lr", "3e-4", "--eval-freq", max(1, args.pretrain_steps - 1), "--eval-iter", 10)
    print(f"pre-training: {pretrain['command']}\n  docstrings val loss {pretrain['final_val']:.3f}, "
          f"{pretrain['wall_s']:.0f} s")
    verdict_args = ["--data", verdict, *common, "--batch-size", 4, "--max-steps", args.steps, "--eval-freq", 5,
                    "--eval-iter", 5]
    runs = {
        "from scratch": run_train(work / "scratch", "--preset", "tiny", *verdict_args, "--lr", "1e-3"),
        "--init, full fine-tuning": run_train(work / "full", "--init", work / "pretrain", *verdict_args,
                                              "--lr", "1e-3"),
        "--init, LoRA rank 8": run_train(work / "lora", "--init", work / "pretrain", *verdict_args, "--lr", "3e-3",
                                         "--lora-rank", 8),
    }
    from gptrain import count_parameters, load_checkpoint

    tiny_total = count_parameters(load_checkpoint(work / "pretrain"))
    print("\n| run on the-verdict.txt | val loss before | val loss after | lowest val loss | trained parameters "
          "| peak RSS | final/ on disk | adapter file |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in runs.items():
        before = "–" if r["initial_val"] is None else f"{r['initial_val']:.3f}"
        adapter = "–" if r["adapter_mib"] is None else f"{r['adapter_mib'] * 1024:.0f} KiB"
        print(f"| {name} | {before} | {r['final_val']:.3f} | {r['best_val']:.3f} | "
              f"{trained_parameters(r, tiny_total):,} | {r['peak_rss_mib']:.0f} MiB | {r['final_mib']:.1f} MiB "
              f"| {adapter} |")
    for name, r in runs.items():
        print(f"  {name}: {r['command']}")

    if args.skip_124m:
        return
    source, real = gpt2_124m_source(work)
    print(f"\n## (b) GPT-2 124M ({'OpenAI weights' if real else 'random weights of its shape: losses not shown'}), "
          f"batch 1, context 128, {args.steps_124m} steps, fp32")
    big_args = ["--init", source, "--data", verdict, "--context-length", 128, "--batch-size", 1, "--precision",
                "fp32", "--max-steps", args.steps_124m, "--eval-freq", 1000, "--eval-iter", 1]
    big = {"full fine-tuning": run_train(work / "full-124m", *big_args, "--lr", "1e-4"),
           "LoRA rank 8": run_train(work / "lora-124m", *big_args, "--lr", "1e-3", "--lora-rank", 8)}
    total = count_parameters(load_checkpoint(work / "full-124m"))
    print("\n| 124M | trained parameters | peak RSS | s/step | final/ on disk | adapter file |"
          + (" val loss before / after |" if real else ""))
    print("| --- | --- | --- | --- | --- | --- |" + (" --- |" if real else ""))
    for name, r in big.items():
        adapter = "–" if r["adapter_mib"] is None else f"{r['adapter_mib']:.2f} MiB"
        losses = f" {r['initial_val']:.3f} / {r['final_val']:.3f} |" if real else ""
        print(f"| {name} | {trained_parameters(r, total):,} | {r['peak_rss_mib']:.0f} MiB | {r['s_per_step']:.2f} | "
              f"{r['final_mib']:.0f} MiB | {adapter} |{losses}")
    for name, r in big.items():
        print(f"  {name}: {r['command']}")
    ratio = big["LoRA rank 8"]["peak_rss_mib"] / big["full fine-tuning"]["peak_rss_mib"]
    print(f"LoRA's peak RSS is {ratio:.2f}x full fine-tuning's")


if __name__ == "__main__":
    main()
