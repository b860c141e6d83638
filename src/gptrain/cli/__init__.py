"""The ``gptrain`` command line: one module per command group, each parsing its flags and calling the library."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from gptrain.cli import (
    chat,
    classify,
    estimate,
    evaluate,
    finetune,
    generate,
    lab,
    models,
    prepare,
    report,
    serve,
    tokenizer,
    train,
)
from gptrain.cli.common import Parser, package_version
from gptrain.core.errors import GptrainError

# In the order `gptrain --help` lists them; models adds download-gpt2, export, info and compare.
COMMANDS = (prepare, train, finetune, classify, generate, chat, models, evaluate, report, lab, serve, estimate, tokenizer)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="gptrain", description="Pre-train GPT-2 style language models from scratch.")
    parser.add_argument("--version", action="version", version=f"gptrain {package_version()}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a bad input prints one line naming the problem and the fix, and exits 2."""
    code = run_command(argv)
    from gptrain.core.launch import world_size

    if world_size() > 1:
        leave_process(code)
    return code


def leave_process(code: int) -> None:
    """End a worker of a multi-process (torchrun) run with ``code`` once its output is flushed, without
    the interpreter's teardown. torch keeps an FSDP model's device mesh, and with it gloo's worker threads,
    alive after the process group is destroyed; a thread that drops its last tensor while the interpreter
    finalizes can abort the process (SIGABRT, "terminate called without an active exception"), and torchrun
    then fails a run that finished. Every file gptrain writes is closed by now, and no atexit work is left."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_command(argv: Sequence[str] | None) -> int:
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
