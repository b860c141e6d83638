import json
import math

import pytest
import torch

from gptrain import GPTModel, TrainConfig, calc_loss_batch, evaluate_model, create_dataloader_v1, plot_losses
from gptrain import load_checkpoint, train
from gptrain.training.optim import lr_at, make_optimizer


def tiny_run(tmp_path, verdict_path, **overrides) -> TrainConfig:
    settings = dict(data=str(verdict_path), out=str(tmp_path / "run"), preset="tiny", context_length=32,
                    batch_size=4, epochs=2, eval_freq=5, eval_iter=2, device="cpu", sample_tokens=5, lr=1e-3,
                    precision="fp32")
    return TrainConfig(**(settings | overrides))


def test_loss_falls_when_overfitting_one_batch(tiny_cfg, tokenizer, verdict_text):
    torch.manual_seed(0)
    model = GPTModel(tiny_cfg)
    x, y = next(iter(create_dataloader_v1(verdict_text, batch_size=2, max_length=32, stride=32)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = calc_loss_batch(x, y, model, "cpu").item()
    for _ in range(60):
        optimizer.zero_grad()
        loss = calc_loss_batch(x, y, model, "cpu")
        loss.backward()
        optimizer.step()
    assert abs(first - math.log(tiny_cfg.vocab_size)) < 0.3
    assert loss.item() < 0.5 < first


def test_evaluate_model_restores_train_mode(tiny_cfg, verdict_text):
    model = GPTModel(tiny_cfg).train()
    loader = create_dataloader_v1(verdict_text[:3000], batch_size=2, max_length=32, stride=32)
    train_loss, val_loss = evaluate_model(model, loader, loader, "cpu", eval_iter=1)
    assert model.training and train_loss > 0 and val_loss > 0


def test_plot_losses_writes_a_png(tmp_path):
    path = plot_losses([0, 1, 2], [0, 512, 1024], [10.0, 6.0, 4.0], [10.0, 7.0, 6.5], tmp_path / "loss.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]


def test_warmup_then_cosine_to_min_lr():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, cosine=True)
    assert lr_at(0, cfg, 110) == pytest.approx(1e-4)
    assert lr_at(9, cfg, 110) == pytest.approx(1e-3)
    assert lr_at(60, cfg, 110) == pytest.approx(5.5e-4)
    assert lr_at(110, cfg, 110) == pytest.approx(1e-4)
    assert lr_at(50, TrainConfig(lr=4e-4), 90) == 4e-4


def test_weight_decay_only_on_matrices(tiny_cfg):
    optimizer = make_optimizer(GPTModel(tiny_cfg), TrainConfig(weight_decay=0.1))
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() == 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])


def test_run_writes_metrics_plot_and_checkpoints(tmp_path, story_page):
    summary = train(tiny_run(tmp_path, story_page), echo=lambda line: None)
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} == {"config.json", "train.toml", "metrics.jsonl", "loss.png", "report.html", "best", "final"}
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in events if e["event"] == "eval"]
    samples = [e for e in events if e["event"] == "sample"]
    steps_per_epoch = summary["steps"] // 2
    assert [e["step"] for e in evals] == sorted({*range(0, summary["steps"], 5), summary["steps"] - 1})
    assert len(samples) == 2 and samples[0]["text"].startswith("Every effort moves you")
    assert evals[-1]["train_loss"] < evals[0]["train_loss"]
    assert evals[-1]["tokens_seen"] == (evals[-1]["step"] + 1) * 4 * 32
    assert summary["tokens_seen"] == steps_per_epoch * 2 * 4 * 32
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["context_length"] == 32 and saved["train"]["preset"] == "tiny"
    final = load_checkpoint(run)
    assert final.cfg.context_length == 32
    best_val = min(e["val_loss"] for e in evals)
    assert json.loads((run / "best" / "config.json").read_text())["train"]["seed"] == 123
    assert (run / "final" / "training_state.pt").exists()
    assert best_val == pytest.approx(min(summary["val_losses"]))


def test_same_seed_same_run(tmp_path, story_page):
    a = train(tiny_run(tmp_path / "a", story_page, epochs=1), echo=lambda line: None)
    b = train(tiny_run(tmp_path / "b", story_page, epochs=1), echo=lambda line: None)
    assert a["train_losses"] == b["train_losses"] and a["val_losses"] == b["val_losses"]
    c = train(tiny_run(tmp_path / "c", story_page, epochs=1, seed=7), echo=lambda line: None)
    assert c["train_losses"] != a["train_losses"]


def test_refuses_to_overwrite_a_run(tmp_path, story_page):
    cfg = tiny_run(tmp_path, story_page, epochs=1)
    train(cfg, echo=lambda line: None)
    with pytest.raises(ValueError, match="already holds a run"):
        train(cfg, echo=lambda line: None)
    train(cfg, overwrite=True, echo=lambda line: None)


def test_batch_larger_than_the_split(tmp_path, story_page):
    with pytest.raises(ValueError, match="fewer than one batch"):
        train(tiny_run(tmp_path, story_page, batch_size=1000), echo=lambda line: None)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("bad", [dict(batch_size=0), dict(lr=-1.0), dict(train_ratio=1.0), dict(preset="nope"),
                                 dict(grad_clip=0.0), dict(epochs=0), dict(context_length=0)])
def test_bad_settings(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)


def test_auto_precision_is_saved_resolved(tmp_path, story_page):
    from gptrain.core.runtime import cpu_has_native_bf16
    train(tiny_run(tmp_path, story_page, epochs=1, precision="auto"), echo=lambda line: None)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train"]["precision"]
    assert saved == ("bf16" if cpu_has_native_bf16() else "fp32")


def test_overfitting_is_train_falling_while_val_rises():
    from gptrain.training.run_eval import overfitting
    assert overfitting([5.0, 4.0, 3.0], [6.0, 6.1, 6.2])
    assert not overfitting([5.0, 4.0, 3.0], [6.0, 6.1, 6.05])  # val dipped
    assert not overfitting([5.0, 5.1, 3.0], [6.0, 6.1, 6.2])  # train did not fall every time
    assert not overfitting([5.0, 4.0], [6.0, 6.1])


def test_early_stopping_keeps_best_and_warns_about_overfitting(tmp_path, verdict_text):
    # A tiny model trained hard on a page of the story memorises it: val rises while train keeps falling.
    page = tmp_path / "page.txt"
    page.write_text(verdict_text[:6000], encoding="utf-8")
    cfg = tiny_run(tmp_path, page, epochs=100, lr=1e-2, eval_freq=4, early_stop_patience=3, sample_tokens=0)
    lines = []
    summary = train(cfg, echo=lines.append)
    assert summary["early_stopped"] and summary["steps"] < 100 * 10  # the budget: 100 epochs of 10 steps
    assert (summary["steps"] - 1) % 4 == 0  # it stopped right after an evaluation
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in events if e["event"] == "eval"]
    stop = [e for e in events if e["event"] == "early_stop"]
    assert len(stop) == 1 and stop[0]["step"] == evals[-1]["step"]
    best = min(evals, key=lambda e: e["val_loss"])
    assert stop[0]["best_step"] == best["step"] == summary["best_step"]
    assert [e["step"] for e in evals].index(best["step"]) == len(evals) - 1 - 3  # three evaluations without progress
    best_saved = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert best_saved["step"] == best["step"] + 1  # completed updates
    assert (tmp_path / "run" / "final").exists()
    assert any(line.startswith("Early stopping after step") for line in lines)
    warnings = [e for e in events if e["event"] == "warning"]
    assert warnings and "memorising" in warnings[0]["text"]
    assert any(line.startswith("Warning: validation loss has risen") for line in lines)


def test_csv_logger_mirrors_the_jsonl(tmp_path, story_page):
    import csv
    train(tiny_run(tmp_path, story_page, epochs=1, logger=("jsonl", "csv")), echo=lambda line: None)
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv", encoding="utf-8")))
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["event"] for r in rows] == [e["event"] for e in events]
    first_eval = next(r for r in rows if r["event"] == "eval")
    assert float(first_eval["val_loss"]) == next(e for e in events if e["event"] == "eval")["val_loss"]


def test_tensorboard_logger_needs_its_extra_or_writes_events(tmp_path, story_page):
    cfg = tiny_run(tmp_path, story_page, epochs=1, logger=("tensorboard",))
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match=r"pip install 'gptrain\[tensorboard\]'"):
            train(cfg, echo=lambda line: None)
        return
    train(cfg, echo=lambda line: None)
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_unknown_logger_is_refused():
    with pytest.raises(ValueError, match="unknown --logger neptune"):
        TrainConfig(logger=("neptune",))
