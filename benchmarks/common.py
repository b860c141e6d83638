"""Shared by the benchmarks: where the lecture's corpus is, the header of a results file, the models
compared side by side, the machine."""

from __future__ import annotations

import datetime
import os
import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def provenance(root: Path = HERE.parent) -> str:
    """A results file's first line: when, at which commit of the checkout at ``root`` (``+changes`` when
    tracked files differ from it), and the command that printed it. Every benchmark prints it first.

    Results files do not count as changes: under ``make bench`` each script after the first would
    otherwise read the ones its predecessors rewrote as changes to the code."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changes = git("status", "--porcelain", "--untracked-files=no", "--", ":/", ":(top,exclude)benchmarks/results")
    changed = "+changes" if changes else ""
    script = os.path.relpath(Path(sys.argv[0]).resolve(), HERE.parent)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"# {when}, commit {commit}{changed}: {shlex.join(['python', script, *sys.argv[1:]])}"


def find_verdict() -> Path:
    """the-verdict.txt from $GPTRAIN_DATA_DIR or ../shared/data beside the checkout."""
    for folder in [*os.environ.get("GPTRAIN_DATA_DIR", "").split(os.pathsep), HERE.parent.parent / "shared" / "data"]:
        if folder and (Path(folder) / "the-verdict.txt").is_file():
            return Path(folder) / "the-verdict.txt"
    raise SystemExit("the-verdict.txt not found: set GPTRAIN_DATA_DIR to the folder that holds it")


def random_gpt2_124m(seed: int):
    """GPT-2 124M's shape (tied head, qkv bias, no dropout) with random weights from ``seed``, in eval
    mode: the model the generation benchmarks time."""
    import torch

    from gptrain import GPTModel, get_preset

    torch.manual_seed(seed)
    return GPTModel(get_preset("124M").replace(tie_embeddings=True, qkv_bias=True, drop_rate=0.0)).eval()


def book_model_from(model):
    """The book's GPTModel (llms_from_scratch.ch04) computing what ``model`` computes.

    The book has no tied head, so a tied model's head is copied into the book's own.
    """
    from llms_from_scratch.ch04 import GPTModel as BookGPTModel

    book = BookGPTModel(model.cfg.to_dict())
    names = {"weight": "scale", "bias": "shift"}
    state = {}
    for name, tensor in model.state_dict().items():
        parts = name.split(".")
        if parts[-2] in {"norm1", "norm2", "final_norm"}:
            parts[-1] = names[parts[-1]]
        state[".".join(parts)] = tensor.clone()
    missing, unexpected = book.load_state_dict(state, strict=False)
    assert not unexpected and all(key.endswith(".mask") for key in missing), (missing, unexpected)
    return book


def hf_model_from(model):
    """HF transformers' GPT2LMHeadModel holding ``model``'s weights (gptrain's own export mapping)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from gptrain.interop.export import hf_state_dict
    from gptrain.interop.hf_config import hf_config_dict

    hf = GPT2LMHeadModel(GPT2Config(**hf_config_dict(model.cfg)))
    missing, unexpected = hf.load_state_dict({k: v.clone() for k, v in hf_state_dict(model).items()}, strict=False)
    assert not unexpected and all(key == "lm_head.weight" for key in missing), (missing, unexpected)
    if model.cfg.tie_embeddings:
        hf.tie_weights()
    return hf


def machine_description(device) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__}"


def glibc_default_memory() -> None:
    """Undo gptrain's retain_freed_memory for the implementations that do not ship it.

    glibc's thresholds are dynamic; these are the values they settle at once large blocks have
    been freed (mmap 32 MiB, trim twice that), the most favourable default for the others. Then
    everything retained so far is handed back to the OS.
    """
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 << 20)
    libc.mallopt(m_trim_threshold, 64 << 20)
    libc.malloc_trim(0)
