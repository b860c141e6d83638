"""Optimizers (AdamW, Muon + AdamW) and learning-rate schedules, alone and inside gptrain train."""

import copy as copy_module
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptrain import GPTModel, TrainConfig, load_checkpoint, train
from gptrain.core.errors import GptrainError
from gptrain.training.optim import MuonWithAdamW, lr_at, make_optimizer, set_lr
from gptrain.training.optim import make_optimizer as make_optimizer_from_train


def quiet(line):
    pass


def run_cfg(data, out, **overrides) -> TrainConfig:
    settings = dict(data=str(data), out=str(out), preset="tiny", context_length=32, batch_size=4, max_steps=8,
                    eval_freq=4, eval_iter=1, device="cpu", sample_tokens=0, lr=2e-3, warmup_steps=2,
                    schedule="wsd", decay_fraction=0.5, min_lr=1e-4, dropout=0.1, precision="fp32",
                    optimizer="muon", muon_lr=1e-2)
    return TrainConfig(**(settings | overrides))


def weights(run_dir, name="final"):
    return load_checkpoint(Path(run_dir) / name).state_dict()


def test_wsd_is_warmup_then_constant_then_linear_decay_to_min_lr():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, schedule="wsd", decay_fraction=0.2)
    assert lr_at(0, cfg, 110) == pytest.approx(1e-4)
    assert lr_at(9, cfg, 110) == pytest.approx(1e-3)
    assert lr_at(89, cfg, 110) == 1e-3  # 20 decay steps = 20% of the 100 after warmup
    assert lr_at(90, cfg, 110) == pytest.approx(1e-3 - 0.9e-3 / 20)
    assert lr_at(99, cfg, 110) == pytest.approx(0.55e-3)
    assert lr_at(109, cfg, 110) == pytest.approx(1e-4)
    # --lr-decay-steps fixes the horizon, so a shorter first part resumes on the same curve
    assert lr_at(89, TrainConfig(lr=1e-3, schedule="wsd", lr_decay_steps=110, warmup_steps=10), 50) == 1e-3


def test_cosine_flag_is_a_synonym_and_bad_settings_are_one_line_errors():
    assert TrainConfig(cosine=True).schedule == "cosine"
    cosine = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, schedule="cosine")
    assert lr_at(60, cosine, 110) == pytest.approx(5.5e-4)
    for settings, message in [(dict(cosine=True, schedule="wsd"), "contradicts --schedule wsd"),
                              (dict(schedule="linear"), "--schedule must be one of constant, cosine, wsd"),
                              (dict(decay_fraction=0.0), "--decay-fraction must be in"),
                              (dict(optimizer="sgd"), "--optimizer must be one of adamw, muon"),
                              (dict(optimizer="muon", muon_lr=-1.0), "--muon-lr must be a positive"),
                              (dict(muon_lr=0.01), "add --optimizer muon")]:
        with pytest.raises(GptrainError, match=message) as error:
            TrainConfig(**settings)
        assert "\n" not in str(error.value)


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest(tiny_cfg):
    model = GPTModel(tiny_cfg.replace(qkv_bias=True))
    optimizer = make_optimizer(model, TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02, weight_decay=0.1))
    assert isinstance(optimizer, MuonWithAdamW) and make_optimizer_from_train is make_optimizer
    names = {id(p): name for name, p in model.named_parameters()}
    muon = {names[id(p)] for p in optimizer.muon.param_groups[0]["params"]}
    adamw = {names[id(p)] for group in optimizer.adamw.param_groups for p in group["params"]}
    assert muon == {name for name, p in model.named_parameters() if name.startswith("trf_blocks") and p.dim() == 2}
    assert adamw == set(names.values()) - muon
    assert {"tok_emb.weight", "pos_emb.weight", "out_head.weight", "final_norm.weight"} <= adamw
    assert any(".bias" in name and name.startswith("trf_blocks") for name in adamw)
    # One learning rate from the schedule, each group at its own height
    set_lr(optimizer, 5e-4)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([5e-4, 5e-4, 1e-2])
    assert optimizer.muon.param_groups[0]["lr"] == pytest.approx(1e-2)


def test_muon_only_optimizes_parameters_that_require_grad(tiny_cfg):
    model = GPTModel(tiny_cfg)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("trf_blocks.0.att"))
    optimizer = make_optimizer(model, TrainConfig(optimizer="muon"))
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in model.parameters() if p.requires_grad}


def test_muon_state_dict_round_trip_continues_identically(tiny_cfg):
    torch.manual_seed(1)
    model = GPTModel(tiny_cfg)
    cfg = TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02)
    batch = torch.randint(0, tiny_cfg.vocab_size, (2, 16))

    def step(m, opt):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten()).backward()
        opt.step()

    optimizer = make_optimizer(model, cfg)
    step(model, optimizer)
    copy = GPTModel(tiny_cfg)
    copy.load_state_dict(model.state_dict())
    copy_optimizer = make_optimizer(copy, cfg)
    copy_optimizer.load_state_dict(copy_module.deepcopy(optimizer.state_dict()))  # as a checkpoint would hold it
    set_lr(copy_optimizer, 1e-3)
    for m, opt in ((model, optimizer), (copy, copy_optimizer)):
        step(m, opt)
    for (name, a), b in zip(model.state_dict().items(), copy.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(GptrainError, match="not a Muon run's"):
        copy_optimizer.load_state_dict(make_optimizer(GPTModel(tiny_cfg), TrainConfig()).state_dict())


def test_muon_updates_block_matrices_by_an_orthogonalised_step(tiny_cfg):
    torch.manual_seed(2)
    model = GPTModel(tiny_cfg)
    optimizer = make_optimizer(model, TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02, weight_decay=0.0))
    batch = torch.randint(0, tiny_cfg.vocab_size, (4, 17))
    matrix, embedding = model.trf_blocks[0].ff.layers[0].weight, model.tok_emb.weight
    before = [matrix.detach().clone(), embedding.detach().clone()]
    torch.nn.functional.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten()).backward()
    optimizer.step()
    # Newton-Schulz moves the singular values of the update towards 1 (times the RMS-matching scale);
    # a gradient's singular values spread over orders of magnitude
    update = (before[0] - matrix.detach()) / (0.02 * 0.2 * max(matrix.shape) ** 0.5)
    singular_values = torch.linalg.svdvals(update)
    assert 0.6 < singular_values.quantile(0.1) and singular_values.max() < 1.3
    gradient_values = torch.linalg.svdvals(matrix.grad)
    assert gradient_values.quantile(0.1) < 0.1 * gradient_values.max()
    # AdamW's first step moves each touched embedding entry by lr (the sign of its gradient)
    moved = (before[1] - embedding.detach()).abs()
    assert moved.max() == pytest.approx(1e-3, rel=1e-3)


def test_muon_with_gradient_accumulation_equals_one_big_batch(story_page, tmp_path):
    big_cfg = run_cfg(story_page, tmp_path / "big", batch_size=8, dropout=0.0, max_steps=5)
    big = train(big_cfg, echo=quiet)
    accumulated = train(run_cfg(story_page, tmp_path / "acc", batch_size=2, grad_accum=4, dropout=0.0, max_steps=5),
                        echo=quiet)
    assert accumulated["train_losses"] == pytest.approx(big["train_losses"], abs=1e-4)
    torch.manual_seed(big_cfg.seed)
    initial = GPTModel(big_cfg.model_config()).state_dict()
    # Newton-Schulz runs in bf16, so summation-order noise in the gradient can flip a rounding:
    # the two runs agree to a small share of how far training moved each matrix.
    for name, tensor in weights(tmp_path / "big").items():
        if name.startswith("trf_blocks") and tensor.dim() == 2:
            moved = (tensor - initial[name]).abs().max()
            assert (weights(tmp_path / "acc")[name] - tensor).abs().max() < 0.05 * moved, name


def test_muon_stop_then_resume_is_bit_identical(story_page, tmp_path):
    straight = tmp_path / "straight"
    summary = train(run_cfg(story_page, straight), echo=quiet)
    assert summary["train_losses"][-1] < summary["train_losses"][0] - 0.1
    saved = json.loads((straight / "config.json").read_text())["train"]
    assert (saved["optimizer"], saved["muon_lr"], saved["schedule"]) == ("muon", 1e-2, "wsd")
    parted = tmp_path / "parted"
    train(run_cfg(story_page, parted, max_steps=3, lr_decay_steps=8), echo=quiet)
    resumed = train(run_cfg(story_page, parted, max_steps=8, lr_decay_steps=8), resume=True, echo=quiet)
    assert resumed["steps"] == 8
    for name, tensor in weights(straight).items():
        assert torch.equal(weights(parted)[name], tensor), name
    with pytest.raises(GptrainError, match=r"--optimizer 'adamw' \(trained with 'muon'\)"):
        train(run_cfg(story_page, parted, optimizer="adamw", muon_lr=None), resume=True, echo=quiet)


def test_muon_in_bf16_and_from_the_command_line(story_page, tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "-m", "gptrain", "train", "--data", str(story_page), "--out", str(out), "--preset", "tiny",
         "--context-length", "32", "--batch-size", "4", "--max-steps", "4", "--eval-freq", "2", "--eval-iter", "1",
         "--sample-tokens", "0", "--device", "cpu", "--precision", "bf16", "--optimizer", "muon",
         "--muon-lr", "0.02", "--schedule", "wsd", "--decay-fraction", "0.5"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    saved = json.loads((out / "config.json").read_text())["train"]
    assert (saved["optimizer"], saved["muon_lr"], saved["schedule"], saved["precision"]) == ("muon", 0.02, "wsd", "bf16")
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["event"] == "train"]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    bad = subprocess.run([sys.executable, "-m", "gptrain", "train", "--schedule", "wsd", "--cosine",
                          "--out", str(tmp_path / "bad")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "contradicts" in bad.stderr


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_optimizer_settings_changed_on_resume_reach_the_parameter_groups(story_page, tmp_path, optimizer):
    """Loading the saved optimizer state brings back the saved run's groups; the resumed run's
    --weight-decay, --lr and --muon-lr must replace them, not only be announced."""
    muon = optimizer == "muon"
    first = dict(optimizer=optimizer, muon_lr=3e-2 if muon else None, weight_decay=0.1, lr=2e-3,
                 schedule="constant", warmup_steps=0, eval_freq=100)
    train(run_cfg(story_page, tmp_path, max_steps=2, **first), echo=quiet)
    lines = []
    changed = first | dict(weight_decay=0.05, lr=1e-3, muon_lr=1e-2 if muon else None)
    train(run_cfg(story_page, tmp_path, max_steps=3, **changed), resume=True, echo=lines.append)
    assert "Changed on resume: weight_decay 0.1 -> 0.05" in lines
    saved = torch.load(tmp_path / "final" / "training_state.pt", weights_only=True)["optimizer"]
    groups = [*saved["adamw"]["param_groups"], *saved["muon"]["param_groups"]] if muon else saved["param_groups"]
    # matrices, then norms and biases (never decayed), then Muon's matrices at --muon-lr
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0, 0.05][:len(groups)]
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 1e-3, 1e-2][:len(groups)])
