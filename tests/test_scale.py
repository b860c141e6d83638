"""Training at scale on a CPU: shards, gradient accumulation, exact resume, torchrun, faults."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gptrain import TrainConfig, load_checkpoint, train
from gptrain.data.prepare import prepare
from gptrain.store.checkpoint import complete_checkpoints


def quiet(line):
    pass


@pytest.fixture(scope="module")
def shards(tmp_path_factory, verdict_text):
    folder = tmp_path_factory.mktemp("corpus")
    paragraphs = [p for p in verdict_text.split("\n\n") if p.strip()]
    for i in range(0, len(paragraphs), 4):
        (folder / f"part{i:03d}.txt").write_text("\n\n".join(paragraphs[i:i + 4]), encoding="utf-8")
    out = tmp_path_factory.mktemp("shards") / "verdict"
    prepare([str(folder)], out, val_fraction=0.15, workers=1)
    return out


def run_cfg(shards, out, **overrides) -> TrainConfig:
    settings = dict(data=str(shards), out=str(out), preset="tiny", context_length=32, batch_size=4,
                    max_steps=12, eval_freq=4, eval_iter=2, device="cpu", sample_tokens=0, lr=2e-3,
                    warmup_steps=3, cosine=True, min_lr=1e-4, dropout=0.1, precision="fp32")
    return TrainConfig(**(settings | overrides))


def weights(run_dir, name="final"):
    return load_checkpoint(Path(run_dir) / name).state_dict()


def records(run_dir, event):
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    drop = {"elapsed_s", "tokens_per_s", "mfu"}
    return [{k: v for k, v in r.items() if k not in drop} for r in rows if r["event"] == event]


def test_trains_from_memmapped_shards(shards, tmp_path):
    summary = train(run_cfg(shards, tmp_path / "run"), echo=quiet)
    assert summary["steps"] == 12 and summary["tokens_seen"] == 12 * 4 * 32
    evals = records(tmp_path / "run", "eval")
    assert [e["step"] for e in evals] == [0, 4, 8, 11] and evals[-1]["train_loss"] < evals[0]["train_loss"]
    assert len(records(tmp_path / "run", "train")) == 12


def test_budget_in_tokens_and_epochs(shards, tmp_path):
    by_tokens = train(run_cfg(shards, tmp_path / "a", max_steps=None, max_tokens=1000), echo=quiet)
    assert by_tokens["steps"] == 8  # ceil(1000 / 128)
    by_epochs = train(run_cfg(shards, tmp_path / "b", max_steps=None, epochs=1, batch_size=16), echo=quiet)
    meta = json.loads((shards / "meta.json").read_text())
    assert by_epochs["steps"] == (meta["train_tokens"] - 1) // 32 // 16


def test_gradient_accumulation_equals_one_big_batch(shards, tmp_path):
    big = train(run_cfg(shards, tmp_path / "big", batch_size=8, dropout=0.0), echo=quiet)
    accumulated = train(run_cfg(shards, tmp_path / "acc", batch_size=2, grad_accum=4, dropout=0.0), echo=quiet)
    tokens = train(run_cfg(shards, tmp_path / "tok", batch_size=4, global_batch_tokens=8 * 32, dropout=0.0),
                   echo=quiet)
    assert big["tokens_seen"] == accumulated["tokens_seen"] == tokens["tokens_seen"]
    for other in (accumulated, tokens):
        assert other["train_losses"] == pytest.approx(big["train_losses"], abs=1e-5)
    for name, tensor in weights(tmp_path / "big").items():
        torch.testing.assert_close(weights(tmp_path / "acc")[name], tensor, atol=2e-5, rtol=1e-4)


def test_stop_then_resume_is_bit_identical(shards, tmp_path):
    straight = tmp_path / "straight"
    train(run_cfg(shards, straight), echo=quiet)
    parted = tmp_path / "parted"
    first = train(run_cfg(shards, parted, max_steps=5, lr_decay_steps=12), echo=quiet)
    assert first["steps"] == 5
    resumed = train(run_cfg(shards, parted, max_steps=12, lr_decay_steps=12), resume=True, echo=quiet)
    assert resumed["steps"] == 12
    # the straight run's schedule spans its 12 steps, the same as lr_decay_steps=12
    for name, tensor in weights(straight).items():
        assert torch.equal(weights(parted)[name], tensor), name
    for event in ("eval", "train"):
        assert records(parted, event) == records(straight, event)
    assert json.loads((parted / "final" / "config.json").read_text())["step"] == 12


def test_resume_needs_a_checkpoint_and_the_same_batch(shards, tmp_path):
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        train(run_cfg(shards, tmp_path / "none"), resume=True, echo=quiet)
    train(run_cfg(shards, tmp_path / "run", max_steps=2), echo=quiet)
    with pytest.raises(ValueError, match="global batch of 8 sequences: it was trained with 4"):
        train(run_cfg(shards, tmp_path / "run", batch_size=8), resume=True, echo=quiet)
    with pytest.raises(ValueError, match="--context-length 16"):
        train(run_cfg(shards, tmp_path / "run", context_length=16), resume=True, echo=quiet)


def test_save_every_and_keep_last(shards, tmp_path):
    train(run_cfg(shards, tmp_path / "run", save_every=3, keep_last=2), echo=quiet)
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["step-0000009", "step-0000012"]
    assert [step for step, _ in complete_checkpoints(tmp_path / "run")] == [9, 12, 12]


def test_non_finite_loss_stops_before_the_update(shards, tmp_path):
    cfg = run_cfg(shards, tmp_path / "run", max_steps=60, lr=50.0, grad_clip=None, warmup_steps=0, cosine=False,
                  save_every=1, dropout=0.0)
    with pytest.raises(ValueError, match=r"the loss became nan at step (\d+), so training stopped before the update"):
        train(cfg, echo=quiet)
    assert not (tmp_path / "run" / "final").exists()
    last_step, last = complete_checkpoints(tmp_path / "run")[-1]
    model = load_checkpoint(last)
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())


# --- Processes: torchrun, signals, kills, full disks ---

def cli(*args, env=None, **kwargs):
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "gptrain", *args], capture_output=True, text=True,
                          env=full_env, timeout=240, **kwargs)


def start_cli(*args, output=subprocess.PIPE):
    """`cli` in the background, for tests that signal or kill the process."""
    return subprocess.Popen([sys.executable, "-m", *args], stdout=output, stderr=output, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def cli_args(shards, out, *extra):
    return ["train", "--data", str(shards), "--out", str(out), "--preset", "tiny", "--context-length", "32",
            "--eval-freq", "4", "--eval-iter", "2", "--device", "cpu", "--sample-tokens", "0", "--lr", "2e-3",
            "--dropout", "0", "--precision", "fp32", *extra]


def test_torchrun_two_processes_equal_one(shards, tmp_path):
    one = cli(*cli_args(shards, tmp_path / "one", "--batch-size", "4", "--max-steps", "8"))
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gptrain",
         *cli_args(shards, tmp_path / "two", "--batch-size", "2", "--max-steps", "8")],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=240)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "global batch 4 sequences = 128 tokens (2 x 32 per micro-batch, 1 micro-batches, 2 process(es))" in two.stdout
    assert two.stdout.count("Ep 1 (Step 000000)") == 1  # only rank 0 logs
    losses = lambda run: [r["loss"] for r in records(run, "train")]
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-5)
    assert [r["val_loss"] for r in records(tmp_path / "two", "eval")] == pytest.approx(
        [r["val_loss"] for r in records(tmp_path / "one", "eval")], abs=1e-5)
    for name, tensor in weights(tmp_path / "one").items():
        torch.testing.assert_close(weights(tmp_path / "two")[name], tensor, atol=1e-5, rtol=1e-5)


def wait_for(predicate, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def train_lines(out):
    path = Path(out) / "metrics.jsonl"
    return path.read_text().count('"event": "train"') if path.exists() else 0


def test_sigterm_saves_and_exits_0_then_resume_matches_a_straight_run(shards, tmp_path):
    straight = cli(*cli_args(shards, tmp_path / "straight", "--max-steps", "40", "--batch-size", "4"))
    assert straight.returncode == 0, straight.stderr
    proc = start_cli("gptrain", *cli_args(shards, tmp_path / "run", "--max-steps", "40", "--batch-size", "4"))
    assert wait_for(lambda: train_lines(tmp_path / "run") >= 3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Stopped by SIGTERM after step" in out and "--resume" in out
    stopped_at = complete_checkpoints(tmp_path / "run")[-1][0]
    assert 3 <= stopped_at < 40
    resumed = cli(*cli_args(shards, tmp_path / "run", "--max-steps", "40", "--batch-size", "4"), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resuming from {tmp_path / 'run' / 'checkpoints' / f'step-{stopped_at:07d}'}" in resumed.stdout
    for name, tensor in weights(tmp_path / "straight").items():
        assert torch.equal(weights(tmp_path / "run")[name], tensor), name
    assert records(tmp_path / "run", "train") == records(tmp_path / "straight", "train")


def test_sigkill_while_saving_leaves_the_previous_checkpoint_loadable(shards, tmp_path):
    out = tmp_path / "run"
    # A wider model makes each save take long enough to be caught in the middle of it.
    proc = start_cli("gptrain", *cli_args(shards, out, "--max-steps", "1000", "--batch-size", "1", "--save-every", "1",
                                          "--keep-last", "2", "--context-length", "16"), output=subprocess.DEVNULL)
    try:
        checkpoints = out / "checkpoints"
        assert wait_for(lambda: checkpoints.exists() and len(list(checkpoints.glob("step-*"))) >= 1)
        assert wait_for(lambda: any(p.name.startswith(".step-") for p in checkpoints.iterdir()), timeout=60)
    finally:
        proc.kill()
        proc.wait()
    step, path = complete_checkpoints(out)[-1]
    assert step >= 1
    model = load_checkpoint(path)
    assert model.cfg.context_length == 16
    resumed = cli(*cli_args(shards, out, "--max-steps", str(step + 2), "--batch-size", "1", "--context-length", "16",
                            "--save-every", "1"), "--resume")
    assert resumed.returncode == 0, resumed.stderr


def test_a_full_disk_is_a_clear_error_and_keeps_the_previous_checkpoint(shards, tmp_path):
    out = tmp_path / "run"
    first = cli(*cli_args(shards, out, "--max-steps", "2", "--save-every", "2", "--batch-size", "4"))
    assert first.returncode == 0, first.stderr
    before = weights(out / "checkpoints", "step-0000002")
    # Files may not grow past 1 MB: the next checkpoint (about 26 MB) cannot be written.
    limit = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
             "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20)); sys.argv[0] = 'gptrain'; "
             "runpy.run_module('gptrain', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", limit, *cli_args(shards, out, "--max-steps", "4", "--save-every", "2",
                                                                      "--batch-size", "4"), "--resume"],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=240)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write checkpoint" in lines[0] and "the previous one is kept" in lines[0]
    assert not list((out / "checkpoints").glob(".step-*"))
    after = weights(out / "checkpoints", "step-0000002")
    assert all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_tracks_fp32(shards, tmp_path, precision):
    base = train(run_cfg(shards, tmp_path / "fp32", max_steps=6, dropout=0.0), echo=quiet)
    mixed = train(run_cfg(shards, tmp_path / precision, max_steps=6, dropout=0.0, precision=precision), echo=quiet)
    assert mixed["train_losses"] == pytest.approx(base["train_losses"], abs=0.02)
    assert load_checkpoint(tmp_path / precision).tok_emb.weight.dtype == torch.float32


def test_compiled_model_trains_and_saves_plain_names(shards, tmp_path):
    eager = train(run_cfg(shards, tmp_path / "eager", max_steps=4, dropout=0.0), echo=quiet)
    compiled = train(run_cfg(shards, tmp_path / "compiled", max_steps=4, dropout=0.0, compile=True), echo=quiet)
    assert compiled["train_losses"] == pytest.approx(eager["train_losses"], abs=1e-3)
    from safetensors import safe_open
    with safe_open(tmp_path / "compiled" / "final" / "model.safetensors", "pt") as f:
        assert not any(key.startswith("_orig_mod") for key in f.keys())


def test_shard_bad_inputs(shards, tmp_path):
    import shutil
    other = tmp_path / "other-tokenizer"
    shutil.copytree(shards, other)
    meta = json.loads((other / "meta.json").read_text())
    meta["tokenizer"]["sha256"] = "0" * 64
    (other / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="was prepared with the tokenizer gpt2"):
        train(run_cfg(other, tmp_path / "a"), echo=quiet)

    truncated = tmp_path / "truncated"
    shutil.copytree(shards, truncated)
    with open(truncated / "train.bin", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(ValueError, match="incomplete, run gptrain prepare again"):
        train(run_cfg(truncated, tmp_path / "b"), echo=quiet)

    with pytest.raises(ValueError, match=r"val split\): the text has \d+ tokens, fewer than one window of 4096"):
        train(run_cfg(shards, tmp_path / "c", context_length=4096), echo=quiet)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("args,message", [
    (["--grad-accum", "0"], "--grad-accum must be a positive integer"),
    (["--global-batch-tokens", "100"], "--global-batch-tokens 100 is not a multiple of batch size x context x "
                                       "processes = 2 x 32 x 1 = 64"),
    (["--grad-accum", "2", "--global-batch-tokens", "128"], "give --grad-accum or --global-batch-tokens, not both"),
    (["--precision", "fp8"], "invalid choice: 'fp8'"),
    (["--max-steps", "-3"], "--max-steps must be a positive integer"),
])
def test_bad_training_flags(shards, tmp_path, args, message):
    result = cli(*cli_args(shards, tmp_path / "run", "--batch-size", "2", *args))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_sigint_also_saves_and_exits_0(shards, tmp_path):
    proc = start_cli("gptrain", *cli_args(shards, tmp_path / "run", "--max-steps", "400"))
    assert wait_for(lambda: train_lines(tmp_path / "run") >= 2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Stopped by SIGINT" in out
    assert complete_checkpoints(tmp_path / "run")


def test_sigterm_under_torchrun_stops_every_process_at_the_same_step(shards, tmp_path):
    out = tmp_path / "run"
    proc = start_cli("torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gptrain",
                     *cli_args(shards, out, "--batch-size", "2", "--max-steps", "2000"))
    assert wait_for(lambda: train_lines(out) >= 3)
    proc.send_signal(signal.SIGTERM)  # torchrun forwards it to both workers
    stdout, stderr = proc.communicate(timeout=120)
    assert stdout.count("Stopped by SIGTERM") == 1, stdout + stderr[-2000:]
    assert "ChildFailedError" not in stderr  # the workers exited 0
    step, path = complete_checkpoints(out)[-1]
    assert path.name == f"step-{step:07d}" and step >= 3
    resumed = cli(*cli_args(shards, out, "--batch-size", "4", "--max-steps", str(step + 2)), "--resume")
    assert resumed.returncode == 0, resumed.stderr  # one process with the same global batch continues it
