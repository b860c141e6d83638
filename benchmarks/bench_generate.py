"""Generation speed: gptrain against the book's generate_text_simple, HF GPT2LMHeadModel.generate and llama.cpp.

The same random GPT-2 124M weights in every model (ours is built with tied
embeddings and q/k/v biases, which makes it GPT-2 exactly, and its weights are copied into
the book's GPTModel and HF's GPT2LMHeadModel), a 4-token prompt, 200 new greedy tokens, on
CPU. Each setting runs in a fresh process of its own, so one setting's thread pools and heap do not
slow the next. Timed runs alternate (each round runs every implementation once, in turn), so drifts
in machine load hit all of them alike; the figure is the median over rounds. The greedy tokens of
all implementations are compared (from the warm-up runs). At batch 1 it also times one vector times
every weight matrix and nothing else, in that setting's precision: each step reads all the
weights once, so this is the bandwidth ceiling that no implementation of one-token-per-step
decoding can pass (whether bf16's half-size weights raise it depends on the CPU's bf16 kernels).

int8-b1 is gptrain.quantize's int8 weights. At batch 1, llama.cpp (llama-cpp-python, when
installed) runs the same weights exported by gptrain.export_gguf: f32 beside fp32, f16 beside
bf16, q8_0 beside int8, with as many threads as torch: its greedy tokens are compared in the
setting's process after the timing, but it is timed in processes of its own, as `gptrain generate`
is (see llama_cpp_rows.py), from start to exit, on a 4-token text prompt, each program also reporting the
speed of its generation alone. The last table gives gptrain's time per token over llama.cpp's for
each precision and path (the goal is at most 1.5x): gptrain's Python API against llama.cpp's
generation, `gptrain generate`'s generation against llama.cpp's, and the whole processes.

The book's code is timed as published (fp32, batch 1: the README's headline ratio) and with the
one-line speedup its users add (the model in bf16: the bf16-b1 row, its strongest). The script
exits with status 1 when the book's or HF's greedy tokens differ from gptrain's (llama.cpp's
q8_0 rounds differently, so its agreement is printed, not required).

    python benchmarks/bench_generate.py                 # fp32 batch 1 (with the book), then bf16, int8 and batch 8
    python benchmarks/bench_generate.py --threads 1 --rounds 5
    python benchmarks/bench_generate.py --settings fp32-b1 int8-b1 --new-tokens 200   # beside llama.cpp only
    python benchmarks/bench_generate.py --settings fp32-b1 --book-everywhere --skip-llama-cpp
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_int8 import ceiling as int8_ceiling  # noqa: E402
from common import book_model_from, hf_model_from, machine_description, provenance, random_gpt2_124m  # noqa: E402
from llama_cpp_rows import (  # noqa: E402
    GGUF_FOR,
    have_llama_cpp,
    llama_model,
    llama_runner,
    process_commands,
    time_process,
)

from gptrain import export_gguf, quantize, save_checkpoint  # noqa: E402
from gptrain.inference.generate import generate  # noqa: E402

BOOK_SETTINGS = ("fp32-b1", "bf16-b1")  # as published, and in bf16: the speed-up one line gives it
SETTINGS = {"fp32-b1": ("fp32", 1), "bf16-b1": ("bf16", 1), "int8-b1": ("int8", 1),
            "fp32-b8": ("fp32", 8), "bf16-b8": ("bf16", 8)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.float32}
PROCESS_PROMPT = "Every effort moves you"  # 4 GPT-2 tokens, as the in-process prompts


def runners(ours, book, hf, new_tokens: int):
    """The book's and HF's generation of ``new_tokens`` greedy tokens, as functions of a prompt tensor."""
    from llms_from_scratch.ch04 import generate_text_simple as book_generate

    context = ours.cfg.context_length

    def run_book(idx):
        with torch.no_grad():
            return book_generate(book, idx, new_tokens, context)

    def run_hf(idx):
        with torch.inference_mode():
            return hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=new_tokens,
                               do_sample=False, eos_token_id=None, pad_token_id=0)

    return {"book generate_text_simple": run_book, "HF GPT2LMHeadModel.generate": run_hf}


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
    generation uses), and nothing else (no attention, norms or Python), through the faster of
    PyTorch's two kernels for it (the matrix product F.linear takes, the matrix-vector torch.mv).
    At batch 1 a step reads every weight once, so memory bandwidth sets this bound."""
    matrices = [m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.Linear)]
    vectors = {w.shape[1]: torch.randn(1, w.shape[1], dtype=w.dtype) for w in matrices}
    kernels = {"F.linear": lambda w: torch.nn.functional.linear(vectors[w.shape[1]], w),
               "torch.mv": lambda w: torch.mv(w, vectors[w.shape[1]][0])}

    def speed(kernel) -> float:
        def one_token():
            for w in matrices:
                kernel(w)

        one_token()
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            for _ in range(20):
                one_token()
            times.append((time.perf_counter() - started) / 20)
        return 1 / statistics.median(times)

    return (setting, "weights alone (bandwidth ceiling)", max(speed(kernel) for kernel in kernels.values()), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--prompt-tokens", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each implementation (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads [torch's default]")
    parser.add_argument("--book-everywhere", action="store_true",
                        help="time the book in every setting, not only fp32 batch 1 (slow)")
    parser.add_argument("--skip-llama-cpp", action="store_true", help="no llama.cpp rows")
    parser.add_argument("--skip-processes", action="store_true", help="no whole-process rows")
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()
    print(provenance(), flush=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    with_llama = not args.skip_llama_cpp and have_llama_cpp()

    base = random_gpt2_124m(args.seed)
    cfg = base.cfg
    prompts = torch.randint(0, cfg.vocab_size, (8, args.prompt_tokens), generator=torch.Generator().manual_seed(1))
    print(f"{machine_description(torch.device('cpu'))}, {threads} torch threads")
    print(f"GPT-2 124M with random weights, {args.prompt_tokens}-token prompts, {args.new_tokens} new greedy "
          f"tokens per row, median of {args.rounds} alternating rounds")
    if not with_llama and not args.skip_llama_cpp:
        print("llama-cpp-python is not installed: no llama.cpp rows (pip install llama-cpp-python)")
    print()

    with torch.no_grad():
        torch.testing.assert_close(base(prompts[:1]), hf_model_from(base).eval()(prompts[:1]).logits,
                                   atol=1e-3, rtol=1e-4)
    with tempfile.TemporaryDirectory() as tmp:
        b1 = [SETTINGS[s][0] for s in args.settings if SETTINGS[s][1] == 1]
        gguf = {GGUF_FOR[p]: export_gguf(base, Path(tmp) / f"{GGUF_FOR[p]}.gguf", dtype=GGUF_FOR[p])
                for p in b1} if with_llama else {}
        rows, speeds_at, disagreements = in_process_rows(args, prompts, gguf, threads)
        if not args.skip_processes and with_llama:
            checkpoint = save_checkpoint(base, Path(tmp) / "gpt2-124M-random")
            rows += process_rows(args, checkpoint, gguf, b1, threads, speeds_at)

    print("\n| setting | implementation | tokens/s | gptrain is |\n|---|---|---:|---:|")
    for setting, name, speed, ratio in rows:
        shown = "" if name == "gptrain generate" or ratio is None else f"{ratio:.2f}x"
        print(f"| {setting} | {name} | {speed:.1f} | {shown} |")
    if with_llama:
        print_llama_ratios(speeds_at)
    print("\nHeadline (README): fp32-b1 against the book as published; the book's strongest row is bf16-b1.")
    if disagreements:
        raise SystemExit(f"{disagreements} implementation(s) generated other greedy tokens than gptrain: "
                         "the speeds above do not compare the same computation")


def in_process_rows(args, prompts, gguf: dict, threads: int) -> tuple[list, dict, int]:
    """The timed rows of every setting, each setting in a fresh process of its own: run one after
    another in one process, a setting's thread pools and heap slowed the next (int8 after bf16 and
    llama.cpp: 50 tokens/s against 73 alone). Also each setting's tokens/s by implementation, and how
    many of the book's and HF's runs disagreed with gptrain's greedy tokens."""
    rows, speeds_at, disagreements = [], {}, 0
    spawn = multiprocessing.get_context("spawn")
    for setting in args.settings:
        with spawn.Pool(1) as pool:
            setting_rows, speeds, disagreed = pool.apply(one_setting, (args, setting, prompts, gguf, threads))
        rows += setting_rows
        speeds_at[setting] = speeds
        disagreements += disagreed
    return rows, speeds_at, disagreements


def one_setting(args, setting: str, prompts, gguf: dict, threads: int) -> tuple[list, dict, int]:
    torch.set_num_threads(threads)
    precision, batch = SETTINGS[setting]
    ours = random_gpt2_124m(args.seed).to(DTYPES[precision]).eval()  # as a user has it: no layout call
    run = {}
    if precision == "int8":
        ours = quantize(ours)
    else:
        hf = hf_model_from(ours).eval().to(DTYPES[precision])
        book = book_model_from(ours).eval().to(DTYPES[precision])
        run = runners(ours, book, hf, args.new_tokens)
        if not (setting in BOOK_SETTINGS or args.book_everywhere):
            del run["book generate_text_simple"]
    run["gptrain generate"] = lambda idx, model=ours: generate(model, idx, args.new_tokens, model.cfg.context_length)
    idx = prompts[:batch]
    outputs = {name: fn(idx) for name, fn in run.items()}  # also the warm-up
    times = {name: [] for name in run}
    for _ in range(args.rounds):
        for name, fn in run.items():
            started = time.perf_counter()
            fn(idx)
            times[name].append(time.perf_counter() - started)
    speeds = {name: batch * args.new_tokens / statistics.median(t) for name, t in times.items()}
    rows = [(setting, name, speed, speeds["gptrain generate"] / speed) for name, speed in speeds.items()]
    if batch == 1:
        rows.append((setting, "weights alone (bandwidth ceiling)", int8_ceiling(ours, args.rounds), None)
                    if precision == "int8" else weight_streaming_ceiling(ours, setting, args.rounds))
    if batch == 1 and gguf:
        # After the timing: llama.cpp's worker threads spin on after each call and slow torch
        # beside them. It is timed in processes of its own (process_rows).
        kind = GGUF_FOR[precision]
        llama = llama_model(gguf[kind], threads)
        outputs[f"llama.cpp {kind}"] = llama_runner(llama, args.new_tokens)(idx)
        llama.close()
    disagreements = 0
    reference = outputs["gptrain generate"]
    for name, out in outputs.items():
        if name != "gptrain generate":
            agreement = first_difference(reference, out)
            print(f"{setting}: greedy tokens of gptrain and {name}: {agreement}", flush=True)
            disagreements += agreement != "identical" and not name.startswith("llama.cpp")
    return rows, speeds, disagreements


def process_rows(args, checkpoint: Path, gguf: dict, precisions: list[str], threads: int, speeds_at: dict) -> list:
    """Whole-process rows: each command run ``rounds`` times, alternating; median wall time and reported speed."""
    rows = []
    for precision in precisions:
        commands = process_commands(checkpoint, gguf, precision, PROCESS_PROMPT, args.new_tokens, threads)
        runs = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, command in commands.items():
                runs[name].append(time_process(command, threads))
        setting = f"{precision}-b1"
        for name, results in runs.items():
            wall = statistics.median(r[0] for r in results)
            tokens = results[0][2]
            reported = statistics.median(r[1] for r in results)
            speeds_at[setting][f"{name} whole"] = tokens / wall
            speeds_at[setting][f"{name} reported"] = reported
            rows.append((setting, f"{name}: {tokens} tokens, start to exit {wall:.2f} s", tokens / wall, None))
            rows.append((setting, f"{name}: generation as the program reports it", reported, None))
    return rows


def print_llama_ratios(speeds_at: dict) -> None:
    """gptrain's time per token over llama.cpp's, per precision and path (goal: at most 1.5x)."""
    if not any(key.endswith("(process) reported") for speeds in speeds_at.values() for key in speeds):
        return  # llama.cpp is timed only in processes of its own
    print("\n| precision (gptrain / llama.cpp) | Python API vs llama-cpp-python | gptrain generate vs llama.cpp, "
          "generation as reported | whole process, start to exit |\n|---|---:|---:|---:|")
    for setting, speeds in speeds_at.items():
        precision = SETTINGS[setting][0]
        llama = f"llama.cpp {GGUF_FOR[precision]}"
        if f"{llama} (process) reported" not in speeds:
            continue
        api = speeds[f"{llama} (process) reported"] / speeds["gptrain generate"]
        reported, whole = (speeds[f"{llama} (process) {kind}"] / speeds[f"gptrain generate (process) {kind}"]
                           for kind in ("reported", "whole"))
        print(f"| {precision} / {GGUF_FOR[precision]} | {api:.2f}x | {reported:.2f}x | {whole:.2f}x |")


if __name__ == "__main__":
    main()
