"""``gptrain lab``: the lecture's sampling exercises (temperature, multinomial, loss, sweep)."""

from __future__ import annotations

import argparse

from gptrain.cli.common import (
    Parser,
    add_command,
    add_device_flag,
    add_model_flags,
    print_help,
)
from gptrain.core.errors import GptrainError


def add_parser(subparsers) -> None:
    from gptrain.lecture import lab

    p = add_command(
        subparsers, "lab", help="the lecture's sampling exercises: temperature, multinomial, loss, sweep",
        description="The lecture's hands-on exercises on sampling and loss, with its numbers as defaults.",
    )
    labs = p.add_subparsers(title="labs", metavar="LAB", parser_class=Parser)

    t = add_command(labs, "temperature", help="softmax of logits at several temperatures",
                    description="Print softmax(logits / T) for each temperature T, as a table.")
    t.add_argument("--logits", type=float, nargs="+", default=list(lab.LECTURE_LOGITS), help="the logits")
    t.add_argument("--temperatures", type=float, nargs="+", default=list(lab.LECTURE_TEMPERATURES),
                   help="temperatures (0 puts all the probability on the largest logit)")
    t.add_argument("--names", nargs="+", default=None, help="a name for each logit [token 0, token 1, ...]")
    t.set_defaults(handler=run_temperature)

    m = add_command(labs, "multinomial", help="draw samples and compare observed with expected frequencies",
                    description="Draw --samples outcomes from a distribution with torch.multinomial and print "
                                "how often each came up against its probability. The default is the lecture's "
                                "weather: sunny 0.5, rainy 0.3, cloudy 0.2.")
    m.add_argument("--probs", nargs="+", default=None, metavar="P",
                   help="the distribution, by spaces or commas [0.5 0.3 0.2]")
    m.add_argument("--names", nargs="+", default=None, help="a name for each outcome [sunny rainy cloudy]")
    m.add_argument("--samples", type=int, default=1000, help="number of draws")
    m.add_argument("--seed", type=int, default=123, help="random seed (the same seed gives the same counts)")
    m.set_defaults(handler=run_multinomial)

    lo = add_command(labs, "loss", help="cross-entropy -ln P(target) per row and its batch average",
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
    lo.set_defaults(handler=run_loss)

    w = add_command(labs, "sweep", help="one prompt under a grid of temperatures and top-k values",
                    description="Continue one prompt with a model under each TEMPERATURE/TOP_K cell of a grid "
                                "(the lecture's four combinations by default), each cell with the same seed.")
    add_model_flags(w, help="the model to sample from")
    w.add_argument("--prompt", default=lab.SWEEP_PROMPT, help="text to continue")
    w.add_argument("--grid", nargs="+", default=[f"{t:g}/{k}" for t, k in lab.SWEEP_GRID],
                   metavar="T/K", help="TEMPERATURE/TOP_K cells (TOP_K may be none)")
    w.add_argument("--max-new-tokens", type=int, default=30, help="tokens per cell")
    w.add_argument("--seed", type=int, default=123, help="random seed of every cell")
    add_device_flag(w)
    w.set_defaults(handler=run_sweep)
    p.set_defaults(handler=lambda args: print_help(p))


def run_temperature(args: argparse.Namespace) -> int:
    from gptrain.lecture.lab import temperature_table

    print(temperature_table(args.logits, args.temperatures, args.names))
    return 0


def run_multinomial(args: argparse.Namespace) -> int:
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


def run_loss(args: argparse.Namespace) -> int:
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


def run_sweep(args: argparse.Namespace) -> int:
    from gptrain.lecture.lab import sweep_source

    if args.max_new_tokens < 0:
        raise GptrainError(f"--max-new-tokens must not be negative, not {args.max_new_tokens}")
    print(sweep_source(args.prompt, args.grid, model=args.model, n_heads=args.n_heads,
                       max_new_tokens=args.max_new_tokens, seed=args.seed, device=args.device))
    return 0
