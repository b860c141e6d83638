"""``gptrain generate``: continue a prompt with a checkpoint, printing the text as it comes."""

from __future__ import annotations

import argparse
import sys

from gptrain.cli.common import (
    add_command,
    add_device_flag,
    add_model_flags,
    add_quantize_flag,
    add_sampling_flags,
)


def add_parser(subparsers) -> None:
    p = add_command(
        subparsers, "generate", help="continue a prompt with a model",
        description="Continue a prompt with a model, printing the text as it is produced and the speed "
                    "(tokens/s) on stderr at the end. Temperature 0 is greedy; otherwise the next token is sampled "
                    "from the softmax of logits/temperature, restricted to the top-k tokens and then to the top-p "
                    "nucleus.",
    )
    add_model_flags(p, help="the model to continue the prompt with")
    p.add_argument("--prompt", default="Every effort moves you",
                   help="text to continue; to an instruction-tuned model, an instruction, which it answers")
    p.add_argument("--raw", action="store_true",
                   help="give an instruction-tuned model the prompt as it is, without its template, and do not "
                        "stop at end-of-text")
    add_sampling_flags(p, max_new_tokens=50, temperature=0.0, top_k=None)
    p.add_argument("--seed", type=int, default=123, help="random seed for sampling")
    add_device_flag(p)
    add_quantize_flag(p)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="the weights' precision while generating: fp32 is a checkpoint's own; bf16 reads half the "
                        "bytes a token, faster where generation is bound by memory bandwidth (CPUs at batch 1), "
                        "at bf16's rounding [fp32]")
    p.add_argument("--no-stream", action="store_true",
                   help="print the text once it is complete instead of token by token")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from gptrain.inference.continuation import continue_prompt

    continuation = continue_prompt(args.model, args.prompt, max_new_tokens=args.max_new_tokens,
                                   temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                                   device=args.device, n_heads=args.n_heads,
                                   quantize=args.quantize, precision=args.precision, raw=args.raw)
    if continuation.warning:
        print(f"gptrain: warning: {continuation.warning}", file=sys.stderr, flush=True)
    shown = args.prompt if continuation.template is None else ""  # an instruction model prints its response only
    if args.no_stream:
        print(shown + "".join(continuation))
    else:
        print(shown, end="", flush=True)
        for piece in continuation:
            print(piece, end="", flush=True)
        print()
    elapsed = continuation.seconds
    print(f"{continuation.tokens} tokens in {elapsed:.2f} s: {continuation.tokens / max(elapsed, 1e-9):.1f} tokens/s",
          file=sys.stderr)
    return 0
