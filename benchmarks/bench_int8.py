"""Int8 weight-only decoding against float32: GPT-2 124M at batch 1 through gptrain.generate.

One process, random GPT-2 124M weights (tied head, q/k/v biases), a 4-token prompt and greedy
tokens, on CPU. The float32 model and its ``gptrain.quantize`` copy alternate in each timed
round; the figure is the median. A decoding step at batch 1 reads every weight once, so each
precision also gets its bandwidth ceiling: one vector times every weight matrix and nothing
else (float32 through F.linear, int8 through the same ``_weight_int8pack_mm`` kernel the model
uses, with bfloat16 activations on CPU as the model's). The int8 ceiling is what a quarter of
the bytes could buy; the gap to it is the rest of a step (attention, norms, sampling, Python),
which int8 does not shrink.

    python benchmarks/bench_int8.py
    python benchmarks/bench_int8.py --new-tokens 50 --rounds 5 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description, random_gpt2_124m  # noqa: E402

from gptrain import generate, quantize  # noqa: E402
from gptrain.model.quantize import Int8Linear, weight_bytes  # noqa: E402


def median_seconds(fn, rounds: int, repeat: int = 1) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(repeat):
            fn()
        times.append((time.perf_counter() - started) / repeat)
    return statistics.median(times)


def ceiling(model, rounds: int) -> float:
    """Steps per second of one vector times every weight matrix of ``model`` (float32 or int8)."""
    products = []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            x = torch.randn(1, module.in_features)
            products.append(lambda x=x, w=module.weight.detach(): F.linear(x, w))
        elif isinstance(module, Int8Linear):  # in the activations' dtype the model's products take
            x = torch.randn(1, module.in_features, dtype=module.compute_dtype)
            scale = module.scale.to(module.compute_dtype)
            products.append(lambda x=x, m=module, s=scale: torch.ops.aten._weight_int8pack_mm(x, m.weight_int8, s))

    def one_token():
        for product in products:
            product()

    one_token()
    return 1 / median_seconds(one_token, rounds, repeat=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each model (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads [torch's default]")
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    fp32 = random_gpt2_124m(args.seed)
    cfg = fp32.cfg
    int8 = quantize(copy.deepcopy(fp32))
    prompt = torch.randint(0, cfg.vocab_size, (1, 4), generator=torch.Generator().manual_seed(1))
    print(f"{machine_description(torch.device('cpu'))}, {torch.get_num_threads()} torch threads")
    print(f"GPT-2 124M with random weights, 4-token prompt, {args.new_tokens} new greedy tokens, batch 1, "
          f"median of {args.rounds} alternating rounds\n")

    models = {"float32": fp32, "int8": int8}
    outputs = {name: generate(model, prompt, args.new_tokens, cfg.context_length) for name, model in models.items()}
    same = (outputs["float32"] == outputs["int8"]).float().mean().item()
    print(f"greedy tokens of int8 equal to float32's: {same:.0%}")
    times = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            started = time.perf_counter()
            generate(model, prompt, args.new_tokens, cfg.context_length)
            times[name].append(time.perf_counter() - started)
    speeds = {name: args.new_tokens / statistics.median(t) for name, t in times.items()}
    print("\n| weights | MB | generate tokens/s | weights alone (bandwidth ceiling) tokens/s |\n|---|---:|---:|---:|")
    for name, model in models.items():
        print(f"| {name} | {weight_bytes(model) / 1e6:.0f} | {speeds[name]:.1f} | {ceiling(model, args.rounds):.1f} |")
    print(f"\nint8 generates {speeds['int8'] / speeds['float32']:.2f}x as fast as float32")


if __name__ == "__main__":
    main()
