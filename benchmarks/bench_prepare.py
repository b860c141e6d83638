"""Throughput and memory of `gptrain prepare` on ~100 MB and ~400 MB of text.

Builds synthetic corpora (words of the-verdict.txt drawn at random into sentences, paragraphs
and documents of varied length, in .txt files and a .jsonl file), runs `gptrain prepare` in a
subprocess, and samples the resident memory of its whole process tree (the main process plus
its tokenizer workers) from /proc every 50 ms, as proportional set size (PSS).

    python benchmarks/bench_prepare.py [--sizes-mb 100 400] [--workers 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import find_verdict, provenance  # noqa: E402


def make_corpus(folder: Path, megabytes: int, seed: int = 0) -> int:
    """Write about ``megabytes`` of text: 3/4 as .txt documents, 1/4 as one .jsonl file."""
    words = np.array(re.findall(r"[A-Za-z']+|[.,;!?-]", find_verdict().read_text(encoding="utf-8")))
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    target, written, doc = megabytes * 1_000_000, 0, 0
    jsonl = open(folder / "part.jsonl", "w", encoding="utf-8")
    while written < target:
        n_words = int(rng.integers(200, 20_000))
        picked = words[rng.integers(0, len(words), n_words)].tolist()
        for i in range(0, len(picked), int(rng.integers(8, 30))):
            picked[i] = picked[i].capitalize() + (f" {int(rng.integers(0, 10_000))}" if rng.random() < 0.2 else "")
        text = " ".join(picked).replace(" .", ".\n").replace(" ,", ",")
        if doc % 4 == 3:
            jsonl.write(json.dumps({"text": text}) + "\n")
        else:
            (folder / f"doc{doc:06d}.txt").write_text(text, encoding="utf-8")
        written += len(text)
        doc += 1
    jsonl.close()
    return written


def tree_rss_bytes(root: int) -> tuple[int, int]:
    """(sum, max) of the proportional set size over ``root`` and its descendants: forked workers
    share the parent's pages, which plain RSS would count once per process."""
    pids, total, largest = [root], 0, 0
    while pids:
        pid = pids.pop()
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            rss = int(re.search(r"Pss:\s+(\d+)", rollup).group(1)) * 1024
            for task in Path(f"/proc/{pid}/task").iterdir():
                children = (task / "children").read_text().split()
                pids.extend(int(c) for c in children)
        except (OSError, AttributeError):
            continue
        total += rss
        largest = max(largest, rss)
    return total, largest


def run_measured(cmd: list[str]) -> tuple[float, int, int]:
    """Run ``cmd``; its wall time and the peaks of (sum, largest) of its process tree's memory."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_sum = peak_one = 0
    while proc.poll() is None:
        total, largest = tree_rss_bytes(proc.pid)
        peak_sum, peak_one = max(peak_sum, total), max(peak_one, largest)
        time.sleep(0.05)
    wall = time.perf_counter() - started
    _, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:5])} ... failed: {err}")
    return wall, peak_sum, peak_one


def run_prepare(corpus: Path, out: Path, workers: int, tokenizer: str = "gpt2") -> dict:
    cmd = [sys.executable, "-m", "gptrain", "prepare", str(corpus), "--out", str(out), "--workers", str(workers),
           "--overwrite", "--tokenizer", tokenizer]
    wall, peak_sum, peak_one = run_measured(cmd)
    meta = json.loads((out / "meta.json").read_text())
    tokens = meta["train_tokens"] + meta["val_tokens"]
    return {"tokens": tokens, "seconds": meta["seconds"], "wall": wall,
            "tokens_per_s": tokens / meta["seconds"], "peak_tree_mb": peak_sum / 2**20,
            "peak_process_mb": peak_one / 2**20, "documents": sum(meta["documents"].values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[100, 400])
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--keep", help="build the corpora here and keep them (default: a temporary folder)")
    args = parser.parse_args()
    print(provenance(), flush=True)
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    print(f"{os.cpu_count()} cores, {args.workers} tokenizer processes")
    print(f"{'text':>8} {'documents':>10} {'tokens':>13} {'seconds':>8} {'tokens/s':>12} "
          f"{'peak memory, all processes':>27} {'largest process':>16}")
    try:
        for size in args.sizes_mb:
            corpus = base / f"corpus_{size}mb"
            if not corpus.exists():
                make_corpus(corpus, size)
            r = run_prepare(corpus, base / f"shards_{size}mb", args.workers)
            print(f"{size:>6}MB {r['documents']:>10,} {r['tokens']:>13,} {r['seconds']:>8.1f} "
                  f"{r['tokens_per_s']:>12,.0f} {r['peak_tree_mb']:>24.0f} MB {r['peak_process_mb']:>13.0f} MB",
                  flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
