"""gptrain train --init: a new run from GPT-2 weights, a book state dict or a gptrain checkpoint."""

import hashlib
import json

import numpy as np
import pytest
import torch

from gpt2_files import save_openai_layout, tiny_hf_model
from gptrain import GPTModel, TrainConfig, load_checkpoint, save_checkpoint, train
from gptrain.cli import main
from gptrain.data.corpus import TokenWindows, load_corpus, split_text
from gptrain.core.errors import GptrainError
from gptrain.evaluation.heldout import evaluate_tokens
from gptrain.interop.sources import load_gpt2
from gptrain.data.tokenizer import get_tokenizer
from gptrain.training.transfer import load_init_model

quiet = lambda line: None
CONTEXT = 32


def records(run, event):
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r["event"] == event]


def init_run(tmp_path, text, source, **overrides) -> TrainConfig:
    settings = dict(data=str(text), out=str(tmp_path / "run"), init=str(source), preset=None, context_length=CONTEXT,
                    batch_size=4, max_steps=2, eval_freq=5, eval_iter=2, device="cpu", sample_tokens=0,
                    precision="fp32")
    return TrainConfig(**(settings | overrides))


def book_state_dict(tmp_path):
    """The book's GPTModel saved as chapter 5 saves it, in the tiny preset's shape (which says its head count)."""
    book_ch04 = pytest.importorskip("llms_from_scratch.ch04")
    torch.manual_seed(7)
    book = book_ch04.GPTModel(dict(vocab_size=50257, context_length=128, emb_dim=64, n_heads=4, n_layers=2,
                                   drop_rate=0.1, qkv_bias=False))
    torch.save(book.state_dict(), tmp_path / "book.pth")
    return tmp_path / "book.pth", {"preset": "tiny"}


def gptrain_checkpoint(tmp_path):
    torch.manual_seed(8)
    model = GPTModel(dict(vocab_size=50257, context_length=48, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0))
    return save_checkpoint(model, tmp_path / "ckpt"), {}


def hf_folder(tmp_path):
    return save_openai_layout(tiny_hf_model(seed=3), tmp_path / "hf"), {}


@pytest.mark.parametrize("make_source", [hf_folder, book_state_dict, gptrain_checkpoint])
def test_init_starts_from_the_sources_weights(make_source, tmp_path, story_page):
    source, extra = make_source(tmp_path)
    cfg = init_run(tmp_path, story_page, source, max_steps=1, **extra)
    train(cfg, echo=quiet)
    run = tmp_path / "run"
    initial, *later = records(run, "eval")
    assert initial["initial"] is True and initial["step"] == 0 and initial["tokens_seen"] == 0
    assert "initial" not in later[0]

    # The initial figures are `gptrain eval` of SOURCE on the same windows: the first
    # eval_iter x batch windows of each split, every CONTEXT tokens.
    base = load_gpt2(source, n_heads=4)
    tokenizer = get_tokenizer()
    train_text, val_text = split_text(load_corpus(str(story_page)), 0.9)
    for text, key in ((train_text, "train_loss"), (val_text, "val_loss")):
        tokens = np.array(tokenizer.encode(text), dtype=np.uint16)
        windows = min(len(TokenWindows(tokens, CONTEXT, CONTEXT)), 2 * 4)
        expected = evaluate_tokens(base, tokens[:windows * CONTEXT + 1], context_length=CONTEXT, stride=CONTEXT)
        assert initial[key] == pytest.approx(expected.loss, abs=1e-5)

    saved = json.loads((run / "config.json").read_text())
    weights_file = source / "model.safetensors" if source.is_dir() else source
    assert saved["train"]["init"] == str(source)
    assert saved["train"]["init_sha256"] == hashlib.sha256(weights_file.read_bytes()).hexdigest()
    assert saved["model"]["context_length"] == CONTEXT
    assert saved["model"]["emb_dim"] == base.cfg.emb_dim
    report = (run / "report.html").read_text()
    assert "initial val loss" in report and saved["train"]["init_sha256"] in report


def test_init_truncates_positions_and_sets_dropout(tmp_path, story_page):
    source, _ = hf_folder(tmp_path)
    model, sha256, _ = load_init_model(init_run(tmp_path, story_page, source, dropout=0.25))
    base = load_gpt2(source)
    assert model.cfg == base.cfg.replace(context_length=CONTEXT, drop_rate=0.25) and model.training
    assert torch.equal(model.pos_emb.weight, base.pos_emb.weight[:CONTEXT])
    for name, tensor in model.state_dict().items():
        if name != "pos_emb.weight":
            assert torch.equal(tensor, base.state_dict()[name]), name
    assert sha256 == hashlib.sha256((source / "model.safetensors").read_bytes()).hexdigest()


def test_full_fine_tuning_changes_every_weight_and_resumes(tmp_path, story_page):
    source, _ = hf_folder(tmp_path)
    train(init_run(tmp_path, story_page, source, max_steps=2, save_every=1), echo=quiet)
    base, tuned = load_gpt2(source), load_checkpoint(tmp_path / "run")
    assert not torch.equal(base.trf_blocks[0].att.W_query.weight, tuned.trf_blocks[0].att.W_query.weight)
    resumed = train(init_run(tmp_path, story_page, source, max_steps=3), resume=True, echo=quiet)
    assert resumed["steps"] == 3
    assert len([r for r in records(tmp_path / "run", "eval") if r.get("initial")]) == 1


def cli(*args):
    return main(["train", *map(str, args)])


def test_cli_init_bad_inputs_exit_2_and_write_nothing(tmp_path, story_page, capsys):
    source, _ = hf_folder(tmp_path)
    common = ["--data", story_page, "--device", "cpu", "--max-steps", "1", "--batch-size", "2"]
    bad = {
        "does not exist": ["--init", tmp_path / "nowhere", "--out", tmp_path / "a"],
        "longer than": ["--init", source, "--context-length", 128, "--out", tmp_path / "b"],
        "disagrees with --init": ["--init", source, "--preset", "124M", "--context-length", 32,
                                  "--out", tmp_path / "c"],
        "--lora-rank must be a positive integer": ["--init", source, "--lora-rank", 0, "--out", tmp_path / "d"],
        "larger than layer q's width 32": ["--init", source, "--lora-rank", 33, "--out", tmp_path / "e"],
        "unknown --lora-targets name 'mlp'": ["--init", source, "--lora-rank", 2, "--lora-targets", "q", "mlp",
                                              "--out", tmp_path / "f"],
        "--lora-rank adapts pretrained weights": ["--lora-rank", 2, "--out", tmp_path / "g"],
        "--init starts a new run and --resume": ["--init", source, "--resume", "--out", tmp_path / "h"],
    }
    for message, args in bad.items():
        assert cli(*common, *args) == 2, message
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "model.safetensors").write_bytes(b"not a safetensors file")
    assert cli(*common, "--init", damaged, "--out", tmp_path / "i") == 2
    assert "neither a safetensors file nor a PyTorch state dict" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "abcdefghi")


def test_resume_refuses_changed_source_weights(tmp_path, story_page, capsys):
    source, _ = hf_folder(tmp_path)
    train(init_run(tmp_path, story_page, source, max_steps=1, save_every=1), echo=quiet)
    save_openai_layout(tiny_hf_model(seed=4), source)  # other weights under the same path
    with pytest.raises(GptrainError, match="cannot resume .* with --init-sha256"):
        train(init_run(tmp_path, story_page, source, max_steps=2), resume=True, echo=quiet)
    assert cli("--out", tmp_path / "run", "--resume", "--max-steps", 2) == 2
    assert "holds other weights" in capsys.readouterr().err
