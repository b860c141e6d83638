"""What the integrity records cost: saving and loading a checkpoint with and without its manifest,
and the data fingerprint a run computes at start (for resume checks).

Saves and loads alternate within one process, so both sides see the same machine load:

    python benchmarks/bench_integrity.py [--preset 124M] [--rounds 3] [--tokens 50000000]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from gptrain import GPTModel, get_preset, load_checkpoint, save_checkpoint
from gptrain.core.files import fsync_file
from gptrain.training.resume import data_fingerprint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description, provenance  # noqa: E402


def timed(func) -> float:
    started = time.perf_counter()
    func()
    return time.perf_counter() - started


def loaded_and_read(path: Path) -> None:
    """Load the checkpoint and read every weight once, as a first forward pass does: the weights file
    is memory-mapped, so a load that skips the check has read nothing yet."""
    model = load_checkpoint(path)
    with torch.no_grad():
        sum(float(p.sum()) for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="124M")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=50_000_000, help="tokens in the fingerprinted shard")
    args = parser.parse_args()
    print(provenance(), flush=True)
    torch.manual_seed(0)
    model = GPTModel(get_preset(args.preset).replace(context_length=256))
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {machine_description(torch.device('cpu'))}")
    print(f"model: {args.preset}, {size / 2**20:,.0f} MiB of fp32 weights; median of {args.rounds} alternating rounds")
    times = {"save with manifest": [], "save without": [], "load with check": [], "load without": []}
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as folder:
        path = Path(folder) / "ck"
        for _ in range(args.rounds):
            times["save with manifest"].append(timed(lambda: save_checkpoint(model, path)))
            times["load with check"].append(timed(lambda: loaded_and_read(path)))
            # Patched where save_checkpoint and load_checkpoint look them up: no hashing, no manifest,
            # unchecked reads; the files are still flushed to disk as without records.
            with mock.patch("gptrain.store.checkpoint.write_manifest"), \
                    mock.patch("gptrain.store.checkpoint.file_record", lambda file: fsync_file(file) or {}), \
                    mock.patch("gptrain.store.checkpoint.read_verified", lambda folder, name, read: read()):
                times["save without"].append(timed(lambda: save_checkpoint(model, path)))
                times["load without"].append(timed(lambda: loaded_and_read(path)))
        tokens = np.random.default_rng(0).integers(0, 50257, args.tokens, dtype=np.uint16)
        shard = Path(folder) / "train.bin"
        tokens.tofile(shard)
        memmap = np.memmap(shard, dtype=np.uint16, mode="r")
        fingerprint = [timed(lambda: data_fingerprint(memmap)) for _ in range(args.rounds)]
    median = {name: statistics.median(values) for name, values in times.items()}
    for kind in ("save", "load"):
        with_, without = (median["save with manifest"], median["save without"]) if kind == "save" else \
            (median["load with check"], median["load without"])
        print(f"{kind}: {with_:.2f} s with integrity records, {without:.2f} s without "
              f"(+{(with_ / without - 1) * 100:.0f}%, {with_ - without:.2f} s)")
    block = os.urandom(64 << 20)
    hashing = statistics.median(timed(lambda: hashlib.sha256(block).digest()) for _ in range(args.rounds))
    print(f"sha256 on this machine now: {64 / hashing:,.0f} MiB/s (one core; the integrity cost scales with it)")
    seconds = statistics.median(fingerprint)
    print(f"data fingerprint (sha256) of {args.tokens:,} memmapped tokens ({args.tokens * 2 / 2**20:,.0f} MiB): "
          f"{seconds:.2f} s, {args.tokens * 2 / 2**20 / seconds:,.0f} MiB/s")


if __name__ == "__main__":
    main()
