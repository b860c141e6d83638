"""``gptrain eval``: a model's loss, perplexity and bits per byte on a text, or its score on a benchmark."""

from __future__ import annotations

import argparse
import json

from gptrain.cli.common import (
    add_device_flag,
    add_model_flags,
    add_precision_flag,
    add_quantize_flag,
    add_text_field_flag,
)
from gptrain.core.errors import GptrainError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="measure a model's cross-entropy, perplexity and bits per byte on a text",
        description="Score every token of a text with a model, in sliding windows: windows of --context-length "
                    "tokens start every --stride tokens and each scores its last --stride predictions (the first "
                    "window all of them), so every token is scored once with at least context - stride + 1 tokens "
                    "of left context. --stride equal to the context gives disjoint windows; a smaller one gives "
                    "more context and a lower loss for more compute.",
    )
    add_model_flags(p, help="the model to score")
    p.add_argument("--data", required=True,
                   help="text or .jsonl file, folder of them, a named dataset, or a folder made by gptrain prepare")
    add_text_field_flag(p, "the field of each .jsonl record that holds the text")
    p.add_argument("--split", choices=["all", "train", "val"], default=None,
                   help="a prepared folder's split [val]; for text, all of it [all] or training's character split")
    p.add_argument("--train-ratio", type=float, default=0.9, help="with --split on text: share of the training part [0.9]")
    p.add_argument("--context-length", type=int, default=None, help="tokens per window [the model's context]")
    p.add_argument("--stride", type=int, default=None, help="tokens between window starts [the context length]")
    p.add_argument("--batch-size", type=int, default=8, help="windows (with --task: examples) per forward pass [8]")
    add_device_flag(p, name_default=True)
    add_precision_flag(p, "autocast precision; auto is bf16 on CUDA and on CPUs with native bf16, else fp32, as "
                          "in train [auto]")
    add_quantize_flag(p)
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.add_argument("--task", default=None, metavar="TASK",
                   help="score a benchmark instead of a text: hellaswag, lambada or mc (multiple choice); --data is "
                        "its jsonl file (see docs/tasks.md)")
    p.add_argument("--limit", type=int, default=None, help="with --task: score only the first N examples")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from gptrain.evaluation.scoring import score_text

    if args.batch_size < 1:
        raise GptrainError(f"--batch-size must be at least 1, not {args.batch_size}")
    if args.task is not None or args.limit is not None:
        return run_task(args)
    label, result = score_text(args.data, model=args.model, n_heads=args.n_heads, split=args.split,
                               train_ratio=args.train_ratio, text_field=args.text_field,
                               context_length=args.context_length, stride=args.stride, batch_size=args.batch_size,
                               device=args.device, precision=args.precision, quantize=args.quantize)
    if args.json:
        print(json.dumps({"model": args.model, "data": label, **result.to_dict()}))
        return 0
    print(f"{label}: {result.tokens:,} tokens, {result.bytes:,} bytes; {result.windows:,} window(s) of "
          f"{result.context_length} tokens, stride {result.stride}")
    print(f"loss {result.loss:.4f} nats/token   perplexity {result.perplexity:,.2f}   "
          f"{result.bits_per_byte:.4f} bits/byte   ({result.scored_tokens:,} tokens scored in "
          f"{result.seconds:.1f} s, {result.tokens_per_s:,.0f} tokens/s)")
    return 0


def run_task(args: argparse.Namespace) -> int:
    from gptrain.evaluation.scoring import score_task
    from gptrain.evaluation.tasks import format_result

    if args.task is None:
        raise GptrainError("--limit counts the examples of a --task: give --task hellaswag, lambada or mc")
    for flag in ("split", "context_length", "stride"):
        if getattr(args, flag) is not None:
            raise GptrainError(f"--{flag.replace('_', '-')} is for scoring a text and does not apply to --task: "
                               "leave it out")
    result = score_task(args.task, args.data, model=args.model, n_heads=args.n_heads,
                        limit=args.limit, batch_size=args.batch_size, device=args.device, precision=args.precision,
                        quantize=args.quantize)
    if args.json:
        print(json.dumps({"model": args.model, **result.to_dict()}))
    else:
        print(format_result(result))
    return 0
