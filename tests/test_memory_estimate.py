"""The estimate's memory against a real run's, with the allocator setting gptrain train uses on a CPU."""

import json
import subprocess
import sys

import pytest

# Three training steps in a fresh process set up as gptrain train sets up a CPU (freed memory kept),
# then the process's peak resident memory.
STEPS = r"""
import json, sys
import torch
from gptrain.core.runtime import autocast_context, prepare_device
from gptrain.model.config import get_preset
from gptrain.model.gpt import GPTModel
from gptrain.training.config import TrainConfig
from gptrain.training.optim import make_optimizer
from gptrain.training.step import forward_backward

device = torch.device("cpu")
prepare_device(device)
cfg, batch = get_preset("tiny").replace(context_length=int(sys.argv[1])), int(sys.argv[2])
torch.manual_seed(0)
model = GPTModel(cfg)
optimizer = make_optimizer(model, TrainConfig(), device)
tokens = torch.randint(0, cfg.vocab_size, (batch, cfg.context_length + 1))
for _ in range(3):
    optimizer.zero_grad(set_to_none=True)
    forward_backward(model, tokens[:, :-1], tokens[:, 1:], lambda: autocast_context("cpu", "bf16"))
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
# VmHWM, this program's own peak: getrusage's maxrss would also count the parent's pages that the
# child held between fork and exec (a large pytest process, late in the suite).
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(int(status["VmHWM"].split()[0]) * 1024)  # kB
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS in KiB and glibc's allocator: Linux")
def test_the_cpu_memory_estimate_is_within_10_percent_of_a_run_that_keeps_freed_memory():
    plan = ["--preset", "tiny", "--context-length", "128", "--batch-size", "8", "--precision", "bf16"]
    estimate = subprocess.run([sys.executable, "-m", "gptrain", "estimate", *plan, "--gpu", "cpu", "--tokens", "1e6",
                               "--json"], capture_output=True, text=True, check=True)
    memory = json.loads(estimate.stdout)["memory"]
    run = subprocess.run([sys.executable, "-c", STEPS, "128", "8"], capture_output=True, text=True, check=True)
    measured = int(run.stdout.split()[-1])
    assert memory["retained_heap"] > 0
    assert memory["peak"] == pytest.approx(measured, rel=0.10)
