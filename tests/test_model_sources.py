"""One model reference (issue 25): every form of --model resolves to the same model, and bad ones are one clear error."""

import json
import tomllib

import pytest
import safetensors.torch
import torch

from gptrain import GPTConfig, GPTModel, TrainConfig, export_hf, get_tokenizer, load_weights_into_gpt, save_checkpoint
from gptrain.cli import main
from gptrain.core.errors import GptrainError
from gptrain.core.tomlfile import toml_table
from gptrain.model.counts import parameter_counts
from gptrain.training.config import read_config_file
from gptrain.interop.sources import CHECKPOINT, HF_FOLDER, STATE_DICT, resolve_model, resolve_shape


@pytest.fixture
def saved(tmp_path, tiny_cfg):
    """One tiny model as a run directory (final/ and best/), an HF folder and a book-named state dict."""
    torch.manual_seed(1)
    model = GPTModel(tiny_cfg).eval()
    run = tmp_path / "run"
    save_checkpoint(model, run / "final")
    save_checkpoint(model, run / "best")
    hf = export_hf(model, tmp_path / "hf")
    book = tmp_path / "book" / "model.pth"
    book.parent.mkdir()
    torch.save(model.state_dict(), book)
    return model, run, hf, book


def logits(model):
    with torch.no_grad():
        return model(torch.arange(10)[None])


def test_every_form_of_a_reference_gives_the_same_model(saved):
    model, run, hf, book = saved
    expected = logits(model)
    forms = [(run, CHECKPOINT), (run / "best", CHECKPOINT), (run / "final" / "model.safetensors", CHECKPOINT),
             (hf, HF_FOLDER), (hf / "model.safetensors", STATE_DICT)]
    for reference, kind in forms:
        source = resolve_model(reference)
        assert source.kind == kind, reference
        assert str(reference) in source.origin and source.weights_file.is_file()
        assert source.config.n_heads == 4 and source.tokenizer is get_tokenizer()
        torch.testing.assert_close(logits(source.model), expected, rtol=1e-5, atol=1e-5)
    # The book's names carry no head count: --n-heads gives it, or a config.json beside the file.
    torch.testing.assert_close(logits(resolve_model(book, n_heads=4).model), expected, rtol=1e-5, atol=1e-5)
    (book.parent / "config.json").write_text(json.dumps({"n_heads": 4}))
    torch.testing.assert_close(logits(resolve_model(book).model), expected, rtol=1e-5, atol=1e-5)
    assert resolve_shape(run) == model.cfg and resolve_shape(hf).n_heads == 4


def test_a_state_dict_whose_heads_cannot_be_inferred_says_to_pass_n_heads(saved):
    with pytest.raises(GptrainError, match=r"width 32 is not a GPT-2 size: give it \(n_heads=\.\.\., or --n-heads\)"):
        resolve_model(saved[3])


def test_bad_references_are_one_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not a model\n")
    cases = {tmp_path / "empty": "holds no weights", tmp_path / "notes.txt": "neither a safetensors file nor",
             "774M": "GPTRAIN_OFFLINE is set", "": "the model reference is empty",
             tmp_path / "missing": "does not exist and is not a GPT-2 size"}
    for reference, message in cases.items():
        with pytest.raises(GptrainError, match=message):
            resolve_model(reference)


def test_a_gpt2_size_has_a_shape_without_a_download():
    shape = resolve_shape("gpt2-medium")
    assert (shape.n_layers, shape.emb_dim, shape.n_heads, shape.tie_embeddings) == (24, 1024, 16, True)


# --- Any shape, and a run that is its own recipe ---

def tiny_run(verdict_path, out, *flags):
    args = ["train", "--data", str(verdict_path), "--out", str(out), "--context-length", "16", "--batch-size", "4",
            "--max-steps", "3", "--eval-freq", "3", "--eval-iter", "1", "--sample-tokens", "0", "--precision", "fp32",
            "--device", "cpu", *flags]
    assert main(args) == 0


def losses(run):
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["event"] == "train"]


def test_any_shape_is_trained_saved_and_read_back(tmp_path, verdict_path, capsys):
    (tmp_path / "shape.toml").write_text('preset = "tiny"\nn_layers = 3\nn_heads = 2\nemb_dim = 24\nvocab_size = 50304\n')
    tiny_run(verdict_path, tmp_path / "run", "--config", str(tmp_path / "shape.toml"))
    out = capsys.readouterr().out
    shape = GPTConfig(vocab_size=50304, context_length=16, emb_dim=24, n_heads=2, n_layers=3)
    assert f"Model: 3 layers, 2 heads, 24 wide, context 16, 50304 tokens; {parameter_counts(shape).total:,} parameters" in out
    assert resolve_shape(tmp_path / "run").replace(drop_rate=0.0) == shape.replace(drop_rate=0.0)
    assert resolve_model(tmp_path / "run").model.trf_blocks[0].att.num_heads == 2


@pytest.mark.parametrize("settings, message", [
    ({"emb_dim": 30, "n_heads": 4}, "--emb-dim 30 is not divisible by --n-heads 4"),
    ({"preset": "tiny", "n_heads": 3}, "--emb-dim 64 is not divisible by --n-heads 3"),
    ({"n_layers": 0}, "--n-layers must be a positive integer, not 0"),
])
def test_a_bad_shape_is_refused_before_any_data_is_read(settings, message):
    with pytest.raises(GptrainError, match=message):
        TrainConfig(data="no-such-corpus", **settings)


def test_a_vocabulary_smaller_than_the_tokenizers_is_refused_before_any_data_is_read(tmp_path, capsys):
    assert main(["train", "--data", "no-such-corpus", "--vocab-size", "1000", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == ("gptrain: error: --vocab-size 1000 is smaller than the 50,257 tokens of "
                                               "the tokenizer gpt2: give at least 50257 (more only adds unused rows), "
                                               "or leave it out")


def test_without_a_preset_the_shape_flags_start_from_gpt2(tmp_path):
    cfg = TrainConfig(preset=None, n_layers=2, n_heads=2, emb_dim=32).model_config()
    assert (cfg.n_layers, cfg.n_heads, cfg.emb_dim, cfg.vocab_size, cfg.context_length) == (2, 2, 32, 50257, 256)


def test_train_toml_repeats_the_run_and_flags_override_it(tmp_path, verdict_path):
    (tmp_path / "one-layer.toml").write_text("n_layers = 1\n")
    tiny_run(verdict_path, tmp_path / "a", "--preset", "tiny", "--grad-clip", "none", "--config",
             str(tmp_path / "one-layer.toml"))
    recipe = tmp_path / "a" / "train.toml"
    values = tomllib.loads(recipe.read_text())
    assert values["n_layers"] == 1 and values["emb_dim"] == 64 and "grad_clip" in values["unset"]
    assert TrainConfig.from_dict(read_config_file(recipe)) == TrainConfig.from_dict(
        json.loads((tmp_path / "a" / "config.json").read_text())["train"])
    assert main(["train", "--config", str(recipe), "--out", str(tmp_path / "b")]) == 0
    assert losses(tmp_path / "b") == losses(tmp_path / "a") and len(losses(tmp_path / "a")) == 3
    assert main(["train", "--config", str(recipe), "--out", str(tmp_path / "c"), "--lr", "1e-3"]) == 0
    assert losses(tmp_path / "c")[0] == losses(tmp_path / "a")[0] and losses(tmp_path / "c") != losses(tmp_path / "a")
    assert tomllib.loads((tmp_path / "c" / "train.toml").read_text())["lr"] == 1e-3


def test_toml_values_read_back_as_written():
    values = {"s": 'quote " back \\ tab\t nl\n del\x7f é 😀', "f": 1e-05, "i": 3, "b": True, "l": ["x", "y"], "e": []}
    assert tomllib.loads(toml_table(values)) == values


def test_only_zero_qkv_biases_are_left_out(tmp_path, tiny_cfg):
    """A model without qkv bias reads back an export of itself, but never drops biases that do something."""
    torch.manual_seed(2)
    with_bias = export_hf(GPTModel(tiny_cfg.replace(qkv_bias=True)), tmp_path / "bias")
    assert resolve_model(with_bias).config.qkv_bias
    state = safetensors.torch.load_file(with_bias / "model.safetensors")
    with pytest.raises(GptrainError, match="unexpected transformer.h.0.attn.c_attn.bias"):
        load_weights_into_gpt(GPTModel(tiny_cfg), state)
