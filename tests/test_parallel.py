"""Sharded training (FSDP2 under torchrun, gloo on CPU) and activation checkpointing."""

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gptrain import GPTConfig, GPTModel, TrainConfig, load_checkpoint, save_checkpoint, train
from gptrain.store.checkpoint import complete_checkpoints
from gptrain.training.parallel import checkpoint_activations

STEPS = 8


def flags(data, out, *extra):
    return ["train", "--data", str(data), "--out", str(out), "--preset", "tiny", "--context-length", "32",
            "--max-steps", str(STEPS), "--eval-freq", "4", "--eval-iter", "2", "--device", "cpu",
            "--sample-tokens", "4", "--lr", "2e-3", "--warmup-steps", "2", "--cosine", "--min-lr", "1e-4",
            "--dropout", "0", "--precision", "fp32", "--pad-vocab", "--save-every", "4", *extra]


def torchrun(*args):
    # PYTHONFAULTHANDLER: a worker that aborts prints each thread's Python stack beside torchrun's report.
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "gptrain", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"})


def records(run_dir, event):
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    drop = {"elapsed_s", "tokens_per_s", "mfu", "wall_time_s", "peak_memory_mb"}
    return [{k: v for k, v in r.items() if k not in drop} for r in rows if r["event"] == event]


def weights(path):
    return load_checkpoint(path).state_dict()


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, verdict_path):
    """One FSDP run of 2 processes x batch 2 x 2 micro-batches with activation checkpointing, saving at
    steps 4 and 8; then its step-4 checkpoint resumed by 2 new FSDP processes."""
    root = tmp_path_factory.mktemp("fsdp")
    straight = torchrun(*flags(verdict_path, root / "straight", "--batch-size", "2", "--grad-accum", "2", "--fsdp",
                               "--activation-checkpointing"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    resumed_dir = root / "resumed"
    shutil.copytree(root / "straight", resumed_dir)
    shutil.rmtree(resumed_dir / "final")
    shutil.rmtree(resumed_dir / "checkpoints" / f"step-{STEPS:07d}")
    resumed = torchrun(*flags(verdict_path, resumed_dir, "--batch-size", "2", "--grad-accum", "2", "--fsdp",
                              "--activation-checkpointing"), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return root, straight.stdout, resumed.stdout


def test_fsdp_equals_one_process_with_the_same_global_batch(fsdp_run, verdict_path, tmp_path):
    root, stdout, _ = fsdp_run
    assert "global batch 8 sequences = 256 tokens (2 x 32 per micro-batch, 2 micro-batches, 2 process(es))" in stdout
    assert stdout.count("Ep 1 (Step 000000)") == 1  # every process evaluates, only rank 0 logs
    one = TrainConfig(data=str(verdict_path), out=str(tmp_path / "one"), preset="tiny", context_length=32,
                      batch_size=8, max_steps=STEPS, eval_freq=4, eval_iter=2, device="cpu", sample_tokens=4,
                      lr=2e-3, warmup_steps=2, cosine=True, min_lr=1e-4, dropout=0.0, precision="fp32",
                      pad_vocab=True)
    train(one, echo=lambda line: None)
    sharded = root / "straight"
    assert [r["loss"] for r in records(sharded, "train")] == pytest.approx(
        [r["loss"] for r in records(tmp_path / "one", "train")], abs=1e-5)
    # The gradients agree within 1e-7, but torch's float32 norm of a whole 3.2M-element gradient and
    # the one it combines from the shards' norms round differently, by up to 2e-4.
    assert [r["grad_norm"] for r in records(sharded, "train")] == pytest.approx(
        [r["grad_norm"] for r in records(tmp_path / "one", "train")], rel=2e-4)
    for event in ("eval",):
        for ours, reference in zip(records(sharded, event), records(tmp_path / "one", event), strict=True):
            assert ours["val_loss"] == pytest.approx(reference["val_loss"], abs=1e-5)
    reference = weights(tmp_path / "one" / "final")
    for folder in ("final", f"checkpoints/step-{STEPS:07d}"):
        ours = weights(sharded / folder)
        assert ours.keys() == reference.keys()
        for name, tensor in reference.items():
            torch.testing.assert_close(ours[name], tensor, atol=1e-5, rtol=0, msg=name)


def test_fsdp_checkpoints_hold_full_weights_and_sharded_optimizer(fsdp_run):
    root, _, _ = fsdp_run
    final = root / "straight" / "final"
    assert sorted(p.name for p in (final / "optimizer").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert [step for step, _ in complete_checkpoints(root / "straight")] == [4, 8, 8]
    assert not list((root / "straight" / "checkpoints").glob(".*"))  # no staging folder left behind
    best = load_checkpoint(root / "straight" / "best")
    assert best.tok_emb.weight.shape == (50257, 64)  # the padded rows are not saved
    end = records(root / "straight", "end")[0]
    memory = json.loads((root / "straight" / "metrics.jsonl").read_text().splitlines()[-1])["peak_memory_mb"]
    assert end["step"] == STEPS - 1 and len(memory) == 2 and all(100 < mb < 4000 for mb in memory)
    assert "peak memory per process" in (root / "straight" / "report.html").read_text()


def test_fsdp_resume_is_bit_exact(fsdp_run):
    root, _, stdout = fsdp_run
    assert "Resuming from" in stdout and "step-0000004" in stdout
    straight, resumed = root / "straight", root / "resumed"
    for event in ("train", "eval", "sample"):
        assert records(resumed, event) == records(straight, event)
    expected = weights(straight / "final")
    for name, tensor in weights(resumed / "final").items():
        assert torch.equal(tensor, expected[name]), name


def test_fsdp_checkpoint_generates_without_torchrun(fsdp_run):
    root, _, _ = fsdp_run
    result = subprocess.run([sys.executable, "-m", "gptrain", "generate", "--checkpoint", str(root / "straight"),
                             "--prompt", "Every effort moves you", "--max-new-tokens", "6", "--temperature", "0",
                             "--device", "cpu"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Every effort moves you")
    assert "tokens in" in result.stdout + result.stderr


def test_fsdp_needs_torchrun(verdict_path, tmp_path):
    cfg = TrainConfig(data=str(verdict_path), out=str(tmp_path / "run"), preset="tiny", context_length=32,
                      max_steps=1, device="cpu", fsdp=True)
    with pytest.raises(ValueError, match="--fsdp shards the model across processes but this is a single process"):
        train(cfg, echo=lambda line: None)
    with pytest.raises(ValueError, match="--fsdp cannot be combined with --lora-rank"):
        TrainConfig(fsdp=True, init="124M", lora_rank=4)
    with pytest.raises(ValueError, match="--fsdp cannot be combined with --optimizer muon"):
        TrainConfig(fsdp=True, optimizer="muon")


def loss_and_grads(model, inputs, targets, seed):
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    saved_bytes = 0

    def count(tensor):
        nonlocal saved_bytes
        saved_bytes += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
        loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, saved_bytes


def test_activation_checkpointing_gives_identical_losses_and_gradients_from_less_memory():
    torch.manual_seed(123)
    cfg = dict(vocab_size=500, context_length=32, emb_dim=64, n_heads=4, n_layers=3, drop_rate=0.1)
    plain = GPTModel(cfg).train()
    recomputed = checkpoint_activations(copy.deepcopy(plain))
    inputs = torch.randint(0, 500, (4, 32))
    targets = torch.randint(0, 500, (4, 32))
    loss, grads, stored = loss_and_grads(plain, inputs, targets, seed=7)
    loss_ac, grads_ac, stored_ac = loss_and_grads(recomputed, inputs, targets, seed=7)
    assert torch.equal(loss, loss_ac)  # the same dropout masks: recomputation replays the RNG
    assert grads.keys() == grads_ac.keys()
    for name, grad in grads.items():
        assert torch.equal(grad, grads_ac[name]), name
    assert stored_ac < stored / 2
    assert recomputed.state_dict().keys() == plain.state_dict().keys()
    with torch.no_grad():  # generation and evaluation run the blocks as they are
        assert torch.equal(recomputed.eval()(inputs), plain.eval()(inputs))


def test_an_fsdp_checkpoint_resumes_in_one_process(fsdp_run, tmp_path):
    root, _, _ = fsdp_run
    single = tmp_path / "single"
    shutil.copytree(root / "straight", single)
    shutil.rmtree(single / "final")
    shutil.rmtree(single / "checkpoints" / f"step-{STEPS:07d}")
    saved = json.loads((single / "config.json").read_text())["train"]
    cfg = TrainConfig.from_dict({**saved, "out": str(single), "batch_size": 8, "grad_accum": 1, "fsdp": False})
    train(cfg, resume=True, echo=lambda line: None)  # the optimizer shards re-sharded into one process
    expected = weights(root / "straight" / "final")
    for name, tensor in weights(single / "final").items():
        torch.testing.assert_close(tensor, expected[name], atol=1e-5, rtol=0, msg=name)
    assert [r["loss"] for r in records(single, "train")] == pytest.approx(
        [r["loss"] for r in records(root / "straight", "train")], abs=1e-5)


def test_fsdp_starts_from_init_weights_with_the_initial_evaluation_on_every_process(tmp_path, story_page):
    torch.manual_seed(0)
    source = tmp_path / "source"
    save_checkpoint(GPTModel(GPTConfig(context_length=32, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)), source)
    result = torchrun("train", "--data", str(story_page), "--out", str(tmp_path / "run"), "--init", str(source),
                      "--fsdp", "--max-steps", "2", "--eval-freq", "2", "--eval-iter", "1", "--batch-size", "2",
                      "--sample-tokens", "0", "--device", "cpu", "--precision", "fp32")
    assert result.returncode == 0, result.stderr[-3000:]
    initial = [r for r in records(tmp_path / "run", "eval") if r.get("initial")]
    assert len(initial) == 1 and initial[0]["step"] == 0
    assert load_checkpoint(tmp_path / "run").cfg.emb_dim == 32


def test_compiled_fsdp_equals_the_uncompiled_run(fsdp_run, verdict_path):
    root, _, _ = fsdp_run
    compiled = torchrun(*flags(verdict_path, root / "compiled", "--batch-size", "2", "--grad-accum", "2", "--fsdp",
                               "--activation-checkpointing", "--compile", "--logger", "jsonl", "csv"))
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    for event in ("train", "eval"):
        key = "loss" if event == "train" else "val_loss"
        assert [r[key] for r in records(root / "compiled", event)] == pytest.approx(
            [r[key] for r in records(root / "straight", event)], abs=1e-5)
    assert complete_checkpoints(root / "compiled")  # the optimizer's shards were saved under compile too
    assert len((root / "compiled" / "metrics.csv").read_text().splitlines()) > STEPS  # rank 0's other logger


def test_fsdp_saves_after_evaluation_task_scores_and_a_sample(tmp_path, story_page):
    """A forward pass without gradients leaves FSDP's root gathered; every save after one used to fail.

    Three steps an epoch, a checkpoint after every step: step 1 saved after an evaluation and task
    scores, step 2 after nothing, step 3 after task scores without an evaluation (the root resharded
    by backward, which task scoring once read directly) and the epoch's sample, step 4 (final) after
    an evaluation. The step-3 checkpoint then resumes in one process to the same final weights.
    """
    tasks = tmp_path / "mc.jsonl"
    tasks.write_text(json.dumps({"context": "The capital of France is", "choices": ["Paris", "Berlin"],
                                 "answer": 0}) + "\n", encoding="utf-8")
    run = tmp_path / "run"
    result = torchrun("train", "--data", str(story_page), "--out", str(run), "--preset", "tiny", "--context-length",
                      "32", "--batch-size", "8", "--max-steps", "4", "--eval-freq", "3", "--eval-iter", "1",
                      "--eval-task", f"mc:{tasks}", "--eval-task-every", "2", "--sample-tokens", "3", "--dropout",
                      "0", "--save-every", "1", "--fsdp", "--device", "cpu", "--precision", "fp32")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(3 per epoch)" in result.stdout
    assert [r["step"] for r in records(run, "eval")] == [0, 3]
    assert [r["step"] for r in records(run, "task")] == [0, 2]
    assert [r["step"] for r in records(run, "sample")] == [2]
    assert [step for step, _ in complete_checkpoints(run)] == [1, 2, 3, 4, 4]

    expected = weights(run / "final")
    for later in ("final", "checkpoints/step-0000004"):
        shutil.rmtree(run / later)
    saved = json.loads((run / "config.json").read_text())["train"]
    train(TrainConfig.from_dict({**saved, "batch_size": 16, "fsdp": False}), resume=True, echo=lambda line: None)
    for name, tensor in weights(run / "final").items():
        torch.testing.assert_close(tensor, expected[name], atol=1e-5, rtol=0, msg=name)
