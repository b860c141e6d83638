"""best/ is kept in memory and written with the checkpoints and at the end."""

import json

import torch

from gptrain import TrainConfig, load_checkpoint, train


def run_cfg(data, out, **overrides) -> TrainConfig:
    settings = dict(data=str(data), out=str(out), preset="tiny", context_length=32, batch_size=4, max_steps=7,
                    eval_freq=5, eval_iter=1, device="cpu", sample_tokens=0, lr=2e-3, dropout=0.0, precision="fp32")
    return TrainConfig(**(settings | overrides))


def test_best_holds_the_weights_of_the_best_evaluation(story_page, tmp_path):
    summary = train(run_cfg(story_page, tmp_path / "run"), echo=lambda line: None)
    losses = summary["val_losses"]  # evaluated at steps 0, 5 and the last, 6
    best_step = [0, 5, 6][losses.index(min(losses))]
    assert summary["best_step"] == best_step > 0
    best = tmp_path / "run" / "best"
    assert json.loads((best / "config.json").read_text())["step"] == best_step + 1
    # the same run stopped after the best step ends with the weights best/ holds
    train(run_cfg(story_page, tmp_path / "short", max_steps=best_step + 1), echo=lambda line: None)
    short = load_checkpoint(tmp_path / "short" / "final").state_dict()
    for name, tensor in load_checkpoint(best).state_dict().items():
        assert torch.equal(short[name], tensor), name
