"""Where a training step's time goes: torch.profiler's top operators for one lecture step.

Profiles gptrain's step (as `gptrain train` runs it) or the book's (llms_from_scratch GPTModel,
PyTorch's default AdamW, glibc's default allocator) on the same weights and batch, after warm-up
steps, and prints the operators with the most self time (CPU time spent in the operator itself,
not in the operators it calls).

    python benchmarks/profile_step.py                      # gptrain, fp32
    python benchmarks/profile_step.py --impl book
    python benchmarks/profile_step.py --precision bf16 --top 15
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import DTYPES, book_step, gptrain_step  # noqa: E402
from common import (  # noqa: E402
    book_model_from,
    glibc_default_memory,
    machine_description,
    provenance,
)

from gptrain import TrainConfig, get_preset  # noqa: E402
from gptrain.core.runtime import retain_freed_memory
from gptrain.model.gpt import GPTModel
from gptrain.training.optim import make_optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=["gptrain", "book"], default="gptrain")
    parser.add_argument("--precision", choices=list(DTYPES), default="fp32")
    parser.add_argument("--preset", default="124M")
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (allocator and caches settle)")
    parser.add_argument("--top", type=int, default=12, help="operators to list")
    args = parser.parse_args()
    print(provenance(), flush=True)

    cfg = get_preset(args.preset).replace(context_length=args.context)
    torch.manual_seed(123)
    model = GPTModel(cfg)
    if args.impl == "gptrain":
        retain_freed_memory()
        optimizer = make_optimizer(model, TrainConfig(lr=4e-4, weight_decay=0.1))
        step = gptrain_step
    else:
        glibc_default_memory()
        model = book_model_from(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
        step = book_step
    model.train()
    batch = torch.randint(0, cfg.vocab_size, (args.batch, args.context + 1), generator=torch.Generator().manual_seed(0))
    dtype = DTYPES[args.precision]
    autocast = lambda: torch.autocast("cpu", dtype=dtype, enabled=dtype is not None)
    for _ in range(args.warmup):
        step(model, optimizer, batch[:, :-1], batch[:, 1:], autocast)

    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(model, optimizer, batch[:, :-1], batch[:, 1:], autocast)
    wall = time.perf_counter() - started
    print(f"{machine_description(torch.device('cpu'))}, {torch.get_num_threads()} threads")
    print(f"{args.impl} step, {args.preset} at context {args.context}, batch {args.batch}, {args.precision}: "
          f"{wall * 1e3:.0f} ms under the profiler")
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"{'operator':42} {'calls':>6} {'self ms':>9} {'share':>6}")
    for event in events[:args.top]:
        print(f"{event.key[:42]:42} {event.count:6d} {event.self_cpu_time_total / 1e3:9.1f} "
              f"{event.self_cpu_time_total / total:6.1%}")


if __name__ == "__main__":
    main()
