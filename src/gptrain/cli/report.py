"""``gptrain report``: a run's (or several runs') HTML report."""

from __future__ import annotations

import argparse

from gptrain.cli.common import add_command


def add_parser(subparsers) -> None:
    p = add_command(
        subparsers, "report", help="write report.html for a run, or one overlaying several runs",
        description="Write a self-contained HTML page (plots embedded, nothing fetched from the network) from "
                    "a run directory's metrics.jsonl and config.json: losses against steps and tokens, learning "
                    "rate, tokens/s, the train-val gap, the samples, final metrics and the full config. With one "
                    "run it goes to RUN_DIR/report.html; several runs are overlaid on the same axes.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directory written by gptrain train")
    p.add_argument("--out", default=None, help="HTML file to write [RUN_DIR/report.html for one run, "
                                               "./report.html for several]")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from gptrain.reporting.report import write_report

    path = write_report(args.runs, args.out)
    print(f"Wrote {path}")
    return 0
