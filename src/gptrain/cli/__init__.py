"""The ``gptrain`` command line: ``prepare``, ``train``, ``generate``, ``lab``, ``eval``, ``report``, ``serve``,
``tokenizer`` (train, info, compare), and GPT-2's ``download-gpt2``, ``export``, ``info`` and ``compare``.

Settings come from the defaults (the lecture's run), then a ``--config`` file (TOML or JSON),
then the flags. A bad input prints one line naming the problem and the fix and exits 2.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Sequence

from gptrain.core.errors import GptrainError


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error instead of the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" only where the help does not already name the default in [brackets] and
    there is one to show: not for None, nor for on/off switches."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.nargs == 0 or re.search(r"\[[^\]]*\]\s*$", text):
            return text
        return super()._get_help_string(action)


def _optional_float(text: str) -> float | None:
    return None if text.lower() in {"none", "off", "0"} else float(text)


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gptrain")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed, version unknown)"


DEVICE_HELP = "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps"


def add_train_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="pre-train a model (default: the lecture's run on the-verdict)",
        description="Pre-train a GPT model. With no flags it runs the lecture: the 124M architecture at "
                    "context 256 on the-verdict.txt for 10 epochs, AdamW lr 4e-4, weight decay 0.1, batch 2, "
                    "evaluating every 5 steps on 5 batches, seed 123.",
        formatter_class=DefaultsHelpFormatter,
    )
    s = argparse.SUPPRESS  # unset flags leave the config file's (or the default) value alone
    p.add_argument("--config", help="TOML or JSON file of settings (flag names with _ for -); flags override it")
    p.add_argument("--data", default=s, help="text or .jsonl file, folder of them, or a named dataset (the-verdict); "
                                              "for a large corpus, a folder made by gptrain prepare")
    p.add_argument("--text-field", default=s, help="the field of each .jsonl record that holds the text [text]")
    p.add_argument("--out", default=s, help="run directory for checkpoints, metrics.jsonl and loss.png "
                                             "[runs/verdict]")
    p.add_argument("--preset", default=s, help="model size: tiny, 124M, 355M, 774M, 1558M [124M]")
    p.add_argument("--context-length", type=int, default=s, help="tokens per training window [256]")
    p.add_argument("--dropout", type=float, default=s, help="override the preset's drop rate [0.1]")
    p.add_argument("--batch-size", type=int, default=s, help="sequences per micro-batch, per process [2]")
    p.add_argument("--grad-accum", type=int, default=s, help="micro-batches per optimizer step [1]")
    p.add_argument("--global-batch-tokens", type=int, default=s,
                   help="tokens per optimizer step across processes (sets --grad-accum)")
    p.add_argument("--epochs", type=int, default=s,
                   help="passes over the training data [10 when no other budget is given]")
    p.add_argument("--max-steps", type=int, default=s, help="stop after this many optimizer steps")
    p.add_argument("--max-tokens", type=int, default=s, help="stop after this many training tokens")
    p.add_argument("--lr", type=float, default=s, help="peak learning rate [4e-4]")
    p.add_argument("--min-lr", type=float, default=s, help="final learning rate of the cosine or wsd decay [0]")
    p.add_argument("--warmup-steps", type=int, default=s, help="linear learning-rate warmup [0]")
    p.add_argument("--cosine", action="store_true", default=s,
                   help="decay the learning rate along a cosine (= --schedule cosine)")
    p.add_argument("--lr-decay-steps", type=int, default=s, help="horizon of the cosine or wsd decay [the whole budget]")
    p.add_argument("--schedule", choices=["constant", "cosine", "wsd"], default=s,
                   help="learning rate after warmup: constant, cosine to --min-lr, or wsd (warmup-stable-decay: "
                        "constant, then a linear decay to --min-lr over the last --decay-fraction) [constant]")
    p.add_argument("--decay-fraction", type=float, default=s, help="share of the steps wsd decays over [0.2]")
    p.add_argument("--optimizer", choices=["adamw", "muon"], default=s,
                   help="adamw, or muon: Muon for the blocks' weight matrices, AdamW for embeddings, head, "
                        "norms and biases [adamw]")
    p.add_argument("--muon-lr", type=float, default=s,
                   help="Muon's learning rate (updates scaled to AdamW's RMS, so comparable to --lr) [--lr]")
    p.add_argument("--weight-decay", type=float, default=s, help="AdamW weight decay on matrices [0.1]")
    p.add_argument("--grad-clip", type=_optional_float, default=s, help="max gradient norm, 'none' disables [1.0]")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=s,
                   help="autocast precision; auto is bf16 on CUDA and on CPUs with native bf16, else fp32 "
                        "(fp16 uses a gradient scaler) [auto]")
    p.add_argument("--compile", action="store_true", default=s, help="compile the model with torch.compile")
    p.add_argument("--pad-vocab", action=argparse.BooleanOptionalAction, default=s,
                   help="pad the output head to a multiple of 64 rows, for GPU matrix units; outputs and "
                        "checkpoints are unchanged [on with CUDA]")
    p.add_argument("--eval-freq", type=int, default=s, help="evaluate every N steps and at the last; 0: never [5]")
    p.add_argument("--eval-iter", type=int, default=s, help="batches per evaluation [5]")
    p.add_argument("--eval-task", action="append", default=s, metavar="NAME:FILE",
                   help="score a benchmark during training (hellaswag, lambada or mc, and its jsonl file); repeatable")
    p.add_argument("--eval-task-every", type=int, default=s, help="score the --eval-task benchmarks every N steps "
                                                                  "[every evaluation]")
    p.add_argument("--eval-task-limit", type=int, default=s, help="score only each benchmark's first N examples [all]")
    p.add_argument("--early-stop-patience", type=int, default=s,
                   help="stop when validation loss has not improved for N evaluations (best/ keeps the best)")
    p.add_argument("--log-every", type=int, default=s, help="write a train record to metrics.jsonl every N steps [1]")
    p.add_argument("--logger", nargs="+", choices=["jsonl", "csv", "tensorboard"], default=s,
                   help="where metrics go besides metrics.jsonl, which is always written: csv (metrics.csv), "
                        "tensorboard (needs the tensorboard extra) [jsonl]")
    p.add_argument("--save-every", type=int, default=s, help="save a resumable checkpoint every N steps")
    p.add_argument("--keep-last", type=int, default=s, help="keep only the last K step checkpoints [all]")
    p.add_argument("--stride", type=int, default=s, help="tokens between window starts [context length]")
    p.add_argument("--train-ratio", type=float, default=s, help="share of the text used for training [0.9]")
    p.add_argument("--start-context", default=s, help="prompt of the sample printed after each epoch")
    p.add_argument("--sample-tokens", type=int, default=s, help="tokens in each sample [50]")
    p.add_argument("--seed", type=int, default=s, help="random seed [123]")
    p.add_argument("--device", default=s, help=DEVICE_HELP + " [auto]")
    p.add_argument("--init", metavar="SOURCE", default=s,
                   help="start a new run from these weights (transfer learning): a GPT-2 size (124M, gpt2-medium, "
                        "...), a Hugging Face folder or file, a book state dict, or a gptrain checkpoint or run "
                        "directory; the architecture is SOURCE's, --context-length may shorten its window")
    p.add_argument("--init-sha256", default=s, help="refuse --init weights whose file has another sha256")
    p.add_argument("--lora-rank", type=int, default=s,
                   help="train LoRA adapters of this rank on --init's frozen weights instead of all weights")
    p.add_argument("--lora-alpha", type=float, default=s, help="LoRA scale numerator: updates are alpha/rank * B A "
                                                               "[2 x rank]")
    p.add_argument("--lora-dropout", type=float, default=s, help="dropout on the LoRA adapters' input [0]")
    p.add_argument("--lora-targets", nargs="+", default=s, metavar="NAME",
                   help="layers that get adapters: q k v o (attention, or the group attn), fc proj (feed-forward, "
                        "or ff), or all [q k v o fc proj]")
    p.add_argument("--fsdp", action=argparse.BooleanOptionalAction, default=s,
                   help="under torchrun, shard weights, gradients and optimizer states across the processes "
                        "(FSDP2) instead of copying them to each [off]")
    p.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=s,
                   help="recompute each block's activations in backward instead of storing them: less "
                        "memory, about a third more compute [off]")
    p.add_argument("--price-per-hour", type=float, default=s,
                   help="price of one device-hour: the report and the last line give the run's cost")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest complete checkpoint (its settings, "
                        "updated by the flags given)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.set_defaults(handler=run_train)


def add_prepare_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare", help="tokenize a corpus into train.bin/val.bin shards for training",
        description="Tokenize text into uint16 token files (uint32 for vocabularies over 65,536) that "
                    "`gptrain train --data DIR` reads through a memory map. Inputs are files, folders and glob "
                    "patterns of .txt and .md files, JSON lines (.jsonl, .jsonl.gz, .jsonl.zst), .csv, .parquet and .arrow files, and folders written by "
                    "datasets' save_to_disk; each text file (or record) is a document, followed by "
                    "<|endoftext|>. The corpus is streamed and tokenized in parallel processes.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="file, folder or glob pattern")
    p.add_argument("--out", required=True, help="folder to write train.bin, val.bin and meta.json into")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of documents held out for validation")
    p.add_argument("--text-field", default="text", help="the field or column of records that holds the text")
    p.add_argument("--strict", action="store_true", help="stop at a bad record instead of skipping it")
    p.add_argument("--workers", type=int, default=None, help="tokenizer processes [all cores]")
    p.add_argument("--seed", type=int, default=123, help="seed of the document split")
    p.add_argument("--overwrite", action="store_true", help="replace a prepared folder already in --out")
    p.add_argument("--tokenizer", default="gpt2", metavar="DIR|gpt2",
                   help="GPT-2's BPE, or a folder written by gptrain tokenizer train")
    p.set_defaults(handler=run_prepare)


def add_tokenizer_parser(subparsers) -> None:
    group = subparsers.add_parser("tokenizer", help="train your own BPE tokenizer, inspect it, compare tokenizers")
    commands = group.add_subparsers(title="tokenizer commands", metavar="COMMAND", parser_class=Parser)
    p = commands.add_parser(
        "train", help="train a byte-level BPE tokenizer on a corpus",
        description="Train a byte-level BPE (GPT-2's design, with <|endoftext|>) on the corpus, streamed from disk, "
                    "and write DIR/tokenizer.json, which gptrain prepare --tokenizer and transformers' "
                    "AutoTokenizer.from_pretrained(DIR) read.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("corpus", nargs="+", metavar="CORPUS", help="file, folder or glob pattern, as gptrain prepare reads")
    p.add_argument("--vocab-size", type=int, required=True, help="tokens in the vocabulary, bytes and specials included")
    p.add_argument("--out", required=True, help="folder to write tokenizer.json into")
    p.add_argument("--pattern", choices=["gpt2", "gpt4"], default="gpt2",
                   help="pre-tokenizer split: GPT-2's regex or GPT-4's (cl100k)")
    p.add_argument("--text-field", default="text", help="the field or column of records that holds the text")
    p.add_argument("--overwrite", action="store_true", help="replace a tokenizer already in --out")
    p.set_defaults(handler=run_tokenizer_train)
    p = commands.add_parser("info", help="vocabulary size, special tokens and pattern of a trained tokenizer")
    p.add_argument("folder", metavar="DIR", help="a folder written by gptrain tokenizer train")
    p.set_defaults(handler=run_tokenizer_info)
    p = commands.add_parser("compare", help="vocabulary size and bytes per token of tokenizers on a corpus")
    p.add_argument("corpus", nargs="+", metavar="CORPUS", help="file, folder or glob pattern")
    p.add_argument("--tokenizer", action="append", dest="tokenizers", metavar="DIR|gpt2",
                   help="a trained tokenizer's folder or gpt2; repeat to compare several [gpt2]")
    p.add_argument("--text-field", default="text", help="the field or column of records that holds the text")
    p.set_defaults(handler=run_tokenizer_compare)


def add_model_source_flags(p: argparse.ArgumentParser) -> None:
    """--checkpoint or --pretrained, exactly one."""
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="checkpoint directory, or a run directory (uses its final/)")
    source.add_argument("--pretrained", metavar="SOURCE",
                        help="GPT-2 weights: a size (124M, 355M, ...) or a Hugging Face folder or file")


def add_sampling_flags(p: argparse.ArgumentParser, *, max_new_tokens: int, temperature: float,
                       top_k: int | None) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="tokens to add")
    p.add_argument("--temperature", type=float, default=temperature, help="0 is greedy; higher is more random")
    p.add_argument("--top-k", type=int, default=top_k, help="sample only among the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None,
                   help="sample only among the most likely tokens that hold this share of the probability")


def add_generate_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "generate", help="continue a prompt with a trained checkpoint",
        description="Continue a prompt with a checkpoint, printing the text as it is produced and the speed "
                    "(tokens/s) on stderr at the end. Temperature 0 is greedy; otherwise the next token is sampled "
                    "from the softmax of logits/temperature, restricted to the top-k tokens and then to the top-p "
                    "nucleus.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint directory, or a run directory (uses its final/)")
    p.add_argument("--prompt", default="Every effort moves you", help="text to continue")
    add_sampling_flags(p, max_new_tokens=50, temperature=0.0, top_k=None)
    p.add_argument("--seed", type=int, default=123, help="random seed for sampling")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--no-stream", action="store_true",
                   help="print the text once it is complete instead of token by token")
    p.set_defaults(handler=run_generate)


SOURCE_HELP = ("a gptrain checkpoint or run directory, a Hugging Face GPT-2 folder or file, a state dict in the "
               "book's naming (.pth), or a GPT-2 size (124M, 355M, 774M, 1558M)")


def add_download_gpt2_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "download-gpt2", help="download OpenAI's pretrained GPT-2 weights into the cache",
        description="Download config.json and model.safetensors of OpenAI's GPT-2 from the Hugging Face hub "
                    "(or $GPTRAIN_HF_ENDPOINT) into the cache, resuming a partial download and checking size "
                    "and sha256.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--size", default="124M", help="124M, 355M, 774M or 1558M (or gpt2, gpt2-medium, gpt2-large, gpt2-xl)")
    p.set_defaults(handler=run_download_gpt2)


def add_export_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write a model as a Hugging Face GPT-2 folder",
        description="Write config.json, model.safetensors and the GPT-2 tokenizer files, which "
                    "transformers' GPT2LMHeadModel.from_pretrained and AutoTokenizer.from_pretrained read.",
    )
    p.add_argument("--checkpoint", required=True, help=SOURCE_HELP)
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--n-heads", type=int, default=None, help="attention heads, for weights files that do not say")
    p.set_defaults(handler=run_export)


def add_info_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "info", help="summarise a checkpoint or GPT-2 weights",
        description="Load a model and print its embeddings, blocks, parameter counts and config.",
    )
    p.add_argument("path", metavar="PATH", help=SOURCE_HELP)
    p.add_argument("--n-heads", type=int, default=None, help="attention heads, for weights files that do not say")
    p.add_argument("--verify", action="store_true",
                   help="check the size and sha256 of every file of the checkpoint, or of every checkpoint of a "
                        "run directory, against the manifest written with it")
    p.set_defaults(handler=run_info)


def add_compare_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="continue a prompt with a random, a trained and a pretrained model",
        description="The lecture's before/after activity: the continuations of a randomly initialised model, "
                    "a trained checkpoint and pretrained weights, with the same prompt, seed and sampling.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--checkpoint", default=None, help="a trained model: " + SOURCE_HELP)
    p.add_argument("--pretrained", default="124M", help="pretrained weights, same forms as --checkpoint; 'none' to skip")
    add_sampling_flags(p, max_new_tokens=30, temperature=1.0, top_k=40)
    p.add_argument("--seed", type=int, default=123, help="seed of the random model and of sampling")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--n-heads", type=int, default=None, help="attention heads, for weights files that do not say")
    p.set_defaults(handler=run_compare)


def add_eval_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="measure a model's cross-entropy, perplexity and bits per byte on a text",
        description="Score every token of a text with a model, in sliding windows: windows of --context-length "
                    "tokens start every --stride tokens and each scores its last --stride predictions (the first "
                    "window all of them), so every token is scored once with at least context - stride + 1 tokens "
                    "of left context. --stride equal to the context gives disjoint windows; a smaller one gives "
                    "more context and a lower loss for more compute.",
    )
    add_model_source_flags(p)
    p.add_argument("--data", required=True,
                   help="text or .jsonl file, folder of them, a named dataset, or a folder made by gptrain prepare")
    p.add_argument("--text-field", default="text", help="the field of each .jsonl record that holds the text")
    p.add_argument("--split", choices=["all", "train", "val"], default=None,
                   help="a prepared folder's split [val]; for text, all of it [all] or training's character split")
    p.add_argument("--train-ratio", type=float, default=0.9, help="with --split on text: share of the training part [0.9]")
    p.add_argument("--context-length", type=int, default=None, help="tokens per window [the model's context]")
    p.add_argument("--stride", type=int, default=None, help="tokens between window starts [the context length]")
    p.add_argument("--batch-size", type=int, default=8, help="windows (with --task: examples) per forward pass [8]")
    p.add_argument("--device", default="auto", help=DEVICE_HELP + " [auto]")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="autocast precision; auto is bf16 on CUDA and on CPUs with native bf16, else fp32, as in "
                        "train [auto]")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.add_argument("--task", default=None, metavar="TASK",
                   help="score a benchmark instead of a text: hellaswag, lambada or mc (multiple choice); --data is "
                        "its jsonl file (see docs/tasks.md)")
    p.add_argument("--limit", type=int, default=None, help="with --task: score only the first N examples")
    p.set_defaults(handler=run_eval)


def add_report_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="write report.html for a run, or one overlaying several runs",
        description="Write a self-contained HTML page (plots embedded, nothing fetched from the network) from "
                    "a run directory's metrics.jsonl and config.json: losses against steps and tokens, learning "
                    "rate, tokens/s, the train-val gap, the samples, final metrics and the full config. With one "
                    "run it goes to RUN_DIR/report.html; several runs are overlaid on the same axes.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directory written by gptrain train")
    p.add_argument("--out", default=None, help="HTML file to write [RUN_DIR/report.html for one run, "
                                               "./report.html for several]")
    p.set_defaults(handler=run_report)


def add_serve_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="serve a model over the OpenAI completions API, with a playground page",
        description="Serve a model over HTTP: the OpenAI completions API (GET /v1/models, POST /v1/completions, "
                    "streamed or not), GET /health, and a playground page at /. Concurrent requests share forward "
                    "passes (continuous batching). Ctrl-C or SIGTERM stops it; running requests get "
                    "--shutdown-timeout seconds to finish.",
    )
    add_model_source_flags(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 is every interface [127.0.0.1]")
    p.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one [8000]")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on the API [$GPTRAIN_API_KEY, else none]")
    p.add_argument("--model-name", default=None, help="the model id clients name [the checkpoint's folder name]")
    p.add_argument("--max-batch", type=int, default=16, help="sequences generated together [16]")
    p.add_argument("--max-queue", type=int, default=64, help="sequences that may wait for a slot; 503 beyond [64]")
    # --max-tokens, the old name, is train's token budget there: kept here as an alias.
    p.add_argument("--max-request-tokens", "--max-tokens", dest="max_request_tokens", type=int, default=None,
                   help="cap on a request's max_tokens (alias: --max-tokens) [the model's context]")
    p.add_argument("--max-n", type=int, default=8, help="cap on a request's n [8]")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body in bytes; 413 beyond [1 MiB]")
    p.add_argument("--shutdown-timeout", type=float, default=5.0,
                   help="seconds running requests get to finish after Ctrl-C or SIGTERM [5]")
    p.add_argument("--device", default="auto", help=DEVICE_HELP + " [auto]")
    p.set_defaults(handler=run_serve)


def add_lab_parser(subparsers) -> None:
    from gptrain.lecture import lab as lab

    p = subparsers.add_parser(
        "lab", help="the lecture's sampling exercises: temperature, multinomial, loss, sweep",
        description="The lecture's hands-on exercises on sampling and loss, with its numbers as defaults.",
    )
    labs = p.add_subparsers(title="labs", metavar="LAB", parser_class=Parser)
    defaults = DefaultsHelpFormatter

    t = labs.add_parser("temperature", help="softmax of logits at several temperatures", formatter_class=defaults,
                        description="Print softmax(logits / T) for each temperature T, as a table.")
    t.add_argument("--logits", type=float, nargs="+", default=list(lab.LECTURE_LOGITS), help="the logits")
    t.add_argument("--temperatures", type=float, nargs="+", default=list(lab.LECTURE_TEMPERATURES),
                   help="temperatures (0 puts all the probability on the largest logit)")
    t.add_argument("--names", nargs="+", default=None, help="a name for each logit [token 0, token 1, ...]")
    t.set_defaults(handler=run_lab_temperature)

    m = labs.add_parser("multinomial", help="draw samples and compare observed with expected frequencies",
                        formatter_class=defaults,
                        description="Draw --samples outcomes from a distribution with torch.multinomial and print "
                                    "how often each came up against its probability. The default is the lecture's "
                                    "weather: sunny 0.5, rainy 0.3, cloudy 0.2.")
    m.add_argument("--probs", nargs="+", default=None, metavar="P",
                   help="the distribution, by spaces or commas [0.5 0.3 0.2]")
    m.add_argument("--names", nargs="+", default=None, help="a name for each outcome [sunny rainy cloudy]")
    m.add_argument("--samples", type=int, default=1000, help="number of draws")
    m.add_argument("--seed", type=int, default=123, help="random seed (the same seed gives the same counts)")
    m.set_defaults(handler=run_lab_multinomial)

    lo = labs.add_parser("loss", help="cross-entropy -ln P(target) per row and its batch average",
                         description="Cross-entropy of rows of probabilities (or logits) against a target each. "
                                     "The default is the lecture's exercise, 'The cat sat on the ___': "
                                     "P(mat)=0.6, P(floor)=0.2, P(chair)=0.1, P(table)=0.1, and the discussion "
                                     "question P(mat)=0.1. Example: gptrain lab loss --probs 0.6,0.2,0.1,0.1 "
                                     "--probs 0.3,0.3,0.2,0.2 --target 0")
    rows = lo.add_mutually_exclusive_group()
    rows.add_argument("--probs", action="append", nargs="+", metavar="P",
                      help="a row of probabilities, by commas or spaces (repeat for a batch)")
    rows.add_argument("--logits", action="append", nargs="+", metavar="L",
                      help="a row of logits, by commas or spaces (repeat for a batch)")
    lo.add_argument("--target", action="append", help="index or name of the correct token: one per row, or one for all")
    lo.add_argument("--names", nargs="+", default=None, help="a name for each column [token 0, token 1, ...]")
    lo.set_defaults(handler=run_lab_loss)

    w = labs.add_parser("sweep", help="one prompt under a grid of temperatures and top-k values",
                        formatter_class=defaults,
                        description="Continue one prompt with a model under each TEMPERATURE/TOP_K cell of a grid "
                                    "(the lecture's four combinations by default), each cell with the same seed.")
    add_model_source_flags(w)
    w.add_argument("--prompt", default=lab.SWEEP_PROMPT, help="text to continue")
    w.add_argument("--grid", nargs="+", default=[f"{t:g}/{k}" for t, k in lab.SWEEP_GRID],
                   metavar="T/K", help="TEMPERATURE/TOP_K cells (TOP_K may be none)")
    w.add_argument("--max-new-tokens", type=int, default=30, help="tokens per cell")
    w.add_argument("--seed", type=int, default=123, help="random seed of every cell")
    w.add_argument("--device", default="auto", help=DEVICE_HELP)
    w.set_defaults(handler=run_lab_sweep)
    p.set_defaults(handler=lambda args: _print_help(p))


def add_estimate_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "estimate", help="what a training run costs: parameters, FLOPs, time, money, energy, memory",
        description="Estimate a pre-training run before starting it: parameter counts, FLOPs per token, step "
                    "and run, wall time, device-hours, cost and energy on a table of GPUs (or this CPU), memory "
                    "per device and the largest micro-batch that fits, and the compute-optimal token count "
                    "(20 per parameter). See docs/economics.md.",
        formatter_class=DefaultsHelpFormatter,
    )
    model = p.add_mutually_exclusive_group()
    model.add_argument("--preset", default="124M", help="model size: tiny, 124M, 355M, 774M, 1558M")
    model.add_argument("--checkpoint", help="the model of a checkpoint, a run directory or a Hugging Face GPT-2 folder")
    for name, meaning in (("emb-dim", "width"), ("n-layers", "blocks"), ("n-heads", "attention heads"),
                          ("vocab-size", "vocabulary"), ("context-length", "tokens per training window")):
        p.add_argument(f"--{name}", type=int, default=None, help=f"override the model's {meaning}")
    p.add_argument("--dropout", type=float, default=None, help="override the model's drop rate")
    p.add_argument("--tie-embeddings", action=argparse.BooleanOptionalAction, default=None,
                   help="share the output head with the token embedding (OpenAI's GPT-2) [the model's]")
    p.add_argument("--qkv-bias", action=argparse.BooleanOptionalAction, default=None,
                   help="biases in the query/key/value products [the model's]")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per micro-batch, per device")
    p.add_argument("--grad-accum", type=int, default=None, help="micro-batches per optimizer step [1]")
    p.add_argument("--global-batch-tokens", type=int, default=None, help="tokens per optimizer step (sets --grad-accum)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--tokens", type=float, default=None, help="training tokens (e.g. 10e9)")
    budget.add_argument("--epochs", type=int, default=None, help="passes over --data")
    budget.add_argument("--chinchilla", action="store_true", help="the compute-optimal budget: 20 tokens per parameter")
    p.add_argument("--data", default=None, help="with --epochs: the corpus, as gptrain train takes it")
    p.add_argument("--gpu", default="H100", help="cpu (this machine) or one of H200, H100, A100-80GB, A100-40GB, "
                                                 "L40S, A10, L4, T4, RTX-4090, RTX-3090")
    p.add_argument("--gpus", type=int, default=1, help="devices")
    p.add_argument("--distribution", choices=["single", "ddp", "fsdp"], default=None,
                   help="how the devices share the work [ddp with several devices]")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="auto: bf16 where the hardware has it, as gptrain train picks")
    p.add_argument("--mfu", type=float, default=None, help="fraction of the peak FLOP/s achieved [0.4]")
    p.add_argument("--measure", action="store_true", help="time a few real training steps here instead of --mfu")
    p.add_argument("--price-per-hour", type=float, default=None, help="price of one device-hour")
    p.add_argument("--watts", type=float, default=None, help="power of one device [its board power]")
    p.add_argument("--eval-freq", type=int, default=None, help="count a run's evaluations every N steps")
    p.add_argument("--eval-iter", type=int, default=5, help="batches per evaluation, with --eval-freq")
    p.add_argument("--json", action="store_true", help="print the estimate as one JSON object")
    p.set_defaults(handler=run_estimate)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="gptrain", description="Pre-train GPT-2 style language models from scratch.")
    parser.add_argument("--version", action="version", version=f"gptrain {package_version()}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=Parser)
    add_prepare_parser(subparsers)
    add_train_parser(subparsers)
    add_generate_parser(subparsers)
    add_download_gpt2_parser(subparsers)
    add_export_parser(subparsers)
    add_info_parser(subparsers)
    add_compare_parser(subparsers)
    add_eval_parser(subparsers)
    add_report_parser(subparsers)
    add_lab_parser(subparsers)
    add_serve_parser(subparsers)
    add_estimate_parser(subparsers)
    add_tokenizer_parser(subparsers)
    return parser


def run_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gptrain.training.config import TrainConfig, read_config_file
    from gptrain.training.loop import train

    flags = {k: v for k, v in vars(args).items() if k not in {"config", "handler", "overwrite", "resume"}}
    settings = {}
    if args.resume and "init" in flags:
        raise GptrainError("--init starts a new run and --resume continues one: drop --init to resume (the run "
                           "remembers its SOURCE), or drop --resume and choose a new --out")
    if args.resume:
        # A resumed run keeps its saved settings; --config and flags change only what they name.
        saved = Path(flags.get("out", TrainConfig.out)) / "config.json"
        if not saved.is_file():
            raise GptrainError(f"{saved.parent} holds no run to resume (no config.json): check --out")
        settings = read_config_file(saved)
    if args.config:
        settings.update(read_config_file(args.config))
    settings.update(flags)
    if settings.get("init") and not args.resume:
        # The architecture and window are SOURCE's unless the user names them.
        settings.setdefault("preset", None)
        settings.setdefault("context_length", None)
    cfg = TrainConfig.from_dict(settings, source=args.config or "settings")
    train(cfg, overwrite=args.overwrite, resume=args.resume)
    return 0  # also after SIGTERM/SIGINT: the run saved a checkpoint to resume from


def run_prepare(args: argparse.Namespace) -> int:
    from gptrain.data.prepare import prepare

    if args.workers is not None and args.workers < 1:
        raise GptrainError(f"--workers must be at least 1, not {args.workers}")
    meta = prepare(args.inputs, args.out, val_fraction=args.val_fraction, text_field=args.text_field,
                   strict=args.strict, workers=args.workers, seed=args.seed, overwrite=args.overwrite,
                   tokenizer=args.tokenizer)
    documents = meta["documents"]
    print(f"Wrote {args.out}: {meta['train_tokens']:,} train tokens ({documents['train']:,} documents), "
          f"{meta['val_tokens']:,} val tokens ({documents['val']:,} documents, split by {meta['split']}) "
          f"at {meta['tokens_per_second']:,} tokens/s")
    if meta["skipped_lines"]:
        print(f"Skipped {meta['skipped_lines']:,} bad record(s), the first: {meta['first_skipped']}",
              file=sys.stderr)
    return 0


def run_generate(args: argparse.Namespace) -> int:
    import time

    import torch

    from gptrain.core.runtime import resolve_device
    from gptrain.data.tokenizer import get_tokenizer, text_to_token_ids
    from gptrain.inference.generate import check_sampling_args, stream_text, stream_tokens, window_warning
    from gptrain.store.checkpoint import load_checkpoint

    check_sampling_args(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    device = resolve_device(args.device)
    model = load_checkpoint(args.checkpoint, device=device)
    tokenizer = get_tokenizer()
    idx = text_to_token_ids(args.prompt, tokenizer).to(device)
    if idx.shape[1] == 0:
        raise GptrainError("the prompt is empty: give --prompt some text")
    warning = window_warning(idx.shape[1], args.max_new_tokens, model.cfg.context_length)
    if warning:
        print(f"gptrain: warning: {warning}", file=sys.stderr, flush=True)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    started = time.perf_counter()
    tokens = stream_tokens(model, idx, args.max_new_tokens, model.cfg.context_length, temperature=args.temperature,
                           top_k=args.top_k, top_p=args.top_p, generator=generator)
    count = 0

    def counted(ids):
        nonlocal count
        for token in ids:
            count += 1
            yield token

    if args.no_stream:
        print(args.prompt + "".join(stream_text(tokenizer, counted(tokens))))
    else:
        print(args.prompt, end="", flush=True)
        for piece in stream_text(tokenizer, counted(tokens)):
            print(piece, end="", flush=True)
        print()
    elapsed = time.perf_counter() - started
    print(f"{count} tokens in {elapsed:.2f} s: {count / max(elapsed, 1e-9):.1f} tokens/s", file=sys.stderr)
    return 0


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_lab_temperature(args: argparse.Namespace) -> int:
    from gptrain.lecture.lab import temperature_table

    print(temperature_table(args.logits, args.temperatures, args.names))
    return 0


def run_lab_multinomial(args: argparse.Namespace) -> int:
    from gptrain.lecture.lab import WEATHER_NAMES, WEATHER_PROBS, multinomial_table

    probs = _parse_row(" ".join(args.probs), "--probs") if args.probs is not None else WEATHER_PROBS
    names = args.names if args.names is not None or args.probs is not None else WEATHER_NAMES
    print(multinomial_table(probs, names, args.samples, args.seed))
    return 0


def _parse_row(text: str, flag: str) -> list[float]:
    try:
        return [float(value) for value in text.replace(" ", ",").split(",") if value]
    except ValueError:
        raise GptrainError(f"{flag} {text!r} is not a comma-separated list of numbers, nor a space-separated one "
                           "(e.g. 0.6,0.2,0.1,0.1)") from None


def run_lab_loss(args: argparse.Namespace) -> int:
    from gptrain.lecture.lab import MAT_NAMES, MAT_PROBS, loss_table

    if args.probs is None and args.logits is None:
        rows, names, targets = MAT_PROBS, args.names or MAT_NAMES, args.target or ["mat"]
    else:
        rows = [_parse_row(" ".join(row), "--probs" if args.probs else "--logits") for row in args.probs or args.logits]
        names, targets = args.names, args.target
        if not targets:
            raise GptrainError("give --target: the index (or --names name) of the correct token, "
                               "one per row or one for all")
    print(loss_table(rows, targets, names, from_logits=args.logits is not None))
    return 0


def run_lab_sweep(args: argparse.Namespace) -> int:
    from gptrain.core.runtime import resolve_device
    from gptrain.data.tokenizer import get_tokenizer
    from gptrain.lecture.lab import parse_grid, sweep, sweep_table
    from gptrain.store.checkpoint import load_checkpoint

    if args.max_new_tokens < 0:
        raise GptrainError(f"--max-new-tokens must not be negative, not {args.max_new_tokens}")
    grid = parse_grid(args.grid)
    device = resolve_device(args.device)
    if args.pretrained is not None:
        from gptrain.interop.pretrained import load_gpt2

        model = load_gpt2(args.pretrained, device=device)
    else:
        model = load_checkpoint(args.checkpoint, device=device)
    cells = sweep(model, get_tokenizer(), args.prompt, grid, args.max_new_tokens, args.seed)
    print(sweep_table(cells, args.prompt))
    return 0


def run_download_gpt2(args: argparse.Namespace) -> int:
    from gptrain.interop.pretrained import download_gpt2

    print(download_gpt2(args.size))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from gptrain.interop.pretrained import export_hf

    out = export_hf(args.checkpoint, args.out, overwrite=args.overwrite, n_heads=args.n_heads)
    print(f"wrote {out}: load it with transformers.GPT2LMHeadModel.from_pretrained and AutoTokenizer.from_pretrained")
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
    from gptrain.interop.pretrained import inspect_loaded_model, load_gpt2

    if args.verify:
        return run_verify(args.path)
    model = load_gpt2(args.path, n_heads=args.n_heads)
    print(f"Source: {args.path}")
    inspect_loaded_model(model)
    return 0


def run_compare(args: argparse.Namespace) -> int:
    import shutil
    import textwrap

    from gptrain.core.runtime import resolve_device
    from gptrain.inference.generate import check_sampling_args
    from gptrain.interop.pretrained import download_gpt2, gpt2_size
    from gptrain.lecture.compare import compare_continuations

    check_sampling_args(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    pretrained = None if args.pretrained.lower() == "none" else args.pretrained
    if pretrained is not None and gpt2_size(pretrained) and not os.path.exists(pretrained):
        # --pretrained 124M is the default: one without network or cache must learn how to skip it.
        try:
            download_gpt2(pretrained)
        except GptrainError as exc:
            raise GptrainError(f"{exc}; or pass --pretrained none to compare without GPT-2 (or --pretrained FOLDER "
                               "for a local copy)") from None
    rows = compare_continuations(args.prompt, checkpoint=args.checkpoint, pretrained=pretrained,
                                 max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                                 top_p=args.top_p, seed=args.seed, device=resolve_device(args.device),
                                 n_heads=args.n_heads)
    top_p = "" if args.top_p is None else f", top-p {args.top_p}"
    print(f"Prompt: {args.prompt!r} (seed {args.seed}, temperature {args.temperature}, top-k {args.top_k}{top_p}, "
          f"up to {args.max_new_tokens} new tokens)\n")
    label_width = max(len(label) for label, _ in rows)
    text_width = max(30, shutil.get_terminal_size().columns - label_width - 3)
    for label, text in rows:
        lines = textwrap.wrap(" ".join(text.split()), text_width, break_long_words=False, break_on_hyphens=False) or [""]
        print(f"{label:<{label_width}} | {lines[0]}")
        for line in lines[1:]:
            print(f"{'':<{label_width}} | {line}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import json

    from gptrain.core.runtime import resolve_device, resolve_precision
    from gptrain.evaluation.heldout import (
        check_eval_tokens,
        check_window_args,
        evaluate_tokens,
        load_eval_model,
        load_eval_tokens,
    )

    if args.batch_size < 1:
        raise GptrainError(f"--batch-size must be at least 1, not {args.batch_size}")
    if args.task is not None or args.limit is not None:
        return run_eval_task(args)
    # The data is checked before the model is loaded: a bad or empty text costs no waiting.
    tokens, num_bytes, label = load_eval_tokens(args.data, args.split, args.train_ratio, args.text_field)
    check_eval_tokens(len(tokens))
    device = resolve_device(args.device)
    model = load_eval_model(args.checkpoint, args.pretrained, device)
    context = model.cfg.context_length if args.context_length is None else args.context_length
    check_window_args(context, context if args.stride is None else args.stride, model.cfg.context_length)
    result = evaluate_tokens(model, tokens, context_length=args.context_length, stride=args.stride,
                             batch_size=args.batch_size, precision=resolve_precision(args.precision, device),
                             num_bytes=num_bytes)
    if args.json:
        print(json.dumps({"model": args.checkpoint or args.pretrained, "data": label, **result.to_dict()}))
        return 0
    print(f"{label}: {result.tokens:,} tokens, {result.bytes:,} bytes; {result.windows:,} window(s) of "
          f"{result.context_length} tokens, stride {result.stride}")
    print(f"loss {result.loss:.4f} nats/token   perplexity {result.perplexity:,.2f}   "
          f"{result.bits_per_byte:.4f} bits/byte   ({result.scored_tokens:,} tokens scored in "
          f"{result.seconds:.1f} s, {result.tokens_per_s:,.0f} tokens/s)")
    return 0


def run_eval_task(args: argparse.Namespace) -> int:
    import json

    from gptrain.core.runtime import resolve_device, resolve_precision
    from gptrain.evaluation.heldout import load_eval_model
    from gptrain.evaluation.tasks import check_task_name, evaluate_task, format_result, read_task_file

    if args.task is None:
        raise GptrainError("--limit counts the examples of a --task: give --task hellaswag, lambada or mc")
    for flag in ("split", "context_length", "stride"):
        if getattr(args, flag) is not None:
            raise GptrainError(f"--{flag.replace('_', '-')} is for scoring a text and does not apply to --task: "
                               "leave it out")
    # The task file is checked before the model is loaded: a bad line costs no waiting.
    examples = read_task_file(check_task_name(args.task), args.data, args.limit)
    device = resolve_device(args.device)
    model = load_eval_model(args.checkpoint, args.pretrained, device)
    result = evaluate_task(model, args.task, examples, batch_size=args.batch_size,
                           precision=resolve_precision(args.precision, device), source=args.data)
    if args.json:
        print(json.dumps({"model": args.checkpoint or args.pretrained, **result.to_dict()}))
    else:
        print(format_result(result))
    return 0


def run_report(args: argparse.Namespace) -> int:
    from gptrain.reporting.report import write_report

    path = write_report(args.runs, args.out)
    print(f"Wrote {path}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gptrain.core.runtime import resolve_device
    from gptrain.evaluation.heldout import load_eval_model
    from gptrain.inference.serve import ServeConfig, serve

    source = args.checkpoint or args.pretrained
    name = args.model_name or (Path(source).resolve().name if args.checkpoint else f"gpt2-{Path(source).name}")
    cfg = ServeConfig(host=args.host, port=args.port, api_key=args.api_key or os.environ.get("GPTRAIN_API_KEY"),
                      model_name=name, max_batch=args.max_batch, max_queue=args.max_queue,
                      max_tokens=args.max_request_tokens, max_n=args.max_n, max_body_bytes=args.max_body_bytes,
                      shutdown_timeout=args.shutdown_timeout)
    device = resolve_device(args.device)
    serve(load_eval_model(args.checkpoint, args.pretrained, device), cfg)
    return 0


def run_tokenizer_train(args: argparse.Namespace) -> int:
    from gptrain.data.bpe_training import train_tokenizer

    tokenizer = train_tokenizer(args.corpus, args.out, args.vocab_size, pattern=args.pattern,
                                text_field=args.text_field, overwrite=args.overwrite)
    print(f"Wrote {args.out}/tokenizer.json: {tokenizer.n_vocab:,} tokens ({args.pattern} split)")
    return 0


def run_tokenizer_info(args: argparse.Namespace) -> int:
    from gptrain.data.bpe_training import tokenizer_info

    info = tokenizer_info(args.folder)
    print(f"vocabulary: {info.vocab_size:,} tokens\nspecial tokens: {', '.join(info.special_tokens)}\n"
          f"pattern: {info.pattern}\nsha256: {info.sha256}")
    return 0


def run_tokenizer_compare(args: argparse.Namespace) -> int:
    from gptrain.data.bpe_training import compare_tokenizers, format_comparison

    print(format_comparison(compare_tokenizers(args.corpus, args.tokenizers or ["gpt2"], args.text_field)))
    return 0


def run_estimate(args: argparse.Namespace) -> int:
    import json

    from gptrain.planning.estimate import estimate_from_args, format_estimate

    result = estimate_from_args(args)
    print(json.dumps(result.to_dict()) if args.json else format_estimate(result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except GptrainError as exc:
        print(f"gptrain: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader of our output went away (gptrain generate | head): stop quietly, as cat does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        # A full disk, a read-only folder, a path through a file ...: from any command, new ones too.
        from gptrain.core.oserrors import describe_os_error, wrapped_os_error

        os_error = wrapped_os_error(exc)
        if os_error is None:
            raise  # a bug: keep its traceback
        print(f"gptrain: error: {describe_os_error(os_error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gptrain: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
