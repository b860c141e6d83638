"""``gptrain estimate``: what a training run would cost, before it starts."""

from __future__ import annotations

import argparse
import json

from gptrain.cli.common import add_command, add_model_flags, add_precision_flag


def add_parser(subparsers) -> None:
    p = add_command(
        subparsers, "estimate", help="what a training run costs: parameters, FLOPs, time, money, energy, memory",
        description="Estimate a pre-training run before starting it: parameter counts, FLOPs per token, step "
                    "and run, wall time, device-hours, cost and energy on a table of GPUs (or this CPU), memory "
                    "per device and the largest micro-batch that fits, and the compute-optimal token count "
                    "(20 per parameter). See docs/economics.md.",
    )
    model = p.add_mutually_exclusive_group()
    model.add_argument("--preset", default=None, help="model size: tiny, 124M, 355M, 774M, 1558M [124M]")
    # --n-heads below is also the head count of a state dict file.
    add_model_flags(model, required=False, help="the model whose shape to train", n_heads=False)
    model.add_argument("--config", metavar="FILE", default=None,
                       help="a gptrain train config (a run's train.toml): its model, batch, precision and budget; "
                            "flags given beside it override them")
    for name, meaning in (("emb-dim", "width"), ("n-layers", "blocks"), ("n-heads", "attention heads"),
                          ("vocab-size", "vocabulary"), ("context-length", "tokens per training window")):
        p.add_argument(f"--{name}", type=int, default=None, help=f"override the model's {meaning}")
    p.add_argument("--dropout", type=float, default=None, help="override the model's drop rate")
    p.add_argument("--tie-embeddings", action=argparse.BooleanOptionalAction, default=None,
                   help="share the output head with the token embedding (OpenAI's GPT-2) [the model's]")
    p.add_argument("--qkv-bias", action=argparse.BooleanOptionalAction, default=None,
                   help="biases in the query/key/value products [the model's]")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per micro-batch, per device [8]")
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
    add_precision_flag(p, "auto: bf16 where the hardware has it, as gptrain train picks [auto]", default=None)
    p.add_argument("--mfu", type=float, default=None, help="fraction of the peak FLOP/s achieved [0.4]")
    p.add_argument("--measure", action="store_true", help="time a few real training steps here instead of --mfu")
    p.add_argument("--price-per-hour", type=float, default=None, help="price of one device-hour")
    p.add_argument("--watts", type=float, default=None, help="power of one device [its board power]")
    p.add_argument("--eval-freq", type=int, default=None, help="count a run's evaluations every N steps")
    p.add_argument("--eval-iter", type=int, default=None, help="batches per evaluation, with --eval-freq [5]")
    p.add_argument("--json", action="store_true", help="print the estimate as one JSON object")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from gptrain.planning.estimate import estimate_from_args, format_estimate

    result = estimate_from_args(args)
    print(json.dumps(result.to_dict()) if args.json else format_estimate(result))
    return 0
