"""Issue 28: a tokenizer trained on Spanish (tests/data/genesis-rv1909.es.txt) used everywhere: prepare,
train, generate, eval, export; and the bad inputs around it, one line each."""

import hashlib
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer

from conftest import TEST_DATA
from gptrain import GPTModel, save_checkpoint
from gptrain.cli import main
from gptrain.data.bpe_training import compare_tokenizers, train_tokenizer
from gptrain.data.prepare import prepare
from gptrain.data.tokenizer import get_tokenizer
from gptrain.evaluation.scoring import score_text
from gptrain.inference.generate import generate
from gptrain.inference.serve import ServeConfig, make_server, url_of
from gptrain.interop.pretrained import export_hf
from gptrain.interop.sources import resolve_model
from gptrain.store.checkpoint import read_checkpoint_config
from gptrain.store.integrity import verify_checkpoint
from uvicorn_thread import serving

GENESIS = TEST_DATA / "genesis-rv1909.es.txt"
HELD_OUT_FROM = "Génesis 46\n"  # the last five chapters: seen by neither the tokenizer nor the model
TINY = ["--preset", "tiny", "--n-layers", "2", "--n-heads", "2", "--emb-dim", "32", "--context-length", "32",
        "--batch-size", "8", "--max-steps", "20", "--eval-freq", "0", "--sample-tokens", "0", "--lr", "3e-3",
        "--device", "cpu", "--precision", "fp32"]


@pytest.fixture(scope="module")
def spanish(tmp_path_factory):
    """The tokenizer, the shards and the run of a tiny model, all on Genesis 1-45."""
    work = tmp_path_factory.mktemp("spanish")
    text = GENESIS.read_text(encoding="utf-8")
    cut = text.index(HELD_OUT_FROM)
    (work / "train.txt").write_text(text[:cut], encoding="utf-8")
    (work / "held-out.txt").write_text(text[cut:], encoding="utf-8")
    tokenizer = train_tokenizer([str(work / "train.txt")], work / "tok", 2048)
    prepare([str(work / "train.txt")], work / "data" / "es", workers=1, tokenizer=str(work / "tok"))
    assert main(["train", "--data", str(work / "data" / "es"), "--out", str(work / "run"), *TINY]) == 0
    return work, tokenizer


def test_a_spanish_tokenizer_takes_fewer_tokens_than_gpt2_on_held_out_spanish(spanish):
    work, _ = spanish
    ours, gpt2 = compare_tokenizers([str(work / "held-out.txt")], [str(work / "tok"), "gpt2"])
    assert ours.bytes == gpt2.bytes == len((work / "held-out.txt").read_bytes())
    # GPT-2's BPE spends a token on every 2.6 bytes of this Spanish; 2,048 Spanish tokens on every 3.3.
    assert gpt2.tokens / gpt2.bytes > 0.37 and ours.tokens / ours.bytes < 0.31


@pytest.fixture(scope="module")
def both_patterns(spanish, tmp_path_factory):
    """The Spanish tokenizer (GPT-2's split) and one with GPT-4's split, each beside the tokenizers library
    reading its tokenizer.json."""
    work, tokenizer = spanish
    gpt4 = train_tokenizer([str(GENESIS)], tmp_path_factory.mktemp("gpt4") / "tok", 1500, pattern="gpt4")
    library = lambda folder: HFTokenizer.from_file(str(folder / "tokenizer.json"))
    return [(tokenizer, library(work / "tok")), (gpt4, library(Path(gpt4.name)))]


def test_tiktokens_twin_encodes_the_corpora_as_tokenizer_json(both_patterns, verdict_text):
    text = GENESIS.read_text(encoding="utf-8") + "<|endoftext|>" + verdict_text
    for ours, library in both_patterns:
        assert ours.twin is not None
        library.encode_special_tokens = True  # <|endoftext|> in the text is text, as in encode_ordinary
        assert ours.encode_ordinary(text) == library.encode(text).ids
        library.encode_special_tokens = False
        assert ours.encode(text, allowed_special={"<|endoftext|>"}) == library.encode(text).ids


@settings(max_examples=150)
@given(st.text(st.characters(exclude_categories=["Cs"]), max_size=200))
def test_tiktokens_twin_encodes_any_text_as_tokenizer_json(both_patterns, text):
    for ours, library in both_patterns:
        library.encode_special_tokens = True
        assert ours.twin.encode_ordinary(text) == library.encode(text).ids


def test_the_checkpoint_carries_its_tokenizer_and_its_vocabulary_is_the_tokenizers(spanish):
    work, tokenizer = spanish
    final = work / "run" / "final"
    config = read_checkpoint_config(final)
    sha256 = hashlib.sha256((work / "tok" / "tokenizer.json").read_bytes()).hexdigest()
    assert config["tokenizer"]["sha256"] == sha256 == tokenizer.sha256
    assert (final / "tokenizer.json").read_bytes() == (work / "tok" / "tokenizer.json").read_bytes()
    assert json.loads((final / "manifest.json").read_text())["files"]["tokenizer.json"]["sha256"] == sha256
    assert verify_checkpoint(final) == []
    assert config["model"]["vocab_size"] == 2048
    source = resolve_model(work / "run")
    assert source.tokenizer.sha256 == sha256 and source.tokenizer.eot_token == tokenizer.eot_token


def test_generate_continues_spanish_through_the_cli(spanish):
    work, tokenizer = spanish
    prompt = "Y dijo Dios"
    out = subprocess.run([sys.executable, "-m", "gptrain", "generate", "--model", str(work / "run"), "--prompt",
                          prompt, "--max-new-tokens", "12", "--device", "cpu", "--no-stream"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    model = resolve_model(work / "run").model
    ids = generate(model, torch.tensor([tokenizer.encode_ordinary(prompt)]), 12, model.cfg.context_length)
    expected = tokenizer.decode(ids[0].tolist())
    assert out.stdout == expected + "\n"
    assert len(expected) > len(prompt) + 12  # Spanish words, not single bytes


def test_serve_completes_in_the_models_tokenizer(spanish):
    work, tokenizer = spanish
    source = resolve_model(work / "run")
    server, sock = make_server(source.model, ServeConfig(port=0, model_name="es"), source.tokenizer)
    with serving(server, sock):
        body = json.dumps({"model": "es", "prompt": "Y dijo Dios", "max_tokens": 8, "temperature": 0}).encode()
        request = urllib.request.Request(url_of(sock) + "/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
    prompt = tokenizer.encode_ordinary("Y dijo Dios")
    ids = generate(source.model, torch.tensor([prompt]), 8, source.config.context_length, eos_id=tokenizer.eot_token)
    assert answer["choices"][0]["text"] == tokenizer.decode(ids[0, len(prompt):].tolist())
    assert answer["usage"]["prompt_tokens"] == len(prompt)


def test_eval_counts_bits_per_byte_over_the_bytes_of_text(spanish):
    work, tokenizer = spanish
    text = (work / "held-out.txt").read_text(encoding="utf-8")
    _, result = score_text(work / "held-out.txt", model=work / "run", device="cpu", precision="fp32")
    assert result.tokens == len(tokenizer.encode_ordinary(text)) and result.bytes == len(text.encode("utf-8"))
    assert result.bits_per_byte == pytest.approx(result.total_nats / 0.6931471805599453 / result.bytes)
    assert result.loss < 0.9 * torch.log(torch.tensor(2048.0)).item()  # it learnt something of Spanish


def test_export_hf_writes_the_tokenizer_that_autotokenizer_reads(spanish, tmp_path):
    transformers = pytest.importorskip("transformers")
    work, tokenizer = spanish
    folder = export_hf(work / "run", tmp_path / "hf")
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    text = (work / "held-out.txt").read_text(encoding="utf-8")[:2000]
    assert hf(text)["input_ids"] == tokenizer.encode_ordinary(text)
    assert resolve_model(folder).tokenizer.sha256 == tokenizer.sha256  # and gptrain reads it back


def test_export_gguf_writes_the_trained_tokenizer(spanish, tmp_path):
    gguf = pytest.importorskip("gguf")
    work, tokenizer = spanish
    assert main(["export", "--model", str(work / "run"), "--format", "gguf", "--out", str(tmp_path / "m.gguf")]) == 0
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    field = reader.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
    vocab, merges = tokenizer.vocab_and_merges()
    assert tokens == sorted(vocab, key=vocab.get) and len(tokens) == 2048
    eos = reader.fields["tokenizer.ggml.eos_token_id"]
    assert int(eos.parts[eos.data[0]][0]) == tokenizer.eot_token
    assert len(reader.fields["tokenizer.ggml.merges"].data) == len(merges)


def one_line(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_shards_of_another_tokenizer_than_inits_are_refused(spanish, capsys):
    work, tokenizer = spanish
    prepare([str(work / "train.txt")], work / "data" / "gpt2", workers=1)
    line = one_line(capsys, ["train", "--init", str(work / "run"), "--data", str(work / "data" / "gpt2"),
                             "--out", str(work / "refused"), "--max-steps", "1", "--device", "cpu"])
    assert line.startswith(f"gptrain: error: {work / 'data' / 'gpt2'} was prepared with the tokenizer gpt2 (sha256 "
                           f"306cd27f03c1…), but the model reads text with {work / 'tok'} (sha256 "
                           f"{tokenizer.sha256[:12]}…): prepare the text again")
    # A folder holding both prepared folders mixes two tokenizers.
    line = one_line(capsys, ["train", "--data", str(work / "data"), "--out", str(work / "refused"), *TINY])
    assert "data mixes shards of 2 tokenizers (es: " in line and "gpt2: gpt2 (sha256 306cd27f03c1…)" in line
    assert not (work / "refused").exists()


def test_a_checkpoint_without_its_tokenizer_file_is_one_line(spanish, tmp_path, capsys):
    work, tokenizer = spanish
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in (work / "run" / "final").iterdir():
        if file.name != "tokenizer.json":
            (broken / file.name).write_bytes(file.read_bytes())
    line = one_line(capsys, ["generate", "--model", str(broken), "--device", "cpu"])
    assert line == (f"gptrain: error: {broken} was trained with the tokenizer {work / 'tok'} (sha256 "
                    f"{tokenizer.sha256[:12]}…) but holds no tokenizer.json: copy that tokenizer's tokenizer.json "
                    "into it")


def test_gpt2_checkpoints_keep_gpt2s_tokenizer(spanish, tmp_path, tiny_cfg):
    checkpoint = save_checkpoint(GPTModel(tiny_cfg), tmp_path / "ckpt")
    assert read_checkpoint_config(checkpoint)["tokenizer"] == {"name": "gpt2", "sha256": get_tokenizer().sha256}
    assert not (checkpoint / "tokenizer.json").exists()
    assert resolve_model(checkpoint).tokenizer is get_tokenizer()
