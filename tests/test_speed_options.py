"""Speed options that claim to be exact do not change what a model computes or saves."""

import json
import os
import subprocess
import sys

import pytest
import torch

from gptrain import (
    GPTModel,
    TrainConfig,
    count_parameters,
    generate,
    load_checkpoint,
    save_checkpoint,
    train,
)
from gptrain.model.vocab_padding import pad_vocab
from gptrain.store.integrity import write_manifest


@pytest.mark.parametrize("tied", [False, True])
def test_padded_vocabulary_changes_neither_outputs_nor_state(tiny_cfg, tied):
    cfg = tiny_cfg.replace(tie_embeddings=tied)
    torch.manual_seed(0)
    model = GPTModel(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (2, 9))
    with torch.no_grad():
        before = model(x)
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    pad_vocab(model, 64)
    assert model.out_head.rows == 50304 and (model.out_head.weight is model.tok_emb.weight) == tied
    with torch.no_grad():
        after = model(x)
    assert after.shape == before.shape
    torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-6)
    state = model.state_dict()
    assert state.keys() == state_before.keys()
    assert all(torch.equal(state[k], v) for k, v in state_before.items())
    assert count_parameters(model) == count_parameters(GPTModel(cfg))
    fresh = pad_vocab(GPTModel(cfg), 64)
    fresh.load_state_dict(state_before)  # an unpadded state dict loads into a padded model
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), before, atol=1e-6, rtol=1e-6)
    idx = torch.tensor([[1, 2, 3]])
    assert torch.equal(generate(model, idx, 8, cfg.context_length),
                       generate(_unpadded_copy(cfg, state_before), idx, 8, cfg.context_length))


def _unpadded_copy(cfg, state):
    model = GPTModel(cfg).eval()
    model.load_state_dict(state)
    return model


def test_padded_training_keeps_the_losses_and_writes_unpadded_checkpoints(tmp_path, story_page):
    def run(name, pad):
        return train(TrainConfig(data=str(story_page), out=str(tmp_path / name), preset="tiny", context_length=32,
                                 batch_size=4, max_steps=6, eval_freq=3, eval_iter=1, device="cpu", sample_tokens=0,
                                 precision="fp32", dropout=0.0, pad_vocab=pad), echo=lambda line: None)
    plain, padded = run("plain", False), run("padded", True)
    assert padded["train_losses"] == pytest.approx(plain["train_losses"], abs=1e-5)
    a, b = load_checkpoint(tmp_path / "plain"), load_checkpoint(tmp_path / "padded")
    assert b.out_head.weight.shape == a.out_head.weight.shape
    for name, tensor in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[name], tensor, atol=1e-5, rtol=1e-4)
    assert json.loads((tmp_path / "padded" / "config.json").read_text())["train"]["pad_vocab"] is True


def test_saving_a_padded_model_gives_the_unpadded_checkpoint(tmp_path, tiny_cfg):
    model = GPTModel(tiny_cfg)
    save_checkpoint(model, tmp_path / "plain")
    save_checkpoint(pad_vocab(model, 64), tmp_path / "padded")
    assert (tmp_path / "plain" / "model.safetensors").read_bytes() == (tmp_path / "padded" / "model.safetensors").read_bytes()


def test_keeping_freed_memory_changes_no_number(tmp_path, story_page):
    """retain_freed_memory only changes where buffers come from: the losses are bit-identical."""
    script = (
        "import json, sys; import gptrain.core.runtime as r\n"
        "if sys.argv[1] == 'off': r.retain_freed_memory = lambda *a, **k: False\n"
        "from gptrain import TrainConfig, train\n"
        f"s = train(TrainConfig(data={str(story_page)!r}, out=sys.argv[2], preset='tiny', context_length=32, "
        "batch_size=4, max_steps=6, eval_freq=3, eval_iter=1, device='cpu', sample_tokens=0, precision='fp32'), "
        "echo=lambda line: None)\n"
        "print(json.dumps(s['train_losses'] + s['val_losses']))\n")
    losses = []
    for mode in ("on", "off"):
        out = subprocess.run([sys.executable, "-c", script, mode, str(tmp_path / mode)], capture_output=True,
                             text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert out.returncode == 0, out.stderr
        losses.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert losses[0] == losses[1]


def test_a_run_saved_with_padded_optimizer_states_resumes_exactly(tmp_path, story_page):
    """Runs that padded the vocabulary in the parameters saved 50,304-row head and embedding states
    (the parameters now keep the vocabulary's rows): such a run still resumes, and continues as it
    would have (fused AdamW reads the states' first rows; the padded ones were zero)."""
    def run(name, steps, **extra):
        return train(TrainConfig(data=str(story_page), out=str(tmp_path / name), preset="tiny", context_length=32,
                                 batch_size=4, max_steps=steps, eval_freq=2, eval_iter=1, device="cpu",
                                 sample_tokens=0, precision="fp32", dropout=0.0, pad_vocab=True), echo=lambda line: None,
                     **extra)
    straight = run("straight", 4)
    run("parted", 2)
    for state_file in (tmp_path / "parted").rglob("training_state.pt"):
        saved = torch.load(state_file, weights_only=True)
        for state in saved.get("optimizer", {"state": {}})["state"].values():
            for key, value in state.items():
                if value.dim() and value.shape[0] == 50257:
                    state[key] = torch.cat([value, value.new_zeros(50304 - 50257, *value.shape[1:])])
        torch.save(saved, state_file)
        write_manifest(state_file.parent)
    resumed = run("parted", 4, resume=True)
    assert resumed["train_losses"][-1] == straight["train_losses"][-1]
