"""Training-step speed: gptrain against the book's GPTModel and HF GPT2LMHeadModel, side by side.

One process, the same initial weights copied into every model, the same batches, and
alternating timed runs (each round times every implementation once, in turn), so drifts in
machine load hit all of them alike. A step is: zero the gradients, forward, cross-entropy,
backward, gradient clipping to norm 1 (as `gptrain train` does by default), AdamW update (lr 4e-4,
weight decay 0.1). gptrain runs its own training step (`gptrain.training.step.forward_backward`
and its optimizer set-up), the others the book's loop.

The book's code runs three ways: as written (`book fp32`: fp32, torch's default AdamW, glibc's
default allocator), under the run's autocast (`book`), and with every one-line speed-up its users
add (`book tuned`: the autocast, `fused=True` AdamW, and gptrain's allocator setting). The
headline ratios in README.md and docs/benchmarks.md are gptrain's against `book fp32` and
against `book tuned` (the strongest peer). Before timing, every implementation's loss on one batch
is compared with gptrain's; the script exits with status 1 when they disagree.

    python benchmarks/bench_train.py                       # the lecture's step: 124M, context 256, batch 2
    python benchmarks/bench_train.py --precision bf16
    python benchmarks/bench_train.py --device cuda --context 1024 --batch 16 --precision bf16 --compile
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    book_model_from,
    glibc_default_memory,
    hf_model_from,
    machine_description,
    provenance,
)

from gptrain import TrainConfig, get_preset  # noqa: E402
from gptrain.core.peak import matmul_flops
from gptrain.core.runtime import peak_flops, retain_freed_memory
from gptrain.model.counts import flops_per_token
from gptrain.model.gpt import GPTModel
from gptrain.model.vocab_padding import pad_vocab
from gptrain.training.optim import make_optimizer
from gptrain.training.step import forward_backward

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


GRAD_CLIP = 1.0  # gptrain train's default
# Loss of one batch, same weights: implementations of the same function agree to within this.
AGREEMENT = {"fp32": 1e-4, "bf16": 3e-2, "fp16": 3e-2}


def book_step(model, optimizer, inputs, targets, autocast):
    optimizer.zero_grad()
    with autocast():
        logits = model(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    optimizer.step()
    return loss


def hf_step(model, optimizer, inputs, targets, autocast):
    optimizer.zero_grad()
    with autocast():
        logits = model(inputs).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    optimizer.step()
    return loss


def gptrain_step(model, optimizer, inputs, targets, autocast):
    optimizer.zero_grad(set_to_none=True)
    loss = forward_backward(model, inputs, targets, autocast)
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    optimizer.step()
    return loss


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="124M")
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--precision", choices=list(DTYPES), default="fp32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads [torch's default]")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of every implementation")
    parser.add_argument("--impl", nargs="+", default=["gptrain", "book", "hf"], choices=["gptrain", "book", "hf"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile every model")
    parser.add_argument("--pad-vocab", choices=["auto", "on", "off"], default="auto",
                        help="gptrain's output head padded to 50,304 rows, as `gptrain train` does (auto: on CUDA)")
    parser.add_argument("--malloc", choices=["as-shipped", "retain", "default"], default="as-shipped",
                        help="as-shipped: gptrain's and the tuned book's runs keep freed memory in the process "
                             "as `gptrain train` does on a CPU, the others run with glibc's default behaviour "
                             "(switched before each timed run); retain / default: every implementation alike")
    args = parser.parse_args()
    print(provenance(), flush=True)
    cpu = args.device == "cpu"

    def memory_mode(name: str) -> None:
        if not cpu or args.malloc == "default":
            return
        if args.malloc == "retain" or name in ("gptrain", "book tuned"):
            retain_freed_memory()
        else:
            glibc_default_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    cfg = get_preset(args.preset).replace(context_length=args.context)
    torch.manual_seed(123)
    ours = GPTModel(cfg)
    models = {"gptrain": ours}
    if "book" in args.impl:
        models["book"] = book_model_from(ours)
        # Its strongest form: the lines a user adds (the autocast, fused AdamW, the allocator setting).
        models["book tuned"] = book_model_from(ours)
        args.impl = [*args.impl, "book tuned"]
    if "hf" in args.impl:
        models["hf"] = hf_model_from(ours)
    if args.pad_vocab == "on" or (args.pad_vocab == "auto" and device.type == "cuda"):
        pad_vocab(ours, 64)
    train_cfg = TrainConfig(lr=4e-4, weight_decay=0.1)
    steps, optimizers = {}, {}
    for name in args.impl:
        model = models[name].to(device).train()
        if name == "gptrain":
            optimizers[name] = make_optimizer(model, train_cfg, device)
        else:
            optimizers[name] = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1,
                                                 fused=True if name == "book tuned" else None)
        models[name] = torch.compile(model) if args.compile else model
        steps[name] = {"gptrain": gptrain_step, "hf": hf_step}.get(name, book_step)

    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, cfg.vocab_size, (args.batch, args.context + 1), generator=generator).to(device)
               for _ in range(args.steps)]
    dtype = DTYPES[args.precision]
    autocast = lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    contexts = {name: autocast for name in args.impl}
    if dtype is not None and "book" in args.impl:
        # The book's code as written has no autocast: its fp32 step is the baseline a user has.
        args.impl = [*args.impl, "book fp32"]
        models["book fp32"], optimizers["book fp32"], steps["book fp32"] = models["book"], optimizers["book"], book_step
        contexts["book fp32"] = lambda: torch.autocast(device.type, enabled=False)

    tokens_per_step = args.batch * args.context
    step_flops = flops_per_token(ours) * tokens_per_step
    peak = matmul_flops(device, dtype or torch.float32)
    spec_peak = peak_flops(device, args.precision)  # MFU's denominator: the data sheet's, on known GPUs
    print(machine_description(device))
    print(f"{args.preset} at context {args.context}, batch {args.batch} ({tokens_per_step} tokens/step, "
          f"{step_flops / 1e9:.0f} GFLOP/step), {args.precision}, {torch.get_num_threads()} threads, "
          f"matmul peak {peak / 1e9:.0f} GFLOP/s, malloc {args.malloc}, vocab rows {getattr(ours.out_head, 'rows', cfg.vocab_size)}")

    eval_losses = {}  # same weights, same batch: these agree when the models are the same function
    for name in args.impl:
        model = models[name]
        autocast = contexts[name]
        model.eval()
        with torch.no_grad(), autocast():
            out = model(batches[0][:, :-1])
            logits = out if torch.is_tensor(out) else out.logits
            eval_losses[name] = F.cross_entropy(logits.flatten(0, 1).float(), batches[0][:, 1:].flatten()).item()
        model.train()
    disagree = {name: loss for name, loss in eval_losses.items()
                if abs(loss - eval_losses["gptrain"]) > AGREEMENT[args.precision]}
    print("loss of one batch, same weights: " + ", ".join(f"{name} {loss:.5f}" for name, loss in eval_losses.items())
          + (f"; agree within {AGREEMENT[args.precision]:g}" if not disagree else ""))
    if disagree:
        raise SystemExit(f"{', '.join(disagree)} disagree with gptrain by more than {AGREEMENT[args.precision]:g}: "
                         "the timings would not compare the same computation")
    for name in args.impl:  # warm-up (and compile) outside the timings
        memory_mode(name)
        steps[name](models[name], optimizers[name], batches[0][:, :-1], batches[0][:, 1:], contexts[name])
    times = {name: [] for name in args.impl}
    for _ in range(args.rounds):
        for name in args.impl:
            memory_mode(name)
            sync(device)
            started = time.perf_counter()
            for batch in batches:
                steps[name](models[name], optimizers[name], batch[:, :-1], batch[:, 1:], contexts[name])
            sync(device)
            times[name].append((time.perf_counter() - started) / len(batches))

    median_ms = {name: statistics.median(times[name]) * 1e3 for name in args.impl}
    references = [ref for ref in ("book", "book fp32", "book tuned") if ref in median_ms]
    print(f"{'':10} {'ms/step':>9} {'tokens/s':>9}" + "".join(f" {'x ' + ref:>12}" for ref in references)
          + f" {'of peak':>8}" + (f" {'MFU':>6}" if spec_peak else "") + f" {'eval loss':>10}")
    for name in args.impl:
        ms = median_ms[name]
        ratios = "".join(f" {median_ms[ref] / ms:12.2f}" for ref in references)
        mfu = f" {step_flops / (ms / 1e3) / spec_peak:6.1%}" if spec_peak else ""
        print(f"{name:10} {ms:9.1f} {tokens_per_step / ms * 1e3:9.0f}{ratios} "
              f"{step_flops / (ms / 1e3) / peak:8.0%}{mfu} {eval_losses[name]:10.5f}")


if __name__ == "__main__":
    main()
