import json
import os

import pytest
import torch

from gptrain import GPTModel, export_hf, load_checkpoint, save_checkpoint
from gptrain.core.errors import GptrainError
from gptrain.store.checkpoint import load_training_state, resolve_checkpoint
from gptrain.store.integrity import verify_path
from gptrain.store.layout import checkpoint_at
from gptrain.model.lora import add_lora, export_peft_adapter
from gptrain.data.prepare import prepare


def test_round_trip_rebuilds_the_model_from_its_own_config(tmp_path, tiny_cfg):
    model = GPTModel(tiny_cfg.replace(qkv_bias=True))
    save_checkpoint(model, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "manifest.json", "model.safetensors"]
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.cfg == model.cfg and not loaded.training
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    x = torch.randint(0, tiny_cfg.vocab_size, (1, 8))
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))


def test_tied_head_is_stored_once_and_retied(tmp_path, tiny_cfg):
    model = GPTModel(tiny_cfg.replace(tie_embeddings=True))
    save_checkpoint(model, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.out_head.weight is loaded.tok_emb.weight
    assert torch.equal(loaded.tok_emb.weight, model.tok_emb.weight)


def test_optimizer_state_when_asked(tmp_path, tiny_cfg):
    model = GPTModel(tiny_cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    optimizer.step()
    save_checkpoint(model, tmp_path / "ckpt", optimizer, training_state={"step": 1, "tokens_seen": 3})
    loaded, opt_state = load_checkpoint(tmp_path / "ckpt", with_optimizer=True)
    fresh = torch.optim.AdamW(loaded.parameters(), lr=1e-3)
    fresh.load_state_dict(opt_state)
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert load_training_state(tmp_path / "ckpt")["step"] == 1
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["tokens_seen"] == 3
    save_checkpoint(model, tmp_path / "weights-only")
    assert load_checkpoint(tmp_path / "weights-only", with_optimizer=True)[1] is None


def test_saves_the_unwrapped_model(tmp_path, tiny_cfg):
    model = GPTModel(tiny_cfg)
    wrapper = torch.nn.Module()
    wrapper._orig_mod = model  # what torch.compile's wrapper looks like
    save_checkpoint(wrapper, tmp_path / "ckpt")
    from safetensors import safe_open
    with safe_open(tmp_path / "ckpt" / "model.safetensors", "pt") as f:
        assert all(not k.startswith(("_orig_mod.", "module.")) for k in f.keys())


def test_overwrite_leaves_no_temporary_directories(tmp_path, tiny_cfg):
    for _ in range(2):
        save_checkpoint(GPTModel(tiny_cfg), tmp_path / "ckpt")
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_run_directory_resolves_to_final(tmp_path, tiny_cfg):
    save_checkpoint(GPTModel(tiny_cfg), tmp_path / "run" / "final")
    assert resolve_checkpoint(tmp_path / "run") == tmp_path / "run" / "final"


@pytest.mark.parametrize("damage,match", [
    (lambda d: None, None),
    (lambda d: (d / "model.safetensors").unlink(), "no model.safetensors"),
    (lambda d: (d / "config.json").unlink(), "not a gptrain checkpoint"),
    (lambda d: (d / "config.json").write_text("{not json"), "is damaged"),
    (lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 20), r"model.safetensors is truncated \(20 bytes"),
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:5000]),
     "model.safetensors is truncated"),
    # a checkpoint from before manifests: safetensors itself notices
    (lambda d: [(d / "manifest.json").unlink(), (d / "model.safetensors").write_bytes(b"\x00" * 20)],
     "damaged or not a safetensors file"),
    (lambda d: (d / "manifest.json").write_text("{"), "manifest.json is damaged"),
])
def test_damaged_checkpoints_are_clear_errors(tmp_path, tiny_cfg, damage, match):
    save_checkpoint(GPTModel(tiny_cfg), tmp_path / "ckpt")
    damage(tmp_path / "ckpt")
    if match is None:
        load_checkpoint(tmp_path / "ckpt")
    else:
        with pytest.raises(ValueError, match=match):
            load_checkpoint(tmp_path / "ckpt")


def test_weights_of_another_size_name_the_tensor_and_shapes(tmp_path, tiny_cfg):
    save_checkpoint(GPTModel(tiny_cfg), tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    config["model"]["emb_dim"] = 64
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"tensor tok_emb.weight has shape \(50257, 32\) but the config needs \(50257, 64\)"):
        load_checkpoint(tmp_path / "ckpt")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_every_written_file_has_the_permissions_the_umask_allows(tmp_path, tiny_cfg, verdict_text, umask):
    """A teammate can load a shared checkpoint or export: safetensors alone would create its files 0600."""
    (tmp_path / "text.txt").write_text(verdict_text[:2000], encoding="utf-8")
    previous = os.umask(umask)
    try:
        model = GPTModel(tiny_cfg)
        save_checkpoint(model, tmp_path / "out" / "ckpt", torch.optim.AdamW(model.parameters()),
                        training_state={"step": 1, "tokens_seen": 8})
        export_hf(model, tmp_path / "out" / "hf")
        add_lora(model, rank=2)
        save_checkpoint(model, tmp_path / "out" / "lora")
        export_peft_adapter(model, tmp_path / "out" / "peft")
        prepare([str(tmp_path / "text.txt")], tmp_path / "out" / "shards", workers=1)
    finally:
        os.umask(previous)
    written = sorted((tmp_path / "out").rglob("*"))
    assert {p.name for p in written} >= {"model.safetensors", "adapter.safetensors", "adapter_model.safetensors",
                                         "training_state.pt", "train.bin", "meta.json", "vocab.json"}
    modes = {p.relative_to(tmp_path / "out").as_posix(): oct(p.stat().st_mode & 0o777) for p in written}
    assert modes == {name: oct((0o777 if (tmp_path / "out" / name).is_dir() else 0o666) & ~umask)
                     for name in modes}


def test_one_rule_recognises_a_checkpoint_for_loading_and_for_verifying(tmp_path, tiny_cfg):
    """load_gpt2 and info --verify used to recognise checkpoints each their own way: verify took a
    Hugging Face folder for a checkpoint written before manifests."""
    model = GPTModel(tiny_cfg.replace(qkv_bias=True))
    run = tmp_path / "run"
    save_checkpoint(model, run / "final")
    assert checkpoint_at(run) == run / "final"
    assert checkpoint_at(run / "final") == run / "final"
    assert checkpoint_at(run / "final" / "model.safetensors") == run / "final"
    hf = export_hf(model, tmp_path / "hf")
    assert checkpoint_at(hf) is None and checkpoint_at(hf / "model.safetensors") is None
    with pytest.raises(GptrainError, match="holds no checkpoint"):
        verify_path(hf)
    (run / "final" / "config.json").write_text("{damaged")  # the manifest still marks it a checkpoint
    assert checkpoint_at(run) == run / "final"
    assert [(folder, len(problems)) for folder, problems in verify_path(run)] == [(run / "final", 1)]
