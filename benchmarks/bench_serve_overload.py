"""The server under overload: 64 streaming clients against `gptrain serve` with a small queue.

A small model with random weights is served by `gptrain serve` in a child process with
``--max-batch 4 --max-queue 4`` (eight sequences at most), and checked in three phases:

1. Memory: non-streaming short requests from 8 threads; the server's resident memory (VmRSS) after
   2,000 requests must be within 10% of what it was after 200.
2. Overload: 64 client threads stream greedy completions without pause for ``--duration`` seconds
   (120; 10 with ``--quick``). A refused request must be a 503 with ``Retry-After``, answered at
   once; every accepted one must end with the text a single client gets for its prompt (fetched
   before the load); every 8th accepted request is dropped by its client after two chunks. A
   thread asks ``/health`` every 0.2 s throughout: every answer must come, and its latency is shown.
3. Drain: once the clients stop, nothing runs or waits, and every dropped request was cancelled
   (the server's ``disconnected`` and ``cancelled`` counters).

The script exits 1 when a check fails.

    python benchmarks/bench_serve_overload.py             # 2 minutes of overload
    python benchmarks/bench_serve_overload.py --quick     # 10 s: proves the script and the server
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description  # noqa: E402

from gptrain import GPTConfig, GPTModel, save_checkpoint  # noqa: E402

PROMPTS = ["Every effort moves you", "I had always thought Jack Gisburn rather a cheap genius",
           "The quick brown fox", "In the beginning", "It was a bright cold day in April",
           "Once upon a time there was", "The meaning of life is", "Deep learning models are"]
CLIENTS = 64
NEW_TOKENS = 24


def request(host: str, body: dict, timeout: float = 60) -> tuple[int, dict, http.client.HTTPResponse,
                                                                 http.client.HTTPConnection]:
    connection = http.client.HTTPConnection(host, timeout=timeout)
    connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, dict(response.getheaders()), response, connection


def complete(host: str, prompt: str, max_tokens: int) -> str:
    status, _, response, connection = request(host, {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
    answer = json.loads(response.read())
    connection.close()
    assert status == 200, answer
    return answer["choices"][0]["text"]


def health(host: str) -> dict:
    connection = http.client.HTTPConnection(host, timeout=10)
    connection.request("GET", "/health")
    state = json.loads(connection.getresponse().read())
    connection.close()
    return state


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kib / 1024


def memory_phase(host: str, pid: int) -> tuple[float, float]:
    """RSS after 200 and after 2,000 non-streaming requests (8 threads, 4 new tokens each)."""
    done = [0]
    lock = threading.Lock()

    def worker(index: int, count: int) -> None:
        for i in range(count):
            complete(host, PROMPTS[(index + i) % len(PROMPTS)], 4)
            with lock:
                done[0] += 1

    def run(total: int) -> None:
        threads = [threading.Thread(target=worker, args=(i, total // 8)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    run(200)
    after_200 = rss_mib(pid)
    run(1800)
    assert done[0] == 2000
    return after_200, rss_mib(pid)


class Overload:
    """The clients' tallies (appended from many threads: list.append is atomic)."""

    def __init__(self, host: str, expected: dict[str, str], seconds: float):
        self.host, self.expected, self.end = host, expected, time.monotonic() + seconds
        self.completed, self.dropped, self.wrong, self.refusals, self.no_retry_after = [], [], [], [], []
        self.errors: list[str] = []
        self.health_latency: list[float] = []
        self.health_failures: list[str] = []

    def client(self, index: int) -> None:
        attempt = 0
        while time.monotonic() < self.end:
            prompt = PROMPTS[(index + attempt) % len(PROMPTS)]
            attempt += 1
            sent = time.perf_counter()
            try:
                status, headers, response, connection = request(
                    self.host, {"prompt": prompt, "max_tokens": NEW_TOKENS, "temperature": 0, "stream": True})
            except OSError as exc:
                self.errors.append(repr(exc))
                continue
            if status != 200:
                response.read()
                connection.close()
                self.refusals.append(time.perf_counter() - sent)
                if status != 503 or "retry-after" not in {name.lower() for name in headers}:
                    self.no_retry_after.append(status)
                time.sleep(0.05)  # a client that keeps pushing (one that honours Retry-After pushes less)
                continue
            drop = (index + attempt) % 8 == 0
            text, chunks = [], 0
            for line in response:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                chunks += 1
                text.append(json.loads(line[6:])["choices"][0]["text"])
                if drop and chunks == 2:
                    break
            connection.close()
            if drop:
                self.dropped.append(1)
            elif "".join(text) == self.expected[prompt]:
                self.completed.append(1)
            else:
                self.wrong.append(prompt)

    def watch_health(self) -> None:
        while time.monotonic() < self.end:
            sent = time.perf_counter()
            try:
                assert health(self.host)["status"] == "ok"
                self.health_latency.append(time.perf_counter() - sent)
            except (OSError, AssertionError, ValueError) as exc:
                self.health_failures.append(repr(exc))
            time.sleep(0.2)

    def run(self) -> None:
        threads = [threading.Thread(target=self.client, args=(i,)) for i in range(CLIENTS)]
        threads.append(threading.Thread(target=self.watch_health))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def start_server(checkpoint: Path, max_batch: int, max_queue: int, threads: int) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "gptrain", "serve", "--checkpoint", str(checkpoint), "--port", "0",
                                "--max-batch", str(max_batch), "--max-queue", str(max_queue), "--device", "cpu"],
                               stdout=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    line = process.stdout.readline()
    found = re.search(r"http://([\d.]+:\d+)/v1", line)
    if not found:
        process.kill()
        raise SystemExit(f"the server did not start: {line}")
    return process, found.group(1)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of overload [120]")
    parser.add_argument("--quick", action="store_true", help="10 s of overload")
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--max-queue", type=int, default=4)
    # A tiny model gains nothing from more threads, and on a machine whose cores are busy, torch's
    # threads waiting on one another made each decode step take 0.4 s instead of 1 ms.
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads (OMP_NUM_THREADS) [1]")
    args = parser.parse_args()
    seconds = 10.0 if args.quick else args.duration

    print(machine_description(torch.device("cpu")))
    print(f"command: python benchmarks/bench_serve_overload.py {' '.join(sys.argv[1:])}".rstrip())
    print("load average (1, 5, 15 min) at the start: %.1f %.1f %.1f" % os.getloadavg())
    print(f"model: random weights, 2 layers, emb 64, context 128; server: --max-batch {args.max_batch} "
          f"--max-queue {args.max_queue}, {args.threads} torch thread(s); {CLIENTS} streaming clients, greedy, {NEW_TOKENS} tokens, {seconds:.0f} s")
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        cfg = GPTConfig(vocab_size=50257, context_length=128, emb_dim=64, n_heads=4, n_layers=2, drop_rate=0.0)
        checkpoint = save_checkpoint(GPTModel(cfg), Path(tmp) / "tiny")
        process, host = start_server(checkpoint, args.max_batch, args.max_queue, args.threads)
        try:
            expected = {prompt: complete(host, prompt, NEW_TOKENS) for prompt in PROMPTS}  # one client at a time
            after_200, after_2000 = memory_phase(host, process.pid)
            growth = after_2000 / after_200 - 1
            print(f"memory: VmRSS {after_200:.1f} MiB after 200 requests, {after_2000:.1f} MiB after 2,000 "
                  f"({100 * growth:+.1f}%)", flush=True)
            if abs(growth) > 0.10:
                failures.append(f"resident memory grew {100 * growth:+.1f}% from 200 to 2,000 requests")

            load = Overload(host, expected, seconds)
            started = time.perf_counter()
            load.run()
            elapsed = time.perf_counter() - started
            deadline = time.monotonic() + 30
            while (state := health(host))["running"] + state["waiting"] and time.monotonic() < deadline:
                time.sleep(0.1)
            print(f"overload: {elapsed:.1f} s, {len(load.completed)} completed with the single-client text, "
                  f"{len(load.wrong)} with another text, {len(load.dropped)} dropped by their client mid-stream, "
                  f"{len(load.refusals)} refused (p50 {1000 * percentile(load.refusals, 0.5):.0f} ms, "
                  f"p99 {1000 * percentile(load.refusals, 0.99):.0f} ms to the refusal), "
                  f"{len(load.errors)} connection errors")
            print(f"/health: {len(load.health_latency)} answers, p50 {1000 * percentile(load.health_latency, 0.5):.0f} "
                  f"ms, max {1000 * max(load.health_latency, default=float('nan')):.0f} ms; "
                  f"{len(load.health_failures)} failures")
            print(f"server after the load: {json.dumps(state)}; VmRSS {rss_mib(process.pid):.1f} MiB")
            if load.wrong:
                failures.append(f"{len(load.wrong)} accepted requests got another text than a single client")
            if load.no_retry_after:
                failures.append(f"{len(load.no_retry_after)} refusals without 503 + Retry-After "
                                f"(statuses {sorted(set(load.no_retry_after))})")
            if load.health_failures or load.errors:
                failures.append(f"/health failed {len(load.health_failures)} times, clients {len(load.errors)} times")
            if state["running"] or state["waiting"]:
                failures.append("sequences still running or waiting 30 s after the load")
            if state["disconnected"] > len(load.dropped) or state["cancelled"] < state["disconnected"]:
                failures.append("dropped requests and cancelled sequences do not match")
            if not load.completed or not load.refusals:
                failures.append("the load did not both complete and refuse requests: not an overload")
        finally:
            process.terminate()
            process.wait(timeout=60)
    print("load average (1, 5, 15 min) at the end: %.1f %.1f %.1f" % os.getloadavg())
    for failure in failures:
        print(f"FAILED: {failure}")
    print("all checks passed" if not failures else f"{len(failures)} checks failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
