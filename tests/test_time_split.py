"""Where a run's wall time goes, its MFU, and best/ sharing final/'s weights when they are the same."""

import json
import os

import pytest
import torch

from gptrain import TrainConfig, load_checkpoint, train
from gptrain.core.download import cache_dir
from gptrain.core.peak import CACHE_FILE, cpu_matmul_peak, mfu_peak
from gptrain.store.integrity import verify_checkpoint


def test_the_end_record_splits_the_wall_time_and_gives_the_mfu(tmp_path, verdict_text):
    text = tmp_path / "short.txt"  # 4 steps an epoch, and one validation window
    text.write_text(verdict_text[:2500], encoding="utf-8")
    cfg = TrainConfig(data=str(text), out=str(tmp_path / "run"), preset="tiny", context_length=32,
                      batch_size=4, epochs=1, eval_freq=2, eval_iter=1, device="cpu", sample_tokens=3,
                      lr=1e-3, precision="fp32")
    summary = train(cfg, echo=lambda line: None)
    run = tmp_path / "run"
    end = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    split = end["time_split_s"]
    assert set(split) == {"startup", "steps", "evaluation", "sampling", "checkpoints", "other"}
    assert all(split[name] > 0 for name in ("startup", "steps", "evaluation", "sampling", "checkpoints"))
    assert sum(split.values()) == pytest.approx(end["wall_time_s"], abs=0.01)
    assert end["before_train_s"] >= 0
    assert end["peak_source"] == "measured matmul" and end["peak_flops"] > 0
    assert 0 < end["mfu"] <= 1
    assert (cache_dir() / CACHE_FILE).is_file()  # measured once per machine
    report = (run / "report.html").read_text()
    assert "checkpoint writes" in report and "measured matmul" in report

    # The best evaluation was the last step's, so best/ holds final/'s weights file, not a second copy.
    assert summary["best_step"] == summary["steps"] - 1
    assert os.path.samefile(run / "best" / "model.safetensors", run / "final" / "model.safetensors")
    assert verify_checkpoint(run / "best") == [] and verify_checkpoint(run / "final") == []
    best = json.loads((run / "best" / "config.json").read_text())
    assert best["step"] == summary["steps"]
    assert all(torch.equal(a, b) for a, b in zip(load_checkpoint(run / "best").state_dict().values(),
                                                 load_checkpoint(run / "final").state_dict().values()))


def test_the_cpu_peak_keeps_the_best_measurement_and_heals_a_low_one():
    measured = cpu_matmul_peak("fp32")
    assert measured > 1e8  # any CPU torch runs on multiplies faster than 0.1 GFLOP/s
    path = cache_dir() / CACHE_FILE
    [key] = json.loads(path.read_text())

    # A figure taken on a loaded machine: this run's own measurement replaces it, in the cache too.
    path.write_text(json.dumps({key: 1e6}))
    healed = cpu_matmul_peak("fp32")
    assert healed > 1e8 and json.loads(path.read_text()) == {key: healed}

    # A better earlier figure than any this machine can reach now is kept.
    path.write_text(json.dumps({key: 1e16}))
    assert mfu_peak(torch.device("cpu"), "fp32") == (1e16, "measured matmul")
    assert json.loads(path.read_text()) == {key: 1e16}
