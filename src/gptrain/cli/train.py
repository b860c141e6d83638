"""``gptrain train``: its flags, and the run they configure.

Settings come from the defaults (the lecture's run), then a ``--config`` file (TOML or JSON), then
the flags; a resumed run starts from its saved settings instead of the defaults.
"""

from __future__ import annotations

import argparse

from gptrain.cli.common import DefaultsHelpFormatter, add_device_flag, add_precision_flag, add_text_field_flag


def _optional_float(text: str) -> float | None:
    return None if text.lower() in {"none", "off", "0"} else float(text)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="pre-train a model (default: the lecture's run on the-verdict)",
        description="Pre-train a GPT model. With no flags it runs the lecture: the 124M architecture at "
                    "context 256 on the-verdict.txt for 10 epochs, AdamW lr 4e-4, weight decay 0.1, batch 2, "
                    "evaluating every 5 steps on 5 batches, seed 123.",
        formatter_class=DefaultsHelpFormatter,
    )
    s = argparse.SUPPRESS  # unset flags leave the config file's (or the default) value alone
    p.add_argument("--config", help="TOML or JSON file of settings (flag names with _ for -), such as a run's "
                                    "train.toml, which repeats that run; flags override it")
    p.add_argument("--data", default=s, help="text or .jsonl file, folder of them, or a named dataset (the-verdict); "
                                              "for a large corpus, a folder made by gptrain prepare")
    add_text_field_flag(p, "the field of each .jsonl record that holds the text [text]", default=s)
    p.add_argument("--out", default=s, help="run directory for checkpoints, metrics.jsonl and loss.png "
                                             "[runs/verdict]")
    p.add_argument("--preset", default=s, help="the model's shape to start from: tiny, 124M, 355M, 774M, 1558M; "
                                                "the shape flags below change it [124M]")
    p.add_argument("--context-length", type=int, default=s, help="tokens per training window [256]")
    for name, meaning in (("n-layers", "transformer blocks"), ("n-heads", "attention heads (dividing --emb-dim)"),
                          ("emb-dim", "width"), ("vocab-size", "token embeddings, at least the tokenizer's 50257")):
        p.add_argument(f"--{name}", type=int, default=s, help=f"the model's {meaning} [the preset's]")
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
    add_precision_flag(p, "autocast precision; auto is bf16 on CUDA and on CPUs with native bf16, else fp32 "
                          "(fp16 uses a gradient scaler) [auto]", default=s)
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
    p.add_argument("--logger", nargs="+", choices=["jsonl", "csv", "tensorboard", "wandb", "mlflow"], default=s,
                   help="where metrics go besides metrics.jsonl, which is always written: csv (metrics.csv), "
                        "tensorboard, wandb, mlflow (each needs its extra) [jsonl]")
    p.add_argument("--wandb-project", default=s, help="the wandb project [$WANDB_PROJECT, else gptrain]")
    p.add_argument("--run-name", default=s, help="the run's name in wandb and MLflow [the run directory's name]")
    p.add_argument("--mlflow-uri", default=s, help="the MLflow tracking URI [$MLFLOW_TRACKING_URI, else RUN/mlruns]")
    p.add_argument("--save-every", type=int, default=s, help="save a resumable checkpoint every N steps")
    p.add_argument("--keep-last", type=int, default=s, help="keep only the last K step checkpoints [all]")
    p.add_argument("--stride", type=int, default=s, help="tokens between window starts [context length]")
    p.add_argument("--train-ratio", type=float, default=s, help="share of the text used for training [0.9]")
    p.add_argument("--start-context", default=s, help="prompt of the sample printed after each epoch")
    p.add_argument("--sample-tokens", type=int, default=s, help="tokens in each sample [50]")
    p.add_argument("--seed", type=int, default=s, help="random seed [123]")
    add_device_flag(p, default=s, name_default=True)
    p.add_argument("--init", metavar="SOURCE", default=s,
                   help="start a new run from these weights (transfer learning): a GPT-2 size (124M, gpt2-medium, "
                        "...), a Hugging Face folder, a state dict file, or a gptrain run directory or checkpoint, "
                        "as --model takes them; the architecture is SOURCE's, --context-length may shorten its window")
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
    p.add_argument("--resume", nargs="?", const="latest", choices=["latest", "auto"],
                   help="continue the run in --out from its latest complete checkpoint (its settings, "
                        "updated by the flags given); --resume auto does so when there is one and starts "
                        "afresh otherwise: the command to give torchrun --max-restarts")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--dry-run", action="store_true",
                   help="set up as training would (under torchrun: every rank, checking that all agree), print "
                        "each rank's part of the job, and exit without training")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gptrain.training.checkpointing import resume_mode
    from gptrain.training.config import TrainConfig, resolve_train_config
    from gptrain.training.loop import print_line, train
    from gptrain.training.run import dry_run

    flags = {k: v for k, v in vars(args).items() if k not in {"config", "handler", "overwrite", "resume", "dry_run"}}
    resume, start_over = resume_mode(args.resume, Path(flags.get("out", TrainConfig.out)))
    cfg = resolve_train_config(flags, config_file=args.config, resume=resume)
    if args.dry_run:
        dry_run(cfg, echo=print_line)
        return 0
    train(cfg, overwrite=args.overwrite or start_over, resume=resume)
    return 0  # also after SIGTERM/SIGINT: the run saved a checkpoint to resume from
