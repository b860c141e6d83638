"""Exporting to Hugging Face's GPT-2 format: transformers loads the weights and the tokenizer."""

import json

import pytest
import torch

from gptrain import GPTModel, count_parameters, export_hf, get_tokenizer, load_checkpoint, load_gpt2, save_checkpoint
from gptrain.core.errors import GptrainError

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def hub_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def trained(model, steps=3):
    """A few AdamW steps, so that no tensor is left at its initial value."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        x = torch.randint(0, model.cfg.vocab_size, (2, 8))
        torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@pytest.mark.parametrize("qkv_bias,tied", [(True, True), (False, False)], ids=["gpt2-like", "untied-no-qkv-bias"])
def test_transformers_loads_the_export_with_equal_logits(tmp_path, tiny_cfg, qkv_bias, tied):
    model = trained(GPTModel(tiny_cfg.replace(qkv_bias=qkv_bias, tie_embeddings=tied)))
    save_checkpoint(model, tmp_path / "ckpt")
    export_hf(tmp_path / "ckpt", tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert config["tie_word_embeddings"] is tied

    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert (hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()) is tied
    if not qkv_bias:
        assert not hf.transformer.h[0].attn.c_attn.bias.any()  # zero bias: the same function
    x = torch.randint(0, tiny_cfg.vocab_size, (2, tiny_cfg.context_length))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("qkv_bias,tied", [(True, True), (True, False)])
def test_export_then_import_is_exact(tmp_path, tiny_cfg, qkv_bias, tied):
    model = trained(GPTModel(tiny_cfg.replace(qkv_bias=qkv_bias, tie_embeddings=tied)))
    export_hf(model, tmp_path / "hf")
    loaded = load_gpt2(tmp_path / "hf")
    assert loaded.cfg == model.cfg
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_a_model_without_qkv_bias_comes_back_without_them(tmp_path, tiny_cfg):
    """The folder holds zero biases (GPT-2's format has no place for their absence); read back, they are
    left out, so the model is the one exported, with its parameter count (issue 25)."""
    model = trained(GPTModel(tiny_cfg))
    export_hf(model, tmp_path / "hf")
    loaded = load_gpt2(tmp_path / "hf")
    assert loaded.cfg == model.cfg and loaded.trf_blocks[1].att.W_value.bias is None
    assert count_parameters(loaded) == count_parameters(model)
    x = torch.randint(0, tiny_cfg.vocab_size, (1, tiny_cfg.context_length))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-6, rtol=0)


def test_exported_tokenizer_encodes_like_tiktoken(tmp_path, tiny_cfg, verdict_text):
    export_hf(GPTModel(tiny_cfg), tmp_path / "hf")
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ours = get_tokenizer()
    texts = [
        verdict_text,
        "naïve café, Grüße aus Köln: 東京 — 🤖👩‍👩‍👧 ½ ∑ ﬁ",
        "a  b   c\n\n\n  \t\tx   \n  trailing   ",
        "first<|endoftext|>second <|endoftext|> third",
        "it's they're I'll we've 1234567 3.14159 \r\n\r\n\u00a0nbsp\u2003em",
    ]
    for text in texts:
        ids = ours.encode(text, allowed_special={"<|endoftext|>"})
        assert hf_tokenizer.encode(text) == ids, text[:40]
        assert hf_tokenizer.decode(ids) == text
    assert hf_tokenizer.eos_token_id == 50256 and len(hf_tokenizer) == 50257


def test_export_does_not_overwrite_unless_asked(tmp_path, tiny_cfg):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "notes.txt").write_text("mine")
    with pytest.raises(GptrainError, match="already exists: choose another --out, or pass --overwrite"):
        export_hf(GPTModel(tiny_cfg), tmp_path / "hf")
    assert (tmp_path / "hf" / "notes.txt").read_text() == "mine"
    export_hf(GPTModel(tiny_cfg), tmp_path / "hf", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == [
        "config.json", "merges.txt", "model.safetensors", "special_tokens_map.json", "tokenizer_config.json",
        "vocab.json"]


def test_export_never_replaces_its_own_source(tmp_path, tiny_cfg):
    save_checkpoint(GPTModel(tiny_cfg), tmp_path / "run" / "final")
    for out in (tmp_path / "run", tmp_path / "run" / "final"):
        with pytest.raises(GptrainError, match="would replace the model being exported"):
            export_hf(tmp_path / "run", out, overwrite=True)
    assert load_checkpoint(tmp_path / "run").cfg == tiny_cfg


def test_a_vocabulary_smaller_than_gpt2s_is_refused(tmp_path, tiny_cfg):
    with pytest.raises(GptrainError, match="fewer than its tokenizer gpt2 needs"):
        export_hf(GPTModel(tiny_cfg.replace(vocab_size=1000)), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_a_checkpoint_survives_export_and_import_into_a_checkpoint(tmp_path, tiny_cfg):
    model = trained(GPTModel(tiny_cfg.replace(qkv_bias=True, tie_embeddings=True)))
    export_hf(model, tmp_path / "hf")
    save_checkpoint(load_gpt2(tmp_path / "hf"), tmp_path / "ckpt")
    again = load_checkpoint(tmp_path / "ckpt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
