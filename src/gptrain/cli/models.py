"""GPT-2's weights and a model's files: ``gptrain download-gpt2``, ``export``, ``info`` (and ``info
--verify``), and ``compare``, which sets a random, a trained and a pretrained model side by side."""

from __future__ import annotations

import argparse
import shutil

from gptrain.cli.common import (
    SOURCE_HELP,
    add_command,
    add_device_flag,
    add_model_flags,
    add_quantize_flag,
    add_sampling_flags,
)
from gptrain.core.errors import GptrainError


def add_download_gpt2_parser(subparsers) -> None:
    p = add_command(
        subparsers, "download-gpt2", help="download OpenAI's pretrained GPT-2 weights into the cache",
        description="Download config.json and model.safetensors of OpenAI's GPT-2 from the Hugging Face hub "
                    "(or $GPTRAIN_HF_ENDPOINT) into the cache, resuming a partial download and checking size "
                    "and sha256.",
    )
    p.add_argument("--size", default="124M", help="124M, 355M, 774M or 1558M (or gpt2, gpt2-medium, gpt2-large, gpt2-xl)")
    p.set_defaults(handler=run_download_gpt2)


def add_export_parser(subparsers) -> None:
    p = add_command(
        subparsers, "export", help="write a model as a Hugging Face GPT-2 folder or a GGUF file for llama.cpp",
        description="--format hf (the default) writes config.json, model.safetensors and the GPT-2 tokenizer "
                    "files, which transformers' GPT2LMHeadModel.from_pretrained and AutoTokenizer.from_pretrained "
                    "read; --format gguf writes one GGUF file (llama.cpp's GPT-2 graph and tokenizer) that "
                    "llama.cpp, Ollama and LM Studio run.",
    )
    add_model_flags(p, help="the model to export")
    p.add_argument("--out", required=True, help="folder (hf) or file (gguf) to write")
    p.add_argument("--format", choices=("hf", "gguf"), default="hf", help="what to write: hf or gguf")
    p.add_argument("--dtype", choices=("f32", "f16", "q8_0"), default=None,
                   help="the GGUF file's weights: f32, f16 or q8_0 (8-bit blocks); gguf only [f32]")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(handler=run_export)


def add_info_parser(subparsers) -> None:
    p = add_command(
        subparsers, "info", help="summarise a checkpoint or GPT-2 weights",
        description="Load a model and print its embeddings, blocks, parameter counts and config.",
    )
    p.add_argument("path", metavar="SOURCE", nargs="?", default=None, help="the same as --model SOURCE")
    add_model_flags(p, required=False, help="the model to summarise")
    p.add_argument("--verify", action="store_true",
                   help="check the size and sha256 of every file of the checkpoint, or of every checkpoint of a "
                        "run directory, against the manifest written with it")
    p.set_defaults(handler=run_info)


def add_compare_parser(subparsers) -> None:
    p = add_command(
        subparsers, "compare", help="continue a prompt with a random, a trained and a pretrained model",
        description="The lecture's before/after activity: the continuations of a randomly initialised model, "
                    "a trained checkpoint and pretrained weights, with the same prompt, seed and sampling.",
    )
    p.add_argument("--prompt", required=True, help="text to continue")
    # --pretrained named the second model before --baseline did: it stays its alias.
    add_model_flags(p, required=False, help="a trained model", aliases=("--checkpoint",))
    p.add_argument("--baseline", "--pretrained", dest="baseline", default="124M", metavar="SOURCE",
                   help=f"the second model: {SOURCE_HELP}; 'none' to skip (--pretrained is an alias)")
    add_sampling_flags(p, max_new_tokens=30, temperature=1.0, top_k=40)
    p.add_argument("--seed", type=int, default=123, help="seed of the random model and of sampling")
    add_device_flag(p)
    add_quantize_flag(p)
    p.set_defaults(handler=run_compare)


def add_parser(subparsers) -> None:
    for add in (add_download_gpt2_parser, add_export_parser, add_info_parser, add_compare_parser):
        add(subparsers)


def run_download_gpt2(args: argparse.Namespace) -> int:
    from gptrain.interop.pretrained import download_gpt2

    print(download_gpt2(args.size))
    return 0


def run_export(args: argparse.Namespace) -> int:
    if args.format == "gguf":
        return run_export_gguf(args)
    if args.dtype is not None:
        raise GptrainError("--dtype chooses the weights of a GGUF file: add --format gguf, or drop --dtype")
    from gptrain.interop.pretrained import export_hf

    out = export_hf(args.model, args.out, overwrite=args.overwrite, n_heads=args.n_heads)
    print(f"wrote {out}: load it with transformers.GPT2LMHeadModel.from_pretrained and AutoTokenizer.from_pretrained")
    return 0


def run_export_gguf(args: argparse.Namespace) -> int:
    from gptrain.interop.gguf import export_gguf

    out = export_gguf(args.model, args.out, dtype=args.dtype or "f32", overwrite=args.overwrite, n_heads=args.n_heads)
    print(f"wrote {out}: run it with llama.cpp, e.g. llama-cli -m {out} -p \"Every effort moves you\"")
    return 0


def run_verify(path: str) -> int:
    from gptrain.store.integrity import verify_path

    results = verify_path(path)
    for folder, problems in results:
        print(f"{folder}: " + ("ok" if not problems else f"{len(problems)} problem(s)"))
        for problem in problems:
            print(f"  {problem}")
    damaged = [str(folder) for folder, problems in results if problems]
    if damaged:
        raise GptrainError(f"{len(damaged)} of {len(results)} checkpoint(s) failed verification ({', '.join(damaged)}): "
                           "resume or load from one that passed")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from gptrain.interop.pretrained import inspect_loaded_model
    from gptrain.interop.sources import resolve_model

    if (args.path is None) == (args.model is None):
        raise GptrainError("give the model once: gptrain info SOURCE, or gptrain info --model SOURCE")
    source = args.model or args.path
    if args.verify:
        return run_verify(source)
    resolved = resolve_model(source, n_heads=args.n_heads, allow_classifier=True)
    print(f"Source: {resolved.origin}")
    if resolved.labels is not None:
        print(f"Classifier of {len(resolved.labels)} labels: {', '.join(resolved.labels)} (texts padded to "
              f"{resolved.max_length} tokens)")
    inspect_loaded_model(resolved.model)
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from gptrain.lecture.compare import side_by_side

    print(side_by_side(args.prompt, checkpoint=args.model,
                       pretrained=None if args.baseline.lower() == "none" else args.baseline,
                       max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                       top_p=args.top_p, seed=args.seed, device=args.device, n_heads=args.n_heads,
                       quantize=args.quantize, width=shutil.get_terminal_size().columns))
    return 0
