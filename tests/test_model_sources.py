"""One model reference (issue 25): every form of --model resolves to the same model, and bad ones are one clear error."""

import json

import pytest
import torch

from gptrain import GPTModel, export_hf, save_checkpoint
from gptrain.core.errors import GptrainError
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
        assert source.config.n_heads == 4 and source.tokenizer == "gpt2"
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
