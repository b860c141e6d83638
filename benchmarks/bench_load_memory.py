"""Peak memory of ``load_gpt2`` on a synthetic GPT-2 355M checkpoint (target: at most 1.3x the weights).

Writes random weights in the layout of ``openai-community/gpt2-medium`` (Hugging Face names
without the ``transformer.`` prefix, Conv1D (in, out) matrices, fused c_attn, and the causal-mask
buffers the hub file carries) as ``model.safetensors`` and, for comparison, ``pytorch_model.bin``.
Each is loaded in a fresh subprocess, which reports its peak resident set size
(``resource.getrusage(...).ru_maxrss``) before loading (Python + torch + gptrain), after
loading, and after one forward pass (which touches every weight).

    python benchmarks/bench_load_memory.py [--size 355M] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import provenance  # noqa: E402

MEASURE = r"""
import json, resource, sys, time
import torch
import gptrain
from gptrain import load_gpt2

def peak_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB

before = peak_bytes()
start = time.perf_counter()
model = load_gpt2(sys.argv[1])
seconds = time.perf_counter() - start
loaded = peak_bytes()
with torch.no_grad():
    model(torch.tensor([[464, 3290, 318, 257]]))
weights = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"before": before, "loaded": loaded, "forward": peak_bytes(), "weights": weights,
                  "seconds": seconds, "contiguous": all(p.is_contiguous() for p in model.parameters())}))
"""

WRITE = r"""
import sys, torch, safetensors.torch
from gptrain import get_preset
cfg = get_preset(sys.argv[1])
d, ctx = cfg.emb_dim, cfg.context_length
torch.manual_seed(0)
tensors = {"wte.weight": torch.randn(cfg.vocab_size, d) * 0.02, "wpe.weight": torch.randn(ctx, d) * 0.01}
mask = torch.tril(torch.ones(ctx, ctx)).view(1, 1, ctx, ctx)
for i in range(cfg.n_layers):
    h = f"h.{i}."
    tensors.update({
        h + "ln_1.weight": torch.ones(d), h + "ln_1.bias": torch.zeros(d),
        h + "attn.bias": mask.clone(),
        h + "attn.c_attn.weight": torch.randn(d, 3 * d) * 0.02, h + "attn.c_attn.bias": torch.zeros(3 * d),
        h + "attn.c_proj.weight": torch.randn(d, d) * 0.02, h + "attn.c_proj.bias": torch.zeros(d),
        h + "ln_2.weight": torch.ones(d), h + "ln_2.bias": torch.zeros(d),
        h + "mlp.c_fc.weight": torch.randn(d, 4 * d) * 0.02, h + "mlp.c_fc.bias": torch.zeros(4 * d),
        h + "mlp.c_proj.weight": torch.randn(4 * d, d) * 0.02, h + "mlp.c_proj.bias": torch.zeros(d),
    })
tensors.update({"ln_f.weight": torch.ones(d), "ln_f.bias": torch.zeros(d)})
target = sys.argv[2]
if target.endswith(".bin"):
    torch.save(tensors, target)
else:
    safetensors.torch.save_file(tensors, target, metadata={"format": "pt"})
"""

GPT2_CONFIG = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "activation_function": "gelu_new",
               "layer_norm_epsilon": 1e-05, "vocab_size": 50257}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="355M", help="GPT-2 preset whose shapes to use")
    parser.add_argument("--keep", default=None, help="write the files here and keep them (default: a temporary folder)")
    args = parser.parse_args()
    print(provenance(), flush=True)

    from gptrain import get_preset

    cfg = get_preset(args.size)
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-load-"))
    print(f"GPT-2 {args.size} shapes: {cfg.n_layers} layers, width {cfg.emb_dim}; files in {folder}")
    try:
        for name in ("model.safetensors", "pytorch_model.bin"):
            run = folder / name.split(".")[-1]
            run.mkdir(parents=True, exist_ok=True)
            hf_config = dict(GPT2_CONFIG, n_embd=cfg.emb_dim, n_layer=cfg.n_layers, n_head=cfg.n_heads,
                             n_positions=cfg.context_length)
            (run / "config.json").write_text(json.dumps(hf_config))
            if not (run / name).exists():
                subprocess.run([sys.executable, "-c", WRITE, args.size, str(run / name)], check=True)
            result = subprocess.run([sys.executable, "-c", MEASURE, str(run)], check=True, capture_output=True,
                                    text=True)
            r = json.loads(result.stdout.strip().splitlines()[-1])
            mib = 1 << 20
            print(f"\n{name} ({(run / name).stat().st_size / mib:,.0f} MiB on disk), "
                  f"weights {r['weights'] / mib:,.0f} MiB, loaded in {r['seconds']:.2f} s, "
                  f"all parameters contiguous: {r['contiguous']}")
            for stage in ("before", "loaded", "forward"):
                print(f"  peak RSS {stage:<8} {r[stage] / mib:8,.0f} MiB = {r[stage] / r['weights']:.2f} x weights"
                      f"   (above 'before': {(r[stage] - r['before']) / r['weights']:.2f} x)")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
