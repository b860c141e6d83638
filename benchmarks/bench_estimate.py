"""Does ``gptrain estimate`` predict real runs?

(a) Time: ``gptrain estimate --gpu cpu --measure`` against the wall time of the ``gptrain train`` run it
    describes, both timed as whole processes (start-up, evaluations, checkpoints and the report included).
(b) Memory: the estimated peak of a training step against the measured one, each step in its own process:
    peak RSS on a CPU (which holds the interpreter, torch and gptrain: the estimate adds that runtime memory as
    this process has it after one step of a minimal model), CUDA's max allocated on a GPU.
(c) On a CPU, whole ``gptrain train`` runs with their defaults (freed memory kept in the process, the best
    weights kept for best/) against ``gptrain estimate --config RUN/train.toml``.

    python benchmarks/bench_estimate.py                 # both
    python benchmarks/bench_estimate.py --only memory   # or time

Targets: time within 20%, memory within 10%. The development machine is shared, so the timing moves with
the load of other processes; the run and its estimate are taken back to back.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from common import find_verdict, machine_description, provenance  # noqa: E402

from gptrain.model.config import GPTConfig, get_preset
from gptrain.planning.memory import cpu_runtime_memory, memory_per_device

GPTRAIN = [sys.executable, "-m", "gptrain"]

# One training step in a fresh process: build as gptrain train does, take three steps, report the peak.
STEP_SCRIPT = r"""
import json, resource, sys
import torch
from gptrain.model.config import GPTConfig
from gptrain.training.config import TrainConfig
from gptrain.model.gpt import GPTModel
from gptrain.core.runtime import retain_freed_memory
from gptrain.training.optim import make_optimizer
from gptrain.training.step import forward_backward

cfg, batch, precision, device = GPTConfig(**json.loads(sys.argv[1])), int(sys.argv[2]), sys.argv[3], torch.device(sys.argv[4])
if device.type == "cpu" and sys.argv[5] == "retained":
    retain_freed_memory()
model = GPTModel(cfg).to(device)
optimizer = make_optimizer(model, TrainConfig(), device)
dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
autocast = lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
tokens = torch.randint(0, cfg.vocab_size, (batch, cfg.context_length + 1), device=device)
for _ in range(3):
    optimizer.zero_grad(set_to_none=True)
    forward_backward(model, tokens[:, :-1], tokens[:, 1:], autocast)
    optimizer.step()
peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"peak": peak}))
"""


def measure_step(cfg: GPTConfig, batch: int, precision: str, device: str, allocator: str = "default") -> dict:
    out = subprocess.run([sys.executable, "-c", STEP_SCRIPT, json.dumps(cfg.to_dict()), str(batch), precision, device,
                          allocator],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_benchmark(device: str, precisions: list[str], with_124m: bool, retained: bool) -> None:
    shapes = [
        ("tiny preset, ctx 128", get_preset("tiny"), (8, 32)),
        ("small: 6 x 384, ctx 256", GPTConfig(context_length=256, emb_dim=384, n_heads=6, n_layers=6), (4, 16)),
    ]
    if with_124m:
        shapes.append(("124M, ctx 256", get_preset("124M").replace(context_length=256), (1, 4)))
    retained = retained and device == "cpu"
    mib = lambda b: f"{b / 2 ** 20:,.0f} MiB"  # noqa: E731
    measured_label = "measured peak RSS" if device == "cpu" else "measured max allocated"
    header = f"| model | micro-batch | precision | estimated peak | {measured_label} | error |"
    if retained:
        print("glibc's allocator returns large freed blocks to the system, so its peak RSS is the step's peak; "
              "gptrain train keeps freed memory for speed (runtime.retain_freed_memory), and its heap grows past it.")
        header += " estimate keeping freed memory (gptrain estimate's) | RSS as gptrain train holds it | error |"
    print(header)
    print("| --- | ---: | --- | ---: | ---: | ---: |" + (" ---: | ---: | ---: |" if retained else ""))
    for precision in precisions:
        # The CPU's runtime memory, as this process has it after a minimal step (the CUDA context is not allocated).
        overhead = cpu_runtime_memory(precision) if device == "cpu" else 0
        for label, cfg, batches in shapes:
            for batch in batches:
                estimated = memory_per_device(cfg, batch, precision, overhead=overhead,
                                              math_attention=device == "cpu" and cfg.drop_rate > 0).peak
                measured = measure_step(cfg, batch, precision, device)["peak"]
                row = (f"| {label} | {batch} | {precision} | {mib(estimated)} | {mib(measured)} | "
                       f"{estimated / measured - 1:+.1%} |")
                if retained:
                    held = measure_step(cfg, batch, precision, device, "retained")["peak"]
                    kept = memory_per_device(cfg, batch, precision, overhead=overhead, retained_heap=True,
                                             math_attention=device == "cpu" and cfg.drop_rate > 0).peak
                    row += f" {mib(kept)} | {mib(held)} | {kept / held - 1:+.1%} |"
                print(row, flush=True)


def whole_run_memory(runs: list[tuple[str, list[str]]]) -> None:
    """``gptrain train`` as a user runs it (its allocator setting, evaluations, best/ kept, checkpoints)
    against ``gptrain estimate --config RUN/train.toml`` of the same run: its peak resident memory from
    the run's own end record."""
    verdict = str(find_verdict())
    print("| run | estimated peak | measured peak RSS | error |")
    print("| --- | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for label, flags in runs:
            out = Path(tmp) / "run"
            subprocess.run([*GPTRAIN, "train", "--data", verdict, *flags, "--out", str(out), "--overwrite",
                            "--device", "cpu"], capture_output=True, text=True, check=True)
            end = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
            measured = end["peak_memory_mb"][0] * 2 ** 20
            estimate = json.loads(subprocess.run([*GPTRAIN, "estimate", "--config", str(out / "train.toml"), "--gpu",
                                                  "cpu", "--json"], capture_output=True, text=True, check=True).stdout)
            estimated = estimate["memory"]["peak"]
            print(f"| {label}: gptrain train {' '.join(flags)} | {estimated / 2 ** 20:,.0f} MiB | "
                  f"{measured / 2 ** 20:,.0f} MiB | {estimated / measured - 1:+.1%} |", flush=True)


def time_benchmark(steps: int, rounds: int) -> None:
    verdict = str(find_verdict())
    # Steps large enough that the training loop, not start-up, is most of the run, as in any run worth estimating.
    plan = ["--preset", "tiny", "--context-length", "128", "--batch-size", "8", "--eval-freq", "50", "--eval-iter", "2"]
    estimate_cmd = [*GPTRAIN, "estimate", *plan, "--gpu", "cpu", "--measure", "--tokens", str(steps * 8 * 128), "--json"]
    with tempfile.TemporaryDirectory() as tmp:
        train_cmd = [*GPTRAIN, "train", *plan, "--data", verdict, "--max-steps", str(steps), "--sample-tokens", "0",
                     "--out", str(Path(tmp) / "run"), "--device", "cpu", "--overwrite"]
        print(f"estimate: gptrain {' '.join(estimate_cmd[3:])}")
        print(f"train:    gptrain {' '.join(train_cmd[3:])}")
        print("| round | predicted | measured | error | measured MFU | the estimate took |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        for round_ in range(1, rounds + 1):
            started = time.perf_counter()
            result = json.loads(subprocess.run(estimate_cmd, capture_output=True, text=True, check=True).stdout)
            estimate_s = time.perf_counter() - started
            started = time.perf_counter()
            subprocess.run(train_cmd, capture_output=True, text=True, check=True)
            wall = time.perf_counter() - started
            predicted = result["wall_time_s"]
            print(f"| {round_} | {predicted:.1f} s | {wall:.1f} s | {predicted / wall - 1:+.1%} | {result['mfu']:.1%} | "
                  f"{estimate_s:.1f} s |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["time", "memory"], default=None)
    parser.add_argument("--steps", type=int, default=200, help="training steps of the timed run")
    parser.add_argument("--rounds", type=int, default=2, help="estimate-then-train rounds")
    parser.add_argument("--fp32", action="store_true", help="memory in fp32 too, besides the default precision")
    parser.add_argument("--with-124m", action="store_true", help="memory of the 124M model too (about 4 GB)")
    parser.add_argument("--retained", action="store_true",
                        help="also the peak RSS with gptrain train's allocator setting, which keeps freed memory")
    args = parser.parse_args()
    print(provenance(), flush=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    from gptrain.core.runtime import resolve_precision

    precision = resolve_precision("auto", torch.device(device))
    print(f"{machine_description(torch.device(device))}; the machine is shared with other users' processes")
    print(f"command: python benchmarks/bench_estimate.py {' '.join(sys.argv[1:])}")
    if args.only in (None, "time"):
        print(f"\n(a) wall time of a {args.steps}-step run: gptrain estimate --measure against gptrain train, "
              "both whole processes, back to back")
        time_benchmark(args.steps, args.rounds)
    if args.only in (None, "memory"):
        print(f"\n(b) peak memory of a training step ({'CUDA max allocated' if device == 'cuda' else 'peak RSS'}), "
              "three steps in a fresh process each")
        memory_benchmark(device, [precision] if precision == "fp32" or not args.fp32 else [precision, "fp32"],
                         args.with_124m, args.retained)
        if device == "cpu":
            print("\n(c) peak memory of whole gptrain train runs (defaults: freed memory kept, best/ kept) "
                  "against gptrain estimate --config RUN/train.toml")
            whole_run_memory([("the lecture's run, 1 epoch", ["--epochs", "1"]),
                              ("tiny, context 128, micro-batch 8", ["--preset", "tiny", "--context-length", "128",
                                                                    "--batch-size", "8", "--max-steps", "6",
                                                                    "--eval-freq", "2"])])


if __name__ == "__main__":
    main()
