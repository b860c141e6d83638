"""``gptrain finetune``: stage two, a pretrained model taught to follow instructions (``instruct``) or
turned into a classifier (``classify``).

An instruction run is a ``gptrain train`` run from ``--model``'s weights on instruction records: the
same loop, flags, checkpoints, resume and report, with a ``[finetune]`` section in its train.toml.
"""

from __future__ import annotations

import argparse

from gptrain.cli.classify import add_classify_finetune_parser
from gptrain.cli.common import SOURCE_HELP, Parser, add_command, print_help
from gptrain.cli.train import RUN_OPTIONS, add_session_flags, add_step_flags, start_training
from gptrain.core.errors import GptrainError

# The book's chapter 7 run where it differs from pre-training's: batch 8, lr 5e-5, 2 epochs; no samples
# of "Every effort moves you" (give --start-context and --sample-tokens for them).
INSTRUCT_DEFAULTS = {"batch_size": 8, "lr": 5e-5, "epochs": 2, "sample_tokens": 0}
FINETUNE_FLAGS = ("template", "mask_prompt", "batching", "overlong", "val_data", "val_ratio", "test_ratio")


def add_parser(subparsers) -> None:
    group = add_command(subparsers, "finetune", help="fine-tune a pretrained model: instruct, classify",
                        description="Stage two: teach a pretrained model to follow instructions (instruct, the "
                                    "book's chapter 7) or to classify texts (classify, chapter 6).")
    commands = group.add_subparsers(title="finetune commands", metavar="COMMAND", parser_class=Parser)
    add_instruct_parser(commands)
    add_classify_finetune_parser(commands)
    group.set_defaults(handler=lambda args: print_help(group))


def add_instruct_parser(commands) -> None:
    p = add_command(
        commands, "instruct", help="instruction fine-tuning on instruction/input/output or chat messages records",
        description="Fine-tune --model on instruction records: the book's JSON list of {instruction, input, "
                    "output}, JSON Lines of the same, or {messages: [{role, content}, ...]} conversations. Each "
                    "record is rendered with a prompt template (saved in every checkpoint, so generate, eval and "
                    "serve format prompts the same way) and the loss is taken on the replies. The records are "
                    "split 85/5/10 into train, val and test (RUN/test.jsonl) with --seed, as the book does. Every "
                    "flag of gptrain train that is not about text windows applies.",
    )
    s = argparse.SUPPRESS
    p.add_argument("--config", help="TOML or JSON file of settings, such as a run's train.toml; flags override it")
    p.add_argument("--model", metavar="SOURCE", default=s, help=f"the pretrained model to fine-tune: {SOURCE_HELP}")
    p.add_argument("--data", default=s, help="a .json list or .jsonl file of instruction or messages records")
    p.add_argument("--out", default=s, help="run directory for checkpoints, metrics.jsonl and the report")
    p.add_argument("--template", choices=["alpaca", "chat"], default=s,
                   help="prompt template: alpaca (the book's) or chat [chat for messages records, else alpaca]")
    p.add_argument("--mask-prompt", action=argparse.BooleanOptionalAction, default=s,
                   help="take the loss on the replies only; --no-mask-prompt learns every token, as the book's "
                        "chapter 7 [on]")
    p.add_argument("--batching", choices=["sorted", "plain"], default=s,
                   help="sorted: batches of records of similar lengths, less padding; plain: the shuffled order "
                        "[sorted]")
    p.add_argument("--overlong", choices=["truncate", "drop"], default=s,
                   help="a record longer than the context is cut at it or left out; the log counts them [truncate]")
    p.add_argument("--val-data", default=s, help="validation records in a file of their own [a share of --data]")
    p.add_argument("--val-ratio", type=float, default=s, help="share of --data held out for validation [0.05]")
    p.add_argument("--test-ratio", type=float, default=s,
                   help="share of --data held out for testing, written to RUN/test.jsonl [0.1]")
    p.add_argument("--context-length", type=int, default=s,
                   help="longest record in tokens, at most the model's window [the model's]")
    p.add_argument("--dropout", type=float, default=s, help="drop rate while fine-tuning [the model's]")
    add_step_flags(p, batch_size="8", epochs="2", lr="5e-5")
    add_session_flags(p)
    p.set_defaults(handler=run_instruct)


def run_instruct(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gptrain.training.checkpointing import resume_mode
    from gptrain.training.config import TrainConfig, resolve_train_config

    flags = {k: v for k, v in vars(args).items() if k not in RUN_OPTIONS | {*FINETUNE_FLAGS, "model"}}
    flags["finetune"] = {k: getattr(args, k) for k in FINETUNE_FLAGS if hasattr(args, k)}
    resume, start_over = resume_mode(args.resume, Path(flags.get("out", TrainConfig.out)))
    if not resume:
        if not hasattr(args, "model") and not args.config:
            raise GptrainError("give --model SOURCE, the pretrained model to fine-tune (a GPT-2 size, a folder, "
                               "a state dict or a gptrain run)")
        if not hasattr(args, "data") and not args.config:
            raise GptrainError("give --data FILE, a .json or .jsonl file of instruction records")
        if hasattr(args, "model"):
            flags["init"] = args.model
    cfg = resolve_train_config(flags, config_file=args.config, resume=resume, defaults=INSTRUCT_DEFAULTS)
    if resume and hasattr(args, "model") and args.model != cfg.init:
        raise GptrainError(f"cannot resume {cfg.out} with --model {args.model}: it fine-tunes {cfg.init}; "
                           "drop --model (the run remembers it) or start a new run with another --out")
    if cfg.init is None:
        raise GptrainError("an instruction run fine-tunes a pretrained model: give --model SOURCE")
    return start_training(cfg, args, resume, start_over)
