"""Launch shapes and restarts: tokens/s of one job as 1 node x 1 process, 1 x 2 and 2 nodes x 1
(two torchrun launchers on the loopback address, c10d rendezvous), the same global batch in each;
then the time from a worker killed with SIGKILL to the first step of the group torchrun restarts.

Every figure comes from a whole ``gptrain train`` run under torchrun: tokens/s is the median of
rank 0's logged rate over the steps after the first two (start-up and first-step costs left out).
The restart is a 1 x 2 run with ``--max-restarts 1 --resume auto`` whose rank 1 the test hook
GPTRAIN_FAULT_AT_STEP kills in the middle of a step, after a checkpoint: rank 0 logs the failure
with its time; the benchmark watches metrics.jsonl for the resumed run's restart record and its
first step. Each process gets cores / processes threads, so every shape uses the whole machine.

    python benchmarks/bench_nodes.py                       # tiny model, context 64, global batch 8, 30 steps
    python benchmarks/bench_nodes.py --steps 6             # a check that it runs (seconds of training)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import find_verdict, machine_description  # noqa: E402

from gptrain.training.ranks import FAULT_ENV  # noqa: E402

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
POLL_S = 0.02


def read_records(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip().endswith("}")]


def train_flags(args, out: Path, per_rank_batch: int, *extra: str) -> list[str]:
    return ["-m", "gptrain", "train", "--data", str(find_verdict()), "--out", str(out), "--preset", args.preset,
            "--context-length", str(args.context), "--batch-size", str(per_rank_batch), "--max-steps", str(args.steps),
            "--eval-freq", "0", "--sample-tokens", "0", "--dropout", "0", "--precision", "fp32", "--device", "cpu",
            *extra]


def environment(processes: int) -> dict[str, str]:
    threads = max(1, (os.cpu_count() or 1) // processes)
    # A restarted group must not read the failed attempt's addresses from torchrun's store (docs/cluster.md).
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def launch(args, nodes: int, per_node: int, out: Path, *extra: str, torchrun_extra=(),
           env_extra=None) -> list[subprocess.Popen]:
    per_rank_batch = args.global_batch // (nodes * per_node)
    env = {**environment(nodes * per_node), **(env_extra or {})}
    flags = train_flags(args, out, per_rank_batch, *extra)
    if nodes == 1:
        where = [["--standalone"]]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        where = [["--nnodes", str(nodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                  "--rdzv-id", "bench"]] * nodes
    return [subprocess.Popen([*TORCHRUN, *w, f"--nproc-per-node={per_node}", *torchrun_extra, *flags], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for w in where]


def wait(procs: list[subprocess.Popen], what: str) -> None:
    for proc in procs:
        _, err = proc.communicate(timeout=1800)
        if proc.returncode:
            raise SystemExit(f"{what} failed:\n{err[-3000:]}")


def tokens_per_s(args, nodes: int, per_node: int, root: Path) -> float:
    out = root / f"{nodes}x{per_node}"
    wait(launch(args, nodes, per_node, out), f"{nodes}x{per_node}")
    rates = [r["tokens_per_s"] for r in read_records(out) if r["event"] == "train"][2:]
    return statistics.median(rates)


def restart_time(args, root: Path) -> tuple[float, float, int]:
    """(seconds from the kill to the restarted group's set-up, to its first step; the step resumed from)."""
    out = root / "restart"
    save_every = max(1, args.steps // 4)
    fault_step = save_every + 1
    procs = launch(args, 1, 2, out, "--save-every", str(save_every), "--resume", "auto",
                   torchrun_extra=("--max-restarts", "1"), env_extra={FAULT_ENV: f"{fault_step}:1"})
    first_step_seen = None
    while procs[0].poll() is None and first_step_seen is None:
        records = read_records(out)
        restart = [i for i, r in enumerate(records) if r["event"] == "restart"]
        if restart and any(r["event"] == "train" for r in records[restart[0]:]):
            first_step_seen = time.time()
        time.sleep(POLL_S)
    wait(procs, "the restart run")
    records = read_records(out)
    failed = next(r for r in records if r["event"] == "failed")
    restart = next(r for r in records if r["event"] == "restart")
    if first_step_seen is None:
        raise SystemExit("the restarted run finished before its first step was seen: use more --steps")
    return restart["time"] - failed["time"], first_step_seen - failed["time"], restart["step"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--global-batch", type=int, default=8, help="sequences per step, split over the ranks")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    if args.steps < 4:
        parser.error("--steps must be at least 4: the first two steps are not timed")
    shapes = [(1, 1), (1, 2), (2, 1)]
    print(f"# {machine_description(torch.device('cpu'))}; {args.preset}, context {args.context}, global batch "
          f"{args.global_batch}, {args.steps} steps, fp32, gloo")
    print("shape (nodes x processes)  tokens/s")
    with tempfile.TemporaryDirectory() as tmp:
        for nodes, per_node in shapes:
            print(f"{nodes} x {per_node}                      {tokens_per_s(args, nodes, per_node, Path(tmp)):,.0f}",
                  flush=True)
        set_up, first_step, step = restart_time(args, Path(tmp))
    print(f"restart (1 x 2, rank 1 killed after the step-{step} checkpoint): {set_up:.1f} s from the kill to the "
          f"restarted group's set-up, {first_step:.1f} s to its first step")


if __name__ == "__main__":
    main()
