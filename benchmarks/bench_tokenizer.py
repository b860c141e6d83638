"""Your own tokenizer's cost: `gptrain prepare` encoding with a trained tokenizer against GPT-2's
tiktoken path on the same corpus (seconds: the encoding, as prepare's meta.json counts it; wall: the
whole command, with Python's start-up and the trained tokenizer's tiktoken twin built), and `gptrain tokenizer train` against Hugging Face `tokenizers`
used directly, for a 32,768-token vocabulary on 100 MB of text.

The corpus is bench_prepare's synthetic one (the-verdict.txt's words drawn into documents, in .txt
files and a .jsonl file). Each command runs in a subprocess whose process tree's proportional set
size (PSS) is sampled every 50 ms, as bench_prepare does. Training directly with the library is
`Tokenizer.train(files, BpeTrainer)` with the same model, pre-tokenizer, special token and alphabet
(the library reads the files itself, in Rust); gptrain's streams the corpus through its readers
(.jsonl records, document by document) into `train_from_iterator`.

    python benchmarks/bench_tokenizer.py [--size-mb 100] [--vocab-size 32768] [--workers N] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prepare import make_corpus, run_measured, run_prepare  # noqa: E402

# The library used directly: the tokenizer gptrain trains (gptrain.data.bpe_training.new_tokenizer, GPT-2's split).
DIRECT = """
import sys
from pathlib import Path
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
corpus, vocab_size, out = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
tokenizer = Tokenizer(models.BPE())
tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
tokenizer.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
tokenizer.train([str(p) for p in sorted(corpus.iterdir())], trainer)
tokenizer.save(out)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--vocab-size", type=int, default=32_768)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--quick", action="store_true", help="5 MB and a 4,096-token vocabulary: checks the script")
    parser.add_argument("--keep", help="build the corpus here and keep it (default: a temporary folder)")
    args = parser.parse_args()
    size, vocab = (5, 4096) if args.quick else (args.size_mb, args.vocab_size)
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_tokenizer_"))
    corpus = base / f"corpus_{size}mb"
    try:
        if not corpus.exists():
            make_corpus(corpus, size)
        print(f"{os.cpu_count()} cores; {size} MB of text; a {vocab:,}-token vocabulary; "
              f"{args.workers} tokenizer processes in prepare")
        print(f"{'training':<28} {'seconds':>8} {'peak memory':>12}")
        ours = base / "tok"
        wall, peak, _ = run_measured([sys.executable, "-m", "gptrain", "tokenizer", "train", str(corpus),
                                      "--vocab-size", str(vocab), "--out", str(ours), "--overwrite"])
        print(f"{'gptrain tokenizer train':<28} {wall:>8.1f} {peak / 2**20:>9.0f} MB", flush=True)
        wall, peak, _ = run_measured([sys.executable, "-c", DIRECT, str(corpus), str(vocab), str(base / "direct.json")])
        print(f"{'tokenizers, directly':<28} {wall:>8.1f} {peak / 2**20:>9.0f} MB", flush=True)

        print(f"\n{'prepare encoding with':<28} {'tokens':>12} {'seconds':>8} {'tokens/s':>12} "
              f"{'bytes/token':>11} {'peak memory':>12} {'wall, with start-up':>20}")
        text_bytes = sum(p.stat().st_size for p in corpus.iterdir())
        for name, spec in (("GPT-2's BPE (tiktoken)", "gpt2"), ("the trained tokenizer", str(ours))):
            r = run_prepare(corpus, base / f"shards_{Path(spec).name}", args.workers, spec)
            print(f"{name:<28} {r['tokens']:>12,} {r['seconds']:>8.1f} {r['tokens_per_s']:>12,.0f} "
                  f"{text_bytes / r['tokens']:>11.2f} {r['peak_tree_mb']:>9.0f} MB {r['wall']:>18.1f} s", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
