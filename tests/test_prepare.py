import json

import numpy as np
import pytest

from gptrain.data import prepare as prepare_module
from gptrain.cli import main
from gptrain.data.corpus import open_shards
from gptrain.data.prepare import prepare, split_point

EOT = 50256


def tokens(folder, split):
    return np.fromfile(folder / f"{split}.bin", dtype=np.uint16).tolist()


def test_cutting_a_big_file_into_blocks_does_not_change_its_tokens(tmp_path, monkeypatch, verdict_path, tokenizer):
    monkeypatch.setattr(prepare_module, "BLOCK_CHARS", 700)  # forces ~30 cuts through the story
    meta = prepare([str(verdict_path)], tmp_path / "out", val_fraction=0.0, workers=1)
    expected = tokenizer.encode_ordinary(verdict_path.read_text(encoding="utf-8")) + [EOT]
    assert tokens(tmp_path / "out", "train") == expected
    assert meta["train_tokens"] == 5146 and meta["val_tokens"] == 0 and meta["documents"]["train"] == 1


@pytest.mark.parametrize("text", ["a\n\nb", "word.\n\n\n  x\ny", "x\n y\nz", "tail\n", "\n\n\n", "a\nb\n\nc d\ne"])
def test_split_point_is_exact(text, tokenizer):
    cut = split_point(text)
    if cut > 0:
        assert tokenizer.encode_ordinary(text[:cut]) + tokenizer.encode_ordinary(text[cut:]) == \
            tokenizer.encode_ordinary(text)


def test_parallel_workers_write_the_same_bytes(tmp_path, monkeypatch, verdict_text):
    monkeypatch.setattr(prepare_module, "BLOCK_CHARS", 2000)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(40):
        (corpus / f"doc{i:02d}.txt").write_text(verdict_text[i * 400:(i + 1) * 400 + 300], encoding="utf-8")
    one = prepare([str(corpus)], tmp_path / "one", workers=1)
    two = prepare([str(corpus)], tmp_path / "two", workers=2)
    for split in ("train", "val"):
        assert (tmp_path / "one" / f"{split}.bin").read_bytes() == (tmp_path / "two" / f"{split}.bin").read_bytes()
    assert one["documents"] == two["documents"] and one["split"] == "document"
    assert sum(one["documents"].values()) == 40 and 0 < one["documents"]["val"] < 15


def test_validation_split_is_by_whole_document(tmp_path, tokenizer):
    docs = [f"Document number {i} says hello {i * 7}." for i in range(200)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    meta = prepare([str(tmp_path / "docs.jsonl")], tmp_path / "out", val_fraction=0.25, workers=1)
    pieces = {}
    for split in ("train", "val"):
        text = tokenizer.decode(tokens(tmp_path / "out", split))
        pieces[split] = [p for p in text.split("<|endoftext|>") if p]
    assert sorted(pieces["train"] + pieces["val"]) == sorted(docs)
    assert 30 <= len(pieces["val"]) <= 70 and meta["documents"]["val"] == len(pieces["val"])
    again = prepare([str(tmp_path / "docs.jsonl")], tmp_path / "again", val_fraction=0.25, workers=1)
    assert again["documents"] == meta["documents"]


def test_a_single_document_is_split_at_its_tail(tmp_path, verdict_path):
    meta = prepare([str(verdict_path)], tmp_path / "out", val_fraction=0.1, workers=1)
    assert meta["split"] == "tail"
    assert (meta["train_tokens"], meta["val_tokens"]) == (5146 - 514, 514)
    shards = open_shards(tmp_path / "out")
    assert len(shards.train) == meta["train_tokens"] and shards.val[-1] == EOT


def test_jsonl_bad_lines_are_skipped_and_counted_or_fatal_with_strict(tmp_path):
    lines = [json.dumps({"text": "good one"}), "{broken", json.dumps({"body": "no text field"}),
             json.dumps({"text": 5}), json.dumps({"text": "good two"})]
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    meta = prepare([str(tmp_path / "c.jsonl")], tmp_path / "out", val_fraction=0.0, workers=1)
    assert meta["skipped_lines"] == 3 and meta["first_skipped"].endswith("c.jsonl:2 is not JSON")
    assert meta["documents"]["train"] == 2
    with pytest.raises(ValueError, match=r"c.jsonl:2 is not JSON: fix it, or drop --strict"):
        prepare([str(tmp_path / "c.jsonl")], tmp_path / "strict", strict=True, workers=1)
    assert not (tmp_path / "strict").exists()


def test_custom_text_field_and_globs(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"body": "alpha beta"}) + "\n", encoding="utf-8")
    (tmp_path / "b.md").write_text("# gamma", encoding="utf-8")
    meta = prepare([str(tmp_path / "*.jsonl"), str(tmp_path / "*.md")], tmp_path / "out", text_field="body",
                   val_fraction=0.0, workers=1)
    # "alpha", " beta" / "#", " gamma" / one <|endoftext|> after each document
    assert meta["documents"]["train"] == 2 and meta["train_tokens"] == 6


@pytest.mark.parametrize("setup,args,message", [
    (lambda p: (p / "empty.txt").write_text(""), ["empty.txt"], "hold no text"),
    (lambda p: (p / "docs").mkdir(), ["docs"], "holds no .txt, .md, .jsonl"),
    (lambda p: None, ["*.nothing"], "matches no files"),
    (lambda p: None, ["missing.txt"], "does not exist"),
    (lambda p: (p / "bin.txt").write_bytes(b"ok \xff\xfe"), ["bin.txt"], "is not UTF-8 text"),
    (lambda p: (p / "data.xlsx").write_text("a,b"), ["data.xlsx"], "is not a .txt, .md, .jsonl, .jsonl.gz"),
    (lambda p: (p / "data.csv").write_text("a,b"), ["data.csv"], "has no column 'text' (its columns: a, b)"),
])
def test_bad_inputs_exit_2_with_one_line(tmp_path, monkeypatch, capsys, setup, args, message):
    monkeypatch.chdir(tmp_path)
    setup(tmp_path)
    assert main(["prepare", *args, "--out", "out", "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_refuses_to_overwrite_without_the_flag(tmp_path, verdict_path):
    prepare([str(verdict_path)], tmp_path / "out", workers=1)
    with pytest.raises(ValueError, match="pass --overwrite"):
        prepare([str(verdict_path)], tmp_path / "out", workers=1)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="choose an empty or new --out"):
        prepare([str(verdict_path)], tmp_path / "mine", workers=1, overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
