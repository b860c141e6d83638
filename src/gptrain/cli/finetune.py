"""``gptrain finetune``: stage two, a pre-trained model fine-tuned for a task."""

from __future__ import annotations

from gptrain.cli.classify import add_classify_finetune_parser
from gptrain.cli.common import Parser, print_help


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("finetune", help="fine-tune a pre-trained model for a task",
                              description="Fine-tune a pre-trained model: classify (the book's chapter 6).")
    commands = p.add_subparsers(title="commands", metavar="COMMAND", parser_class=Parser)
    add_classify_finetune_parser(commands)
    p.set_defaults(handler=lambda args: print_help(p))

