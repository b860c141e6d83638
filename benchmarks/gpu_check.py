"""One prepared check of a GPU: speed, memory and the `gpu`-marked tests, as one JSON document.

On one GPU it runs in under 8 minutes and prints:

- train: tokens/s and MFU of GPT-2 124M at context 1024 in bf16, eager and under torch.compile
  (`gptrain estimate --measure`'s timed steps; MFU against the chip's peak from the estimate's table);
- lecture_run: the wall time of `gptrain train` with its defaults (the lecture's run), start to exit;
- generate: tokens/s of `generate` (KV cache, greedy) at batch 1 and 8 on 124M;
- serve: aggregate tokens/s of `gptrain serve` for 8 concurrent streaming clients on 124M;
- largest_trainable: the largest model of a ladder (124M ... 13B, context 1024, batch 8, bf16,
  AdamW) for which two training steps fit on the card, without and with activation checkpointing;
- gpu_tests: the outcome of each test in tests/test_gpu.py (pytest -m gpu).

`--device cpu --quick` runs the same sections with tiny sizes on a CPU in under 3 minutes (the
GPU tests then skip), so the script itself is checked without a GPU.

    python benchmarks/gpu_check.py                      # on a CUDA machine
    python benchmarks/gpu_check.py --device cpu --quick
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_serve import run_load, start_server  # noqa: E402
from common import machine_description  # noqa: E402

from gptrain import (  # noqa: E402
    GPTConfig,
    GPTModel,
    TrainConfig,
    generate,
    get_preset,
    save_checkpoint,
)
from gptrain.core.accelerators import accelerator_of_device
from gptrain.core.peak import cpu_peak_flops
from gptrain.core.runtime import autocast_context
from gptrain.model.counts import flops_per_token, parameter_counts
from gptrain.planning.throughput import measure_throughput
from gptrain.training.optim import make_optimizer
from gptrain.training.parallel import checkpoint_activations
from gptrain.training.step import forward_backward

REPO = HERE.parent
TEST_DATA = REPO / "tests" / "data"  # the lecture's corpus, shipped with the tests

# GPT-2's shapes, then GPT-3's 2.7B, 6.7B and 13B (context 1024, untied head as gptrain trains them).
LADDER = [("124M", get_preset("124M")), ("355M", get_preset("355M")), ("774M", get_preset("774M")),
          ("1558M", get_preset("1558M")), ("2.7B", GPTConfig(emb_dim=2560, n_heads=32, n_layers=32)),
          ("6.7B", GPTConfig(emb_dim=4096, n_heads=32, n_layers=32)),
          ("13B", GPTConfig(emb_dim=5120, n_heads=40, n_layers=40))]
QUICK_LADDER = [("tiny", get_preset("tiny")), ("tiny-x2", GPTConfig(emb_dim=128, n_heads=4, n_layers=4))]


def log(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def peak_flops(device: torch.device, precision: str) -> tuple[float | None, str]:
    if device.type == "cpu":
        return cpu_peak_flops(precision), f"this CPU's {precision} matrix products (measured)"
    name = torch.cuda.get_device_name(device)
    accelerator = accelerator_of_device(name)
    if accelerator is None:
        return None, f"{name} is not in the estimate's table"
    return accelerator.peak(precision), f"{accelerator.name} {precision} in src/gptrain/estimate.py's table"


def train_throughput(device: torch.device, quick: bool) -> dict:
    cfg = (get_preset("tiny") if quick else get_preset("124M")).replace(context_length=64 if quick else 1024,
                                                                       drop_rate=0.0)
    batch = 2 if quick else 16
    peak, source = peak_flops(device, "bf16")
    result = {"model": "tiny" if quick else "124M", "context_length": cfg.context_length, "batch_size": batch,
              "precision": "bf16", "peak_flops": peak, "peak_source": source}
    for label, compiled in (("eager", False), ("compiled", True)):
        log(f"training steps, {label}")
        started = time.perf_counter()
        measured = measure_throughput(cfg, batch, 1, "bf16", device, min_seconds=1 if quick else 5, compile=compiled)
        rate = measured.tokens_per_s
        result[label] = {"tokens_per_s": rate, "mfu": rate * flops_per_token(cfg) / peak if peak else None,
                         "seconds_with_warm_up": time.perf_counter() - started}
        release(device)
    return result


def lecture_run(device: torch.device, quick: bool, folder: Path) -> dict:
    """`gptrain train` with its defaults is the lecture's run; --quick trims it to a few tiny steps."""
    args = ["--preset", "tiny", "--context-length", "64", "--max-steps", "6", "--eval-freq", "3", "--eval-iter", "1",
            "--sample-tokens", "5"] if quick else []
    command = [sys.executable, "-m", "gptrain", "train", "--out", str(folder / "lecture"), "--device", device.type,
               *args]
    log("the lecture's run: " + " ".join(command[1:]))
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "GPTRAIN_DATA_DIR": str(TEST_DATA)})
    wall = time.perf_counter() - started
    result = {"command": " ".join(["gptrain", *command[3:]]), "wall_s": wall, "returncode": done.returncode}
    if done.returncode != 0:
        return result | {"error": done.stderr[-2000:]}
    rows = [json.loads(line) for line in (folder / "lecture" / "metrics.jsonl").read_text().splitlines()]
    last = [row for row in rows if row["event"] == "eval"][-1]
    end = [row for row in rows if row["event"] == "end"][-1]
    return result | {"steps": end["step"] + 1, "last_eval_step": last["step"], "train_loss": last["train_loss"],
                     "val_loss": last["val_loss"]}


def generate_speed(device: torch.device, quick: bool) -> dict:
    cfg = get_preset("tiny" if quick else "124M").replace(drop_rate=0.0)
    torch.manual_seed(0)
    model = GPTModel(cfg).to(device).eval()
    new_tokens = 32 if quick else 256
    result = {"model": "tiny" if quick else "124M", "precision": "fp32", "new_tokens": new_tokens}
    for batch in (1, 8):
        prompts = torch.randint(0, cfg.vocab_size, (batch, 16), generator=torch.Generator().manual_seed(batch))
        prompts = prompts.to(device)
        generate(model, prompts, 8, cfg.context_length)  # warm-up: kernels, the inference layout
        synchronize(device)
        started = time.perf_counter()
        out = generate(model, prompts, new_tokens, cfg.context_length)
        synchronize(device)
        seconds = time.perf_counter() - started
        result[f"batch_{batch}_tokens_per_s"] = batch * (out.shape[1] - prompts.shape[1]) / seconds
    del model
    release(device)
    return result


def serve_speed(device: torch.device, quick: bool, folder: Path) -> dict:
    cfg = get_preset("tiny" if quick else "124M").replace(drop_rate=0.0)
    torch.manual_seed(0)
    checkpoint = save_checkpoint(GPTModel(cfg), folder / "serve-checkpoint")
    new_tokens = 32 if quick else 128
    log(f"serving 8 clients x {new_tokens} tokens")
    process, host = start_server(checkpoint, max_batch=8, threads=None, device=device.type)
    try:
        run_load(host, 2, 4)  # warm-up
        load = run_load(host, 8, new_tokens)
    finally:
        process.terminate()
        process.wait(timeout=60)
    return {"model": "tiny" if quick else "124M", "clients": 8, "new_tokens": new_tokens, **load}


def out_of_memory(error: RuntimeError) -> bool:
    # cuBLAS reports a failed workspace allocation as its own error, not as torch's OutOfMemoryError.
    return isinstance(error, torch.cuda.OutOfMemoryError) or "CUBLAS_STATUS_ALLOC_FAILED" in str(error)


def two_steps_fit(cfg: GPTConfig, batch: int, checkpointing: bool, device: torch.device) -> float | None:
    """Peak GB of two bf16 AdamW training steps of ``cfg`` (0 on a CPU), or None when they do not fit."""
    model = optimizer = tokens = None
    fits = True
    try:
        with torch.device(device):
            model = GPTModel(cfg)
        if checkpointing:
            checkpoint_activations(model)
        optimizer = make_optimizer(model, TrainConfig(), device)
        tokens = torch.randint(0, cfg.vocab_size, (batch, cfg.context_length + 1), device=device)
        for _ in range(2):
            optimizer.zero_grad(set_to_none=True)
            forward_backward(model, tokens[:, :-1], tokens[:, 1:], lambda: autocast_context(device.type, "bf16"))
            optimizer.step()
        synchronize(device)
    except RuntimeError as error:
        if not out_of_memory(error):
            raise
        fits = False
    peak_gb = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else 0.0
    del model, optimizer, tokens  # before the cache is emptied, or the next rung starts with this one's memory
    release(device)
    return peak_gb if fits else None


def largest_trainable(device: torch.device, quick: bool) -> dict:
    ladder = QUICK_LADDER if quick else LADDER
    context, batch = (64, 1) if quick else (1024, 8)
    result = {"context_length": context, "batch_size": batch, "precision": "bf16", "optimizer": "adamw",
              "ladder": [name for name, _ in ladder]}
    for label, checkpointing in (("without_checkpointing", False), ("with_checkpointing", True)):
        largest = None
        for name, cfg in ladder:
            cfg = cfg.replace(context_length=context, drop_rate=0.0)
            log(f"does {name} train ({label})?")
            peak_gb = two_steps_fit(cfg, batch, checkpointing, device)
            if peak_gb is None:
                break
            largest = {"model": name, "parameters": parameter_counts(cfg).total, "peak_memory_gb": peak_gb}
        result[label] = largest
    return result


def gpu_tests(folder: Path, timeout: int) -> dict:
    report = folder / "gpu-tests.xml"
    log("pytest -m gpu tests/test_gpu.py")
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                               f"--junitxml={report}", str(REPO / "tests" / "test_gpu.py")],
                              capture_output=True, text=True, cwd=REPO, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"returncode": None, "error": f"the tests did not finish within {timeout} s"}
    outcomes = {}
    if report.is_file():
        for case in ET.parse(report).getroot().iter("testcase"):
            found = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
            outcomes[case.get("name")] = {"failure": "failed", "error": "error", "skipped": "skipped"}.get(
                found[0] if found else "", "passed")
    counts = {kind: sum(outcome == kind for outcome in outcomes.values())
              for kind in ("passed", "failed", "error", "skipped")}
    result = {"returncode": done.returncode, **counts, "outcomes": outcomes}
    if done.returncode != 0:
        result["output_tail"] = (done.stdout + done.stderr)[-3000:]
    return result


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script itself in minutes")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: run with --device cpu --quick to check the script")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as gptrain train does
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        result = {"machine": machine_description(device), "device": device.type, "quick": args.quick,
                  "train": train_throughput(device, args.quick),
                  "lecture_run": lecture_run(device, args.quick, folder),
                  "generate": generate_speed(device, args.quick),
                  "serve": serve_speed(device, args.quick, folder),
                  "largest_trainable": largest_trainable(device, args.quick),
                  "gpu_tests": gpu_tests(folder, timeout=120 if args.quick else 300)}
    result["seconds"] = time.perf_counter() - started
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
