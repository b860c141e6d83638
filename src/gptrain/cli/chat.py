"""``gptrain chat``: a conversation with an instruction-tuned model in the terminal."""

from __future__ import annotations

import argparse
import sys

from gptrain.cli.common import (
    DefaultsHelpFormatter,
    add_device_flag,
    add_model_flags,
    add_quantize_flag,
    add_sampling_flags,
)

COMMANDS_HELP = "an empty line is skipped, /reset forgets the conversation, /exit or Ctrl-D ends it"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "chat", help="chat with an instruction-tuned model in the terminal",
        description="Chat with a model fine-tuned by `gptrain finetune instruct`: each line you type is a user "
                    "turn, formatted with the template the model was taught, and the reply streams back until "
                    f"the model ends it. Lines may also come from a pipe; {COMMANDS_HELP}.",
        formatter_class=DefaultsHelpFormatter,
    )
    add_model_flags(p, help="the instruction-tuned model to chat with")
    p.add_argument("--system", default=None, help="a system text that opens the conversation")
    add_sampling_flags(p, max_new_tokens=256, temperature=0.0, top_k=None)
    p.add_argument("--seed", type=int, default=123, help="random seed for sampling")
    add_device_flag(p)
    add_quantize_flag(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from gptrain.inference.chat import open_chat

    session = open_chat(args.model, system=args.system, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                        device=args.device, n_heads=args.n_heads, quantize=args.quantize)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"Chatting with {args.model}: {COMMANDS_HELP}.", file=sys.stderr)
    while True:
        if interactive:
            print("you> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() in ("/exit", "/quit"):
            return 0
        text = line.strip()
        if text == "/reset":
            session.reset()
        elif text:
            for piece in session.reply(text):
                print(piece, end="", flush=True)
            print(flush=True)
            if session.dropped_turns:
                print(f"gptrain: the {session.dropped_turns} oldest exchanges no longer fit the model's window and "
                      "were left out", file=sys.stderr)
