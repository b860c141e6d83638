"""Benchmark scoring speed: gptrain's tasks against lm-evaluation-harness on the same model and examples.

A random GPT-2 124M (the speed does not depend on the weights) is exported with `export_hf`, so
lm-evaluation-harness's Hugging Face model (HFLM) loads exactly the weights gptrain scores with.
The examples are HellaSwag- and LAMBADA-shaped, cut from the-verdict.txt (no download): a
HellaSwag example is an activity label, a 30-word ctx_a, a 5-word ctx_b and four 18-word endings
(like the real validation set's lengths); a LAMBADA example is a 75-word passage. lm-evaluation-
harness builds its requests with its own hellaswag and lambada_openai task definitions over the
same files; only its log-likelihood computation (`HFLM.loglikelihood`) is timed, not its start-up
or dataset building, and on gptrain's side only `evaluate_task` on examples already read. Runs
alternate, so drifts in machine load hit both alike; the best of --repeats is printed, with
both accuracies (they must be equal), as examples per second of wall time and per second of the
process's CPU time (steadier on a machine shared with other jobs).

    python benchmarks/bench_tasks.py                           # 124M, 64 examples of each, fp32, CPU
    python benchmarks/bench_tasks.py --examples 500 --device cuda
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import find_verdict, machine_description, provenance  # noqa: E402

from gptrain import get_preset  # noqa: E402
from gptrain.core.runtime import resolve_device
from gptrain.evaluation.tasks import evaluate_task, read_task_file
from gptrain.interop.pretrained import export_hf
from gptrain.model.gpt import GPTModel


def write_task_files(folder: Path, count: int, seed: int = 123) -> dict[str, Path]:
    words = find_verdict().read_text(encoding="utf-8").split()
    rng = random.Random(seed)
    span = lambda n: " ".join(words[(start := rng.randrange(len(words) - n)):start + n])
    hellaswag = [{"activity_label": "The Verdict", "ctx_a": span(30), "ctx_b": span(5), "ctx": "",
                  "endings": [span(18) for _ in range(4)], "label": rng.randrange(4)} for _ in range(count)]
    lambada = [{"text": span(75)} for _ in range(count)]
    files = {"hellaswag": folder / "hellaswag.jsonl", "lambada": folder / "lambada.jsonl"}
    for name, records in (("hellaswag", hellaswag), ("lambada", lambada)):
        files[name].write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return files


def harness_requests(files: dict[str, Path], folder: Path) -> dict[str, tuple[object, list]]:
    """Each task and its log-likelihood requests, built by lm-evaluation-harness's own task definitions."""
    import lm_eval
    from lm_eval.tasks import TaskManager, get_task_dict

    shipped = Path(lm_eval.__file__).parent / "tasks"
    definitions = folder / "tasks"
    definitions.mkdir()
    for name, original, split in (("hellaswag", "hellaswag/hellaswag.yaml", "validation"),
                                  ("lambada", "lambada/lambada_openai.yaml", "test")):
        (definitions / f"{name}.yaml").write_text(
            f"include: {shipped / original}\ntask: {name}_bench\ndataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    {split}: {files[name]}\ntraining_split: null\n", encoding="utf-8")
    tasks = get_task_dict([f"{name}_bench" for name in files], TaskManager(include_path=str(definitions)))
    built = {}
    for name in files:
        task = tasks[f"{name}_bench"]
        task.build_all_requests(rank=0, world_size=1)
        built[name] = (task, [instance for instance in task.instances])
    return built


def harness_accuracy(task, requests, responses) -> float:
    """lm-evaluation-harness's own process_results over its responses, averaged."""
    by_doc: dict[int, list] = {}
    for instance, response in zip(requests, responses):
        by_doc.setdefault(instance.doc_id, []).append((instance.idx, instance.doc, response))
    scores = []
    for entries in by_doc.values():
        entries.sort(key=lambda entry: entry[0])
        scores.append(task.process_results(entries[0][1], [response for _, _, response in entries])["acc"])
    return float(np.mean(scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="124M")
    parser.add_argument("--examples", type=int, default=64, help="examples of each task")
    parser.add_argument("--batch", type=int, default=16, help="gptrain: examples per forward pass")
    parser.add_argument("--harness-batch", type=int, default=32,
                        help="lm-evaluation-harness: requests (choices) per forward pass")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds; the best is printed")
    args = parser.parse_args()
    print(provenance(), flush=True)

    folder = Path(tempfile.mkdtemp(prefix="bench_tasks_"))
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                      HF_HOME=str(folder / "hf"), HF_DATASETS_CACHE=str(folder / "datasets"))
    from lm_eval.models.huggingface import HFLM

    device = resolve_device(args.device)
    torch.manual_seed(123)
    model = GPTModel(get_preset(args.preset).replace(drop_rate=0.0, tie_embeddings=True)).eval()
    # GPT-2's initial scale: PyTorch's N(0, 1) embedding, tied to the head, gives logits so large that the
    # perplexity overflows. The speed is the same either way.
    with torch.no_grad():
        model.tok_emb.weight.mul_(0.02)
    export_hf(model, folder / "model")
    model.to(device)
    harness = HFLM(pretrained=str(folder / "model"), device=str(device), batch_size=args.harness_batch,
                   dtype="float32")
    files = write_task_files(folder, args.examples)
    requests = harness_requests(files, folder)

    print(f"{machine_description(device)}, threads {torch.get_num_threads()}; {args.preset} (random weights), fp32; "
          f"{args.examples} examples per task; gptrain batch {args.batch} examples, lm-evaluation-harness batch "
          f"{args.harness_batch} requests; best of {args.repeats}")
    print(f"{'task':<10} {'implementation':<22} {'acc':>7} {'examples/s':>11} {'speed-up':>9} "
          f"{'examples/cpu-s':>15} {'speed-up':>9}")
    for name, path in files.items():
        examples = read_task_file(name, path)
        task, instances = requests[name]
        runs = {
            "gptrain": lambda: evaluate_task(model, name, examples, batch_size=args.batch,
                                             progress=False).metrics["acc"],
            "lm-evaluation-harness": lambda: harness_accuracy(task, instances,
                                                              harness.loglikelihood(instances, disable_tqdm=True)),
        }
        best = {implementation: (None, math.inf, math.inf) for implementation in runs}
        for _ in range(args.repeats):
            for implementation, run in runs.items():
                wall, cpu = time.perf_counter(), time.process_time()
                acc = run()
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                _, best_wall, best_cpu = best[implementation]
                best[implementation] = (acc, min(wall, best_wall), min(cpu, best_cpu))
        _, reference_wall, reference_cpu = best["lm-evaluation-harness"]
        for implementation, (acc, wall, cpu) in best.items():
            print(f"{name:<10} {implementation:<22} {acc:>7.4f} {args.examples / wall:>11.2f} {reference_wall / wall:>8.2f}x "
                  f"{args.examples / cpu:>15.2f} {reference_cpu / cpu:>8.2f}x")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
