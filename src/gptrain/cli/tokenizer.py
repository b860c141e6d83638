"""``gptrain tokenizer``: train a byte-level BPE, inspect it, compare tokenizers on a corpus."""

from __future__ import annotations

import argparse

from gptrain.cli.common import Parser, add_command, add_text_field_flag


def add_parser(subparsers) -> None:
    group = add_command(subparsers, "tokenizer", help="train your own BPE tokenizer, inspect it, compare tokenizers")
    commands = group.add_subparsers(title="tokenizer commands", metavar="COMMAND", parser_class=Parser)
    p = add_command(
        commands, "train", help="train a byte-level BPE tokenizer on a corpus",
        description="Train a byte-level BPE (GPT-2's design, with <|endoftext|>) on the corpus, streamed from disk, "
                    "and write DIR/tokenizer.json, which gptrain prepare --tokenizer and transformers' "
                    "AutoTokenizer.from_pretrained(DIR) read.",
    )
    p.add_argument("corpus", nargs="+", metavar="CORPUS", help="file, folder or glob pattern, as gptrain prepare reads")
    p.add_argument("--vocab-size", type=int, required=True, help="tokens in the vocabulary, bytes and specials included")
    p.add_argument("--out", required=True, help="folder to write tokenizer.json into")
    p.add_argument("--pattern", choices=["gpt2", "gpt4"], default="gpt2",
                   help="pre-tokenizer split: GPT-2's regex or GPT-4's (cl100k)")
    add_text_field_flag(p)
    p.add_argument("--overwrite", action="store_true", help="replace a tokenizer already in --out")
    p.set_defaults(handler=run_train)
    p = add_command(commands, "info", help="vocabulary size, special tokens and pattern of a trained tokenizer")
    p.add_argument("folder", metavar="DIR", help="a folder written by gptrain tokenizer train")
    p.set_defaults(handler=run_info)
    p = add_command(commands, "compare", help="vocabulary size and bytes per token of tokenizers on a corpus")
    p.add_argument("corpus", nargs="+", metavar="CORPUS", help="file, folder or glob pattern")
    p.add_argument("--tokenizer", action="append", dest="tokenizers", metavar="DIR|gpt2",
                   help="a trained tokenizer's folder or gpt2; repeat to compare several [gpt2]")
    add_text_field_flag(p)
    p.set_defaults(handler=run_compare)


def run_train(args: argparse.Namespace) -> int:
    from gptrain.data.bpe_training import train_tokenizer

    tokenizer = train_tokenizer(args.corpus, args.out, args.vocab_size, pattern=args.pattern,
                                text_field=args.text_field, overwrite=args.overwrite)
    print(f"Wrote {args.out}/tokenizer.json: {tokenizer.n_vocab:,} tokens ({args.pattern} split)")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from gptrain.data.bpe_training import tokenizer_info

    info = tokenizer_info(args.folder)
    print(f"vocabulary: {info.vocab_size:,} tokens\nspecial tokens: {', '.join(info.special_tokens)}\n"
          f"pattern: {info.pattern}\nsha256: {info.sha256}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from gptrain.data.bpe_training import compare_tokenizers, format_comparison

    print(format_comparison(compare_tokenizers(args.corpus, args.tokenizers or ["gpt2"], args.text_field)))
    return 0
