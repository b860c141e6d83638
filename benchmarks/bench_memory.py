"""Peak memory per process of training GPT-2 355M and 774M: one process, 2-process DDP, 2-process FSDP,
each with and without activation checkpointing.

Each configuration runs in fresh processes (torchrun with gloo for the 2-process ones) that build
the model as ``gptrain train`` does (fp32, AdamW, dropout 0), then take a few training steps on
random tokens. Every process reports its peak resident set size (on CUDA: the most GPU memory
allocated) and its resident size before the model was built (Python, torch, gptrain). Before each
configuration the script checks the free memory (psutil) and prints a "not run" line instead when
the configuration would not fit with 4 GB to spare.

    python benchmarks/bench_memory.py                                  # 355M and 774M, batch 1, context 128
    python benchmarks/bench_memory.py --sizes 124M 355M --context-length 64 --steps 2
    python benchmarks/bench_memory.py --device cuda --sizes 774M 1558M --context-length 1024 --batch-size 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import provenance  # noqa: E402

HERE = Path(__file__).resolve()
GiB = 2**30
SPARE_GB = 4.0
MODES = ("1 process", "DDP x2", "FSDP x2")


def worker(args) -> None:
    """One process of one configuration: build, train a few steps, append this rank's figures to --report."""
    import torch
    from torch import nn

    from gptrain.core.runtime import (
        peak_memory_mb,
        retain_freed_memory,
        start_processes,
    )
    from gptrain.model.gpt import GPTModel
    from gptrain.training.config import TrainConfig
    from gptrain.training.optim import make_optimizer
    from gptrain.training.parallel import checkpoint_activations, shard_model
    from gptrain.training.step import forward_backward

    procs, device = start_processes(args.device)
    if device.type == "cpu" and args.mode != "FSDP x2":
        retain_freed_memory()  # as gptrain train does
    before_mb = peak_memory_mb(device)
    cfg = TrainConfig(preset=args.size, context_length=args.context_length, dropout=0.0, batch_size=args.batch_size,
                      precision="fp32", fsdp=args.mode == "FSDP x2", activation_checkpointing=args.ac)
    torch.manual_seed(123)
    with torch.device(device):
        model = GPTModel(cfg.model_config())
    if cfg.activation_checkpointing:
        checkpoint_activations(model)
    trained: nn.Module = model
    if cfg.fsdp:
        shard_model(model, cfg.precision)
    elif procs.distributed:
        trained = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(model, cfg, device)
    generator = torch.Generator().manual_seed(procs.rank)
    held_gb = 0.0
    for _ in range(args.steps):  # the first step allocates AdamW's states; the next ones show the steady state
        tokens = torch.randint(0, model.cfg.vocab_size, (args.batch_size, args.context_length + 1), generator=generator)
        tokens = tokens.to(device)
        forward_backward(trained, tokens[:, :-1], tokens[:, 1:], lambda: torch.autocast(device.type, enabled=False))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        held_gb = model_states_held_gb(model, optimizer)
        optimizer.zero_grad(set_to_none=True)
    row = {"rank": procs.rank, "peak_mb": peak_memory_mb(device), "before_mb": before_mb, "held_gb": held_gb}
    with open(args.report, "a") as f:
        f.write(json.dumps(row) + "\n")


def model_states_held_gb(model, optimizer) -> float:
    """The bytes of weights, gradients and AdamW moments this process holds (its shards under FSDP)."""
    from torch.distributed.tensor import DTensor

    local = lambda t: t.to_local() if isinstance(t, DTensor) else t
    tensors = [t for p in model.parameters() for t in (p, p.grad) if t is not None]
    tensors += [t for state in optimizer.state.values() for t in state.values() if t.dim() > 0]
    return sum(local(t).numel() * local(t).element_size() for t in tensors) / 1e9


def model_states_gb(size: str) -> float:
    """Weights, gradients and AdamW's two moments of the whole model in fp32: 16 bytes per parameter."""
    from gptrain.model.config import get_preset

    cfg = get_preset(size)
    per_block = 12 * cfg.emb_dim**2 + 13 * cfg.emb_dim
    parameters = cfg.n_layers * per_block + (2 * cfg.vocab_size + cfg.context_length + 2) * cfg.emb_dim
    return 16 * parameters / 1e9


def needed_gb(size: str, mode: str, args) -> float:
    """A generous estimate of the whole machine's memory for one configuration, to decide whether to run it:
    per process half a GB of Python and torch, the activations (fp32, with their gradients), and the model
    states that process holds."""
    from gptrain.model.config import get_preset

    cfg = get_preset(size)
    states = model_states_gb(size)
    tokens = args.batch_size * args.context_length
    activations = tokens * (cfg.n_layers * 34 * cfg.emb_dim * 2 + 16 * cfg.vocab_size) / 1e9
    if mode == "1 process":
        return states + activations + 0.5
    if mode == "DDP x2":  # a full replica per process, plus DDP's gradient buckets (a quarter of the states)
        return 2 * (1.25 * states + activations + 0.5)
    # each process: its shards, plus the root (embeddings, head) and one block gathered, with their gradients
    unsharded = 8 * (2 * cfg.vocab_size * cfg.emb_dim + 12 * cfg.emb_dim**2) / 1e9
    return 2 * (states / 2 + unsharded + activations + 0.5)


def run_configuration(size: str, mode: str, ac: bool, args) -> list[dict] | str:
    import psutil

    need = needed_gb(size, mode, args)
    free = psutil.virtual_memory().available / GiB
    if args.device == "cpu" and need + args.spare_gb > free:
        return f"not run: needs ~{need:.1f} GB, {free:.1f} GB free (keeping {args.spare_gb:g} GB spare)"
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "rows.jsonl"
        worker_args = [str(HERE), "--worker", "--size", size, "--mode", mode, "--device", args.device,
                       "--context-length", str(args.context_length), "--batch-size", str(args.batch_size),
                       "--steps", str(args.steps), "--report", str(report)] + (["--ac"] if ac else [])
        launcher = [sys.executable] if mode == "1 process" else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        done = subprocess.run(launcher + worker_args, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            return "failed: " + (done.stderr.strip().splitlines() or ["no output"])[-1]
        return sorted((json.loads(line) for line in report.read_text().splitlines()), key=lambda r: r["rank"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["355M", "774M"])
    parser.add_argument("--context-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--spare-gb", type=float, default=SPARE_GB,
                        help="memory to leave free: a configuration that would not leave it is skipped")
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (nccl, one GPU per process)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--ac", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    print(provenance(), flush=True)

    import platform

    import psutil
    import torch

    print(f"python {' '.join(sys.argv)}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{psutil.virtual_memory().total / GiB:.0f} GB memory ({psutil.virtual_memory().available / GiB:.1f} GB free "
          f"at the start, shared with other users), torch {torch.__version__}, device {args.device}")
    kind = "GPU memory allocated (torch.cuda.max_memory_allocated)" if args.device == "cuda" else "peak RSS"
    print(f"fp32, AdamW, batch {args.batch_size} x context {args.context_length}, {args.steps} steps; "
          f"per process: {kind}, and in brackets the growth over the process before the model was built; "
          "model states held: the bytes of weights, gradients and AdamW moments of rank 0's tensors "
          "(its shards under FSDP; DDP's gradient buckets not counted)")
    print()
    print("| model | setup | activation checkpointing | rank 0 | rank 1 | model states held per process | whole model |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for size in args.sizes:
        for mode in args.modes:
            for ac in (False, True):
                result = run_configuration(size, mode, ac, args)
                states = f"{model_states_gb(size):.2f} GB"
                label = f"| {size} | {mode} | {'on' if ac else 'off'} |"
                if isinstance(result, str):
                    print(f"{label} {result} | | | {states} |", flush=True)
                    continue
                cells = [f"{r['peak_mb'] / 1024:.2f} GB ({(r['peak_mb'] - r['before_mb']) / 1024:+.2f})" for r in result]
                held = f"{result[0]['held_gb']:.2f} GB"
                print(f"{label} {' | '.join(cells + [''] * (2 - len(cells)))} | {held} | {states} |", flush=True)


if __name__ == "__main__":
    main()
