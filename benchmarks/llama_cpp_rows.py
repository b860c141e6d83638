"""llama.cpp beside gptrain in bench_generate: the same weights as GGUF (written by gptrain's
export_gguf), run through llama-cpp-python in the benchmark's process to compare its tokens, and
both programs timed as whole processes, the way a user runs them.

The whole-process figures count everything from the command's start to its exit: Python and
torch (or llama.cpp) start-up, reading the weights, preparing them and generating. Each
program also reports the speed of its generation alone (gptrain generate prints it on stderr;
the llama.cpp script below prints the same measure): the benchmark's Python API rows time the same.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

# The GGUF weights that stand beside each gptrain precision.
GGUF_FOR = {"fp32": "f32", "bf16": "f16", "int8": "q8_0"}

# llama.cpp as a program of its own: load the GGUF file, greedy tokens from a text prompt, exit.
LLAMA_SCRIPT = """
import sys, time
sys.path.insert(0, sys.argv[5])
from llama_cpp_rows import llama_model
path, prompt, new_tokens, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
llm = llama_model(path, threads)
ids = llm.tokenize(prompt.encode(), add_bos=False)
started = time.perf_counter()
count = 0
for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
    count += 1
    if count == new_tokens:
        break
seconds = time.perf_counter() - started
print(f"{count} tokens in {seconds:.2f} s: {count / seconds:.1f} tokens/s", file=sys.stderr)
"""
REPORTED = re.compile(r"(\d+) tokens in ([\d.]+) s: ([\d.]+) tokens/s")


def have_llama_cpp() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def llama_model(path: Path | str, threads: int):
    """llama.cpp's model as its command line runs it with --no-repack: on CPUs with AMX (Sapphire
    Rapids and later) the q8_0 weights it repacks for its AMX kernels crash the process on any prompt
    longer than one token (llama.cpp#20824, still open)."""
    import llama_cpp

    defaults = llama_cpp.llama_cpp.llama_model_default_params

    def without_repacking():
        params = defaults()
        params.use_extra_bufts = False
        return params

    llama_cpp.llama_cpp.llama_model_default_params = without_repacking
    try:
        return llama_cpp.Llama(model_path=str(path), n_ctx=1024, n_threads=threads, n_threads_batch=threads,
                               verbose=False)
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = defaults


def llama_runner(llm, new_tokens: int):
    """A function of a (1, tokens) prompt tensor returning prompt and greedy tokens, as gptrain's do."""
    import torch

    def run(idx):
        out = []
        for token in llm.generate(idx[0].tolist(), temp=0.0, top_k=1, reset=True):
            out.append(token)
            if len(out) == new_tokens:
                break
        return torch.cat([idx, torch.tensor([out])], dim=1)

    return run


def time_process(command: list[str], threads: int) -> tuple[float, float, int]:
    """(whole-process seconds, the tokens/s the program reports for its generation, tokens) of one run."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    found = REPORTED.search(result.stderr)
    if result.returncode != 0 or not found:
        raise SystemExit(f"{' '.join(command[:4])} ... failed: {result.stderr.strip()[-500:]}")
    return seconds, float(found.group(3)), int(found.group(1))


def process_commands(checkpoint: Path, gguf: dict[str, Path], precision: str, prompt: str, new_tokens: int,
                     threads: int) -> dict[str, list[str]]:
    """The gptrain generate and llama.cpp commands of one precision."""
    flags = {"fp32": [], "bf16": ["--precision", "bf16"], "int8": ["--quantize", "int8"]}[precision]
    commands = {"gptrain generate (process)": [
        sys.executable, "-m", "gptrain", "generate", "--model", str(checkpoint), "--prompt", prompt,
        "--max-new-tokens", str(new_tokens), "--temperature", "0", "--device", "cpu", "--no-stream", *flags]}
    commands[f"llama.cpp {GGUF_FOR[precision]} (process)"] = [
        sys.executable, "-c", LLAMA_SCRIPT, str(gguf[GGUF_FOR[precision]]), prompt, str(new_tokens), str(threads),
        str(Path(__file__).resolve().parent)]
    return commands
