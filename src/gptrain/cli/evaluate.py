"""``gptrain eval``: a model's loss, perplexity and bits per byte on a text, or its score on a benchmark."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gptrain.cli.common import (
    add_command,
    add_device_flag,
    add_model_flags,
    add_precision_flag,
    add_quantize_flag,
    add_text_field_flag,
)
from gptrain.core.errors import GptrainError


def add_parser(subparsers) -> None:
    p = add_command(
        subparsers, "eval", help="measure a model's cross-entropy, perplexity and bits per byte on a text",
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
    p.add_argument("--limit", type=int, default=None, help="with --task or instruction records: score only the "
                                                           "first N examples")
    p.add_argument("--judge", metavar="URL", default=None,
                   help="with instruction records: score each greedy answer 0-100 with this OpenAI-compatible chat "
                        "endpoint (e.g. Ollama's http://localhost:11434/v1), as the book's chapter 7 does")
    p.add_argument("--judge-model", default="llama3", help="the model the --judge endpoint runs [llama3]")
    p.add_argument("--max-new-tokens", type=int, default=256,
                   help="with instruction records: longest greedy answer, in tokens [256]")
    p.add_argument("--answers", metavar="FILE", default=None,
                   help="with instruction records: write them to this .jsonl file with each greedy answer as "
                        "model_response")
    p.set_defaults(handler=run)


INSTRUCTION_ONLY = ("judge", "answers")


def run(args: argparse.Namespace) -> int:
    from gptrain.data.instructions import is_instruction_file
    from gptrain.evaluation.scoring import score_text

    if args.batch_size < 1:
        raise GptrainError(f"--batch-size must be at least 1, not {args.batch_size}")
    if args.task is None and is_instruction_file(args.data, args.text_field):
        return run_instructions(args)
    for flag in INSTRUCTION_ONLY:
        if getattr(args, flag) is not None:
            raise GptrainError(f"--{flag} scores the answers to instruction records, and {args.data} is not a .json "
                               "or .jsonl file of them: leave it out")
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


def run_instructions(args: argparse.Namespace) -> int:
    from gptrain.core.files import write_text_atomic
    from gptrain.data.instructions import read_instruction_file
    from gptrain.inference.answers import answer_records

    for flag in ("split", "context_length", "stride"):
        if getattr(args, flag) is not None:
            raise GptrainError(f"--{flag.replace('_', '-')} is for scoring a text and does not apply to instruction "
                               "records: leave it out")
    if args.max_new_tokens < 1:
        raise GptrainError(f"--max-new-tokens must be at least 1, not {args.max_new_tokens}")
    result = answer_records(args.data, model=args.model, n_heads=args.n_heads, limit=args.limit,
                            batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, device=args.device,
                            precision=args.precision, judge=args.judge, judge_model=args.judge_model)
    if args.answers:
        records = read_instruction_file(args.data)[:args.limit]
        write_text_atomic(Path(args.answers), "".join(
            json.dumps({**record, "model_response": answer}, ensure_ascii=False) + "\n"
            for record, answer in zip(records, result.answers)))
    if args.json:
        print(json.dumps({"model": args.model, "data": args.data, **result.to_dict()}))
        return 0
    print(f"{args.data}: {result.records} instruction record(s)")
    print(f"reply loss {result.loss:.4f} nats/token   exact match {100 * result.exact_match:.1f}% "
          f"({round(result.exact_match * result.records)}/{result.records}) in {result.seconds:.1f} s")
    if result.judge_scores is not None:
        mean = "no score" if result.judge_mean is None else f"{result.judge_mean:.2f}"
        print(f"judge {args.judge_model} at {args.judge}: mean score {mean} (0-100) over {len(result.judge_scores)} "
              f"answer(s)" + (f"; {result.judge_unparsed} reply(ies) were not a number" if result.judge_unparsed
                              else ""))
    return 0
