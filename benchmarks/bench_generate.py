"""Generation speed: gptrain against the book's generate_text_simple and HF GPT2LMHeadModel.generate.

One process, the same random GPT-2 124M weights in every model (ours is built with tied
embeddings and q/k/v biases, which makes it GPT-2 exactly, and its weights are copied into
the book's GPTModel and HF's GPT2LMHeadModel), a 4-token prompt, 200 new greedy tokens, on
CPU. Timed runs alternate (each round runs every implementation once, in turn), so drifts in
machine load hit all of them alike; the figure is the median over rounds. Before timing, the
greedy tokens of all implementations are compared. At batch 1 it also times one vector times
every weight matrix and nothing else, in that setting's precision: each step reads all the
weights once, so this is the bandwidth ceiling that no implementation of one-token-per-step
decoding can pass (whether bf16's half-size weights raise it depends on the CPU's bf16 kernels).

The book's code is timed as published (fp32, batch 1: the README's headline ratio) and with the
one-line speedup its users add (the model in bf16: the bf16-b1 row, its strongest). The script
exits with status 1 when any implementation's greedy tokens differ from gptrain's.

    python benchmarks/bench_generate.py                 # fp32 and bf16 batch 1 (with the book), then batch 8
    python benchmarks/bench_generate.py --threads 1 --rounds 5
    python benchmarks/bench_generate.py --settings fp32-b1 --book-everywhere
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    book_model_from,
    hf_model_from,
    machine_description,
    provenance,
    random_gpt2_124m,
)

from gptrain.inference.generate import generate

BOOK_SETTINGS = ("fp32-b1", "bf16-b1")  # as published, and in bf16: the speed-up one line gives it
SETTINGS = {"fp32-b1": (torch.float32, 1), "bf16-b1": (torch.bfloat16, 1),
            "fp32-b8": (torch.float32, 8), "bf16-b8": (torch.bfloat16, 8)}


def runners(ours, book, hf, new_tokens: int):
    from llms_from_scratch.ch04 import generate_text_simple as book_generate

    context = ours.cfg.context_length

    def run_book(idx):
        with torch.no_grad():
            return book_generate(book, idx, new_tokens, context)

    def run_hf(idx):
        with torch.inference_mode():
            return hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=new_tokens,
                               do_sample=False, eos_token_id=None, pad_token_id=0)

    def run_ours(idx):
        return generate(ours, idx, new_tokens, context)

    return {"book generate_text_simple": run_book, "HF GPT2LMHeadModel.generate": run_hf,
            "gptrain generate": run_ours}


def first_difference(a: torch.Tensor, b: torch.Tensor) -> str:
    if a.shape == b.shape and torch.equal(a, b):
        return "identical"
    width = min(a.shape[1], b.shape[1])
    differs = (a[:, :width] != b[:, :width]).any(dim=0).nonzero()
    where = differs[0].item() if len(differs) else width
    return f"differ from position {where}"


def weight_streaming_ceiling(model, setting: str, rounds: int) -> tuple:
    """The fastest a batch-1 decoding step could be: one vector times every weight matrix of
    ``model``, a model that has generated (so its weights are in the precision and layout
    generation uses), and nothing else (no attention, norms or Python). At batch 1 a step reads
    every weight once, so memory bandwidth sets this bound."""
    matrices = [m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.Linear)]
    vectors = {w.shape[1]: torch.randn(1, w.shape[1], dtype=w.dtype) for w in matrices}

    def one_token():
        for w in matrices:
            torch.nn.functional.linear(vectors[w.shape[1]], w)

    one_token()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(20):
            one_token()
        times.append((time.perf_counter() - started) / 20)
    return (setting, "weights alone (bandwidth ceiling)", 1 / statistics.median(times), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--prompt-tokens", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each implementation (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads [torch's default]")
    parser.add_argument("--book-everywhere", action="store_true",
                        help="time the book in every setting, not only fp32 batch 1 (slow)")
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()
    print(provenance(), flush=True)
    if args.threads:
        torch.set_num_threads(args.threads)

    base = random_gpt2_124m(args.seed)
    cfg = base.cfg
    prompts = torch.randint(0, cfg.vocab_size, (8, args.prompt_tokens), generator=torch.Generator().manual_seed(1))
    print(f"{machine_description(torch.device('cpu'))}, {torch.get_num_threads()} torch threads")
    print(f"GPT-2 124M with random weights, {args.prompt_tokens}-token prompts, {args.new_tokens} new greedy "
          f"tokens per row, median of {args.rounds} alternating rounds\n")

    with torch.no_grad():
        torch.testing.assert_close(base(prompts[:1]), hf_model_from(base).eval()(prompts[:1]).logits,
                                   atol=1e-3, rtol=1e-4)
    rows, disagreements = [], 0
    for setting in args.settings:
        dtype, batch = SETTINGS[setting]
        ours = copy.deepcopy(base).to(dtype).eval()  # as a user has it: no layout call
        hf = hf_model_from(base).eval().to(dtype)
        book = book_model_from(base).eval().to(dtype)
        run = runners(ours, book, hf, args.new_tokens)
        if not (setting in BOOK_SETTINGS or args.book_everywhere):
            del run["book generate_text_simple"]
        idx = prompts[:batch]
        outputs = {name: fn(idx) for name, fn in run.items()}  # also the warm-up
        reference = outputs["gptrain generate"]
        for name, out in outputs.items():
            if name != "gptrain generate":
                agreement = first_difference(reference, out)
                print(f"{setting}: greedy tokens of gptrain and {name.split()[0]}: {agreement}")
                disagreements += agreement != "identical"
        times = {name: [] for name in run}
        for _ in range(args.rounds):
            for name, fn in run.items():
                started = time.perf_counter()
                fn(idx)
                times[name].append(time.perf_counter() - started)
        speeds = {name: batch * args.new_tokens / statistics.median(t) for name, t in times.items()}
        for name, speed in speeds.items():
            rows.append((setting, name, speed, speeds["gptrain generate"] / speed))
        if batch == 1:
            rows.append(weight_streaming_ceiling(ours, setting, args.rounds))
        del ours, hf, book

    print("\n| setting | implementation | tokens/s | gptrain is |\n|---|---|---:|---:|")
    for setting, name, speed, ratio in rows:
        shown = "" if name == "gptrain generate" or ratio is None else f"{ratio:.2f}x"
        print(f"| {setting} | {name} | {speed:.1f} | {shown} |")
    print("\nHeadline (README): fp32-b1 against the book as published; the book's strongest row is bf16-b1.")
    if disagreements:
        raise SystemExit(f"{disagreements} implementation(s) generated other greedy tokens than gptrain: "
                         "the speeds above do not compare the same computation")


if __name__ == "__main__":
    main()
