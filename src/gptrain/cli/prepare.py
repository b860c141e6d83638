"""``gptrain prepare``: a corpus tokenized into the shards training reads."""

from __future__ import annotations

import argparse
import sys

from gptrain.cli.common import add_command, add_text_field_flag
from gptrain.core.errors import GptrainError


def add_parser(subparsers) -> None:
    p = add_command(
        subparsers, "prepare", help="tokenize a corpus into train.bin/val.bin shards for training",
        description="Tokenize text into uint16 token files (uint32 for vocabularies over 65,536) that "
                    "`gptrain train --data DIR` reads through a memory map. Inputs are files, folders and glob "
                    "patterns of .txt and .md files, JSON lines (.jsonl, .jsonl.gz, .jsonl.zst), .csv, .parquet and .arrow files, and folders written by "
                    "datasets' save_to_disk; each text file (or record) is a document, followed by "
                    "<|endoftext|>. The corpus is streamed and tokenized in parallel processes.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="file, folder or glob pattern")
    p.add_argument("--out", required=True, help="folder to write train.bin, val.bin and meta.json into")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of documents held out for validation")
    add_text_field_flag(p)
    p.add_argument("--strict", action="store_true", help="stop at a bad record instead of skipping it")
    p.add_argument("--workers", type=int, default=None, help="tokenizer processes [all cores]")
    p.add_argument("--seed", type=int, default=123, help="seed of the document split")
    p.add_argument("--overwrite", action="store_true", help="replace a prepared folder already in --out")
    p.add_argument("--tokenizer", default="gpt2", metavar="DIR|gpt2",
                   help="GPT-2's BPE, or a folder written by gptrain tokenizer train")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from gptrain.data.prepare import prepare

    if args.workers is not None and args.workers < 1:
        raise GptrainError(f"--workers must be at least 1, not {args.workers}")
    meta = prepare(args.inputs, args.out, val_fraction=args.val_fraction, text_field=args.text_field,
                   strict=args.strict, workers=args.workers, seed=args.seed, overwrite=args.overwrite,
                   tokenizer=args.tokenizer)
    documents = meta["documents"]
    print(f"Wrote {args.out}: {meta['train_tokens']:,} train tokens ({documents['train']:,} documents), "
          f"{meta['val_tokens']:,} val tokens ({documents['val']:,} documents, split by {meta['split']}) "
          f"at {meta['tokens_per_second']:,} tokens/s")
    if meta["skipped_lines"]:
        print(f"Skipped {meta['skipped_lines']:,} bad record(s), the first: {meta['first_skipped']}",
              file=sys.stderr)
    return 0
