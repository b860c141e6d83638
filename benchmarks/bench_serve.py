"""Serving speed: concurrent streaming clients against `gptrain serve`, batched and one at a time.

A GPT-2 124M checkpoint with random weights is served by `gptrain serve` in a child process
(the CLI's own path: weights stored transposed for CPU decoding). For each number of clients,
that many threads start together, each streaming one greedy completion of ``--new-tokens``
tokens for its own prompt. The same load then goes to a server started with ``--max-batch 1``,
which serves the requests one at a time in arrival order, and to a batched server started with
``--quantize int8`` (int8 weights, gptrain.quantize). Each batched server's gain is taken
against its own one-client run, measured just before.

Figures per run: aggregate tokens/s (all tokens over the wall time from the first request to
the last token), time to first token (p50 / p95 over clients) and time between tokens (p50
over every gap of every stream), all measured by the clients.

    python benchmarks/bench_serve.py                          # 1, 4, 8, 16 clients, 128 tokens
    python benchmarks/bench_serve.py --clients 1 8 --new-tokens 64 --skip-unbatched
    python benchmarks/bench_serve.py --clients 1 8 --skip-unbatched --skip-int8   # fp32 only
    python benchmarks/bench_serve.py --threads 1            # on a machine whose cores are busy with other work
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description  # noqa: E402

from gptrain import GPTModel, get_preset, save_checkpoint  # noqa: E402

PROMPTS = ["Every effort moves you", "I had always thought Jack Gisburn rather a cheap genius",
           "The quick brown fox", "In the beginning", "It was a bright cold day in April",
           "Once upon a time there was", "The meaning of life is", "Deep learning models are"]


def stream_one(host: str, prompt: str, new_tokens: int, start: threading.Barrier, result: dict) -> None:
    connection = http.client.HTTPConnection(host, timeout=3600)
    body = json.dumps({"prompt": prompt, "max_tokens": new_tokens, "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}})
    start.wait()
    sent = time.perf_counter()
    connection.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200, response.read()
    arrivals = []
    for line in response:
        if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            result["tokens"] = chunk["usage"]["completion_tokens"]
        elif chunk["choices"][0]["text"]:
            arrivals.append(time.perf_counter())
    connection.close()
    result.update(sent=sent, arrivals=arrivals)


def run_load(host: str, clients: int, new_tokens: int) -> dict:
    results = [{} for _ in range(clients)]
    start = threading.Barrier(clients)
    threads = [threading.Thread(target=stream_one, args=(host, PROMPTS[i % len(PROMPTS)] + f" ({i})", new_tokens,
                                                          start, results[i])) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    first_sent = min(r["sent"] for r in results)
    last_token = max(r["arrivals"][-1] for r in results)
    ttft = sorted(r["arrivals"][0] - r["sent"] for r in results)
    gaps = [b - a for r in results for a, b in zip(r["arrivals"], r["arrivals"][1:])]
    tokens = sum(r["tokens"] for r in results)
    return {"tokens": tokens, "seconds": last_token - first_sent, "tokens_per_s": tokens / (last_token - first_sent),
            "ttft_p50": statistics.median(ttft), "ttft_p95": ttft[min(len(ttft) - 1, round(0.95 * (len(ttft) - 1)))],
            "tbt_p50": statistics.median(gaps) if gaps else float("nan")}


def start_server(checkpoint: Path, flags: list[str], threads: int | None,
                 device: str = "cpu") -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    process = subprocess.Popen([sys.executable, "-m", "gptrain", "serve", "--checkpoint", str(checkpoint), "--port", "0",
                                "--max-queue", "64", "--device", device, *flags],
                               stdout=subprocess.PIPE, text=True, env=env)
    line = process.stdout.readline()
    found = re.search(r"http://([\d.]+:\d+)/v1", line)
    if not found:
        process.kill()
        raise SystemExit(f"the server did not start: {line}")
    return process, found.group(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--skip-unbatched", action="store_true", help="no --max-batch 1 server")
    parser.add_argument("--skip-int8", action="store_true", help="no --quantize int8 server")
    parser.add_argument("--threads", type=int, default=None,
                        help="the server's torch threads (OMP_NUM_THREADS) [torch's default: one per core]")
    args = parser.parse_args()

    print(f"{machine_description(torch.device('cpu'))}; the server runs {args.threads or torch.get_num_threads()} "
          "torch threads")
    print(f"command: python benchmarks/bench_serve.py {' '.join(sys.argv[1:])}".rstrip())
    print("load average (1, 5, 15 min) at the start: %.1f %.1f %.1f" % os.getloadavg())
    print(f"GPT-2 124M (random weights, context 1024), greedy, {args.new_tokens} new tokens per client, streamed; "
          "clients are threads of this process, the server a child process")
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(123)
        checkpoint = save_checkpoint(GPTModel(get_preset("124M")), Path(tmp) / "gpt2-124M-random")
        fp32 = "batched (--max-batch 16)"
        servers = {fp32: (["--max-batch", "16"], fp32)}  # label: (flags, the server whose one client is the baseline)
        if not args.skip_unbatched:
            servers["one at a time (--max-batch 1)"] = (["--max-batch", "1"], fp32)
        if not args.skip_int8:
            int8 = "batched int8 (--max-batch 16 --quantize int8)"
            servers[int8] = (["--max-batch", "16", "--quantize", "int8"], int8)
        processes, hosts = [], {}
        try:
            for label, (flags, _) in servers.items():
                process, hosts[label] = start_server(checkpoint, flags, args.threads)
                processes.append(process)
                run_load(hosts[label], 1, 8)  # warm-up: first allocations, lazy initialisations
            rows = []
            for clients in args.clients:
                # The machine's load drifts: each load is measured next to a one-client run on the
                # batched server with the same weights, and the ratio is taken against that neighbour.
                singles = {baseline: run_load(hosts[baseline], 1, args.new_tokens)
                           for baseline in dict.fromkeys(baseline for _, baseline in servers.values())}
                for label, (_, baseline) in servers.items():
                    single = singles[baseline]
                    figures = run_load(hosts[label], clients, args.new_tokens)
                    rows.append((label, clients, figures, figures["tokens_per_s"] / single["tokens_per_s"]))
                    print(f"{label}, {clients} clients: {figures['tokens']} tokens in {figures['seconds']:.1f} s, "
                          f"{figures['tokens_per_s']:.1f} tokens/s ({rows[-1][3]:.2f}x the one-client run just before "
                          f"on {baseline}: {single['tokens_per_s']:.1f}), TTFT p50 {figures['ttft_p50']:.2f} s, "
                          f"p95 {figures['ttft_p95']:.2f} s, TBT p50 {1000 * figures['tbt_p50']:.0f} ms", flush=True)
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=60)
    print("load average (1, 5, 15 min) at the end: %.1f %.1f %.1f" % os.getloadavg())
    print("\n| server | clients | aggregate tokens/s | vs 1 client (batched, same weights, measured just before) | "
          "TTFT p50 | TTFT p95 | time between tokens p50 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, clients, f, ratio in rows:
        print(f"| {label} | {clients} | {f['tokens_per_s']:.1f} | {ratio:.2f}x | {f['ttft_p50']:.2f} s | "
              f"{f['ttft_p95']:.2f} s | {1000 * f['tbt_p50']:.0f} ms |")


if __name__ == "__main__":
    main()
