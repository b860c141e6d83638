"""Evaluation speed: `gptrain eval`'s sliding windows against HF GPT2LMHeadModel on the same windows.

The same weights in both models, the same windows (`gptrain.evaluation.heldout.sliding_windows`) and
batches; HF scores them with its own loss (labels with -100 where a window's predictions are
not scored). Runs alternate, so drifts in machine load hit both alike. Prints the loss of each
(they agree to 1e-4) and scored tokens per second.

    python benchmarks/bench_eval.py                                  # 124M at context 256, the-verdict
    python benchmarks/bench_eval.py --context 1024 --strides 1024,512 --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import find_verdict, hf_model_from, machine_description, provenance  # noqa: E402

from gptrain import get_preset  # noqa: E402
from gptrain.core.runtime import AUTOCAST_DTYPES, resolve_device
from gptrain.data.splits import text_tokens
from gptrain.evaluation.heldout import evaluate_tokens, sliding_windows
from gptrain.model.gpt import GPTModel


def ours(model, tokens, context, stride, batch, precision):
    result = evaluate_tokens(model, tokens, context_length=context, stride=stride, batch_size=batch,
                             precision=precision, progress=False)
    return result.loss, result.seconds


@torch.inference_mode()
def hf(model, tokens, context, stride, batch, precision, device):
    tokens = torch.from_numpy(tokens.astype(np.int64))
    length, windows = sliding_windows(len(tokens), context, stride)
    scored = len(tokens) - 1
    total = 0.0
    dtype = AUTOCAST_DTYPES.get(precision)
    started = time.perf_counter()
    for i in range(0, len(windows), batch):
        chunk = windows[i:i + batch]
        inputs = torch.stack([tokens[w.start:w.start + length] for w in chunk]).to(device)
        labels = torch.stack([tokens[w.start + 1:w.start + length + 1] for w in chunk])
        for row, w in zip(labels, chunk):
            row[:w.first_scored] = -100
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(input_ids=inputs, labels=inputs, shift_labels=labels.to(device),
                         num_items_in_batch=torch.tensor(scored, device=device)).loss
        total += loss.item() * scored
    return total / scored, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="124M")
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--strides", default="256,128", help="comma-separated strides")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1, help="timed rounds; the best is printed")
    args = parser.parse_args()
    print(provenance(), flush=True)

    device = resolve_device(args.device)
    torch.manual_seed(123)
    model = GPTModel(get_preset(args.preset).replace(context_length=args.context, drop_rate=0.0)).eval()
    reference = hf_model_from(model).eval().to(device)
    model.to(device)
    tokens = text_tokens(find_verdict().read_text(encoding="utf-8"))
    print(f"{machine_description(device)}; {args.preset} at context {args.context}, batch {args.batch}, "
          f"{args.precision}; the-verdict.txt, {len(tokens):,} tokens")
    print(f"{'stride':>6} {'windows':>7}  {'implementation':<16} {'loss':>9} {'tokens/s':>9}")
    for stride in (int(s) for s in args.strides.split(",")):
        _, windows = sliding_windows(len(tokens), args.context, stride)
        best = {"gptrain": (None, float("inf")), "HF transformers": (None, float("inf"))}
        for _ in range(args.repeats):
            for name, run in (("gptrain", lambda: ours(model, tokens, args.context, stride, args.batch,
                                                      args.precision)),
                              ("HF transformers", lambda: hf(reference, tokens, args.context, stride, args.batch,
                                                             args.precision, device))):
                loss, seconds = run()
                best[name] = (loss, min(seconds, best[name][1]))
        for name, (loss, seconds) in best.items():
            print(f"{stride:>6} {len(windows):>7}  {name:<16} {loss:>9.5f} {(len(tokens) - 1) / seconds:>9,.0f}")


if __name__ == "__main__":
    main()
