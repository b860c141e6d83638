import hashlib

import pytest
import torch

from gptrain import GPTDatasetV1, create_dataloader_v1, load_corpus, split_text
from gptrain.data import corpus as data_module
from gptrain.data.corpus import NamedDataset, fetch_dataset
from gptrain.core.download import download_file

from conftest import VERDICT_SHA256
from httpserver import FileServer


def test_the_shipped_verdict_is_the_canonical_copy(verdict_path):
    digest = hashlib.sha256(verdict_path.read_bytes()).hexdigest()
    assert digest == VERDICT_SHA256 == data_module.DATASETS["the-verdict"].sha256


def test_targets_are_inputs_shifted_by_one(tokenizer, verdict_text):
    dataset = GPTDatasetV1(verdict_text, tokenizer, max_length=4, stride=1)
    ids = tokenizer.encode(verdict_text)
    x, y = dataset[3]
    assert x.tolist() == ids[3:7] and y.tolist() == ids[4:8]
    assert len(dataset) == len(ids) - 4


def test_lecture_split_and_loader_sizes(tokenizer, verdict_text):
    train_text, val_text = split_text(verdict_text, 0.9)
    assert (len(train_text), len(val_text)) == (18431, 2048)
    assert train_text + val_text == verdict_text
    train_loader = create_dataloader_v1(train_text, batch_size=2, max_length=256, stride=256)
    val_loader = create_dataloader_v1(val_text, batch_size=2, max_length=256, stride=256, shuffle=False,
                                      drop_last=False)
    assert (len(train_loader), len(val_loader)) == (9, 1)
    x, y = next(iter(train_loader))
    assert x.shape == y.shape == (2, 256) and x.dtype == torch.long


def test_loader_defaults_are_the_books(verdict_text):
    loader = create_dataloader_v1(verdict_text)
    assert loader.batch_size == 4 and loader.drop_last
    assert loader.dataset.max_length == 256 and loader.dataset.starts.step == 128


def test_seeded_shuffle_is_reproducible(verdict_text):
    def first_batch(seed):
        loader = create_dataloader_v1(verdict_text, batch_size=2, max_length=16, stride=16,
                                      generator=torch.Generator().manual_seed(seed))
        return next(iter(loader))[0]
    assert torch.equal(first_batch(1), first_batch(1))
    assert not torch.equal(first_batch(1), first_batch(2))


def test_text_shorter_than_one_window_plus_one_token(tokenizer):
    text = " word" * 10  # 10 tokens
    with pytest.raises(ValueError, match="fewer than one window of 10 plus one token"):
        GPTDatasetV1(text, tokenizer, max_length=10, stride=10)
    assert len(GPTDatasetV1(text + " word", tokenizer, max_length=10, stride=10)) == 1


def test_load_corpus_file_folder_and_named(tmp_path, verdict_path, monkeypatch):
    (tmp_path / "a.txt").write_text("first doc", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("second doc", encoding="utf-8")
    (tmp_path / "ignored.bin").write_bytes(b"\xff")
    assert load_corpus(tmp_path) == "first doc<|endoftext|>second doc"
    assert load_corpus(tmp_path / "a.txt") == "first doc"
    monkeypatch.setenv("GPTRAIN_DATA_DIR", str(verdict_path.parent))
    assert len(load_corpus("the-verdict")) == 20479


@pytest.mark.parametrize("make,match", [
    (lambda p: p / "missing.txt", "neither a file, a folder nor a named dataset"),
    (lambda p: (p / "empty.txt").write_text("  \n") and p / "empty.txt", "is empty"),
    (lambda p: (p / "latin1.txt").write_bytes("café".encode("latin-1")) and p / "latin1.txt",
     r"not UTF-8 text \(byte 0xe9 at offset 3\)"),
    (lambda p: (p / "nodocs").mkdir() or p / "nodocs", "holds no .txt files"),
])
def test_bad_corpora(tmp_path, make, match):
    with pytest.raises(ValueError, match=match):
        load_corpus(make(tmp_path))


def test_named_dataset_offline_without_copy_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTRAIN_DATA_DIR", str(tmp_path / "nothing-here"))
    with pytest.raises(ValueError, match="put the-verdict.txt in one of: .*nothing-here"):
        load_corpus("the-verdict")


def test_wrong_copy_in_data_dir_is_refused(tmp_path, monkeypatch):
    (tmp_path / "the-verdict.txt").write_text("a re-wrapped copy", encoding="utf-8")
    monkeypatch.setenv("GPTRAIN_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="not the canonical the-verdict.txt"):
        fetch_dataset("the-verdict")


def _served_dataset(monkeypatch, server, body):
    dataset = NamedDataset("demo", "demo.txt", server.url + "/demo.txt", hashlib.sha256(body).hexdigest())
    monkeypatch.setitem(data_module.DATASETS, "demo", dataset)
    monkeypatch.delenv("GPTRAIN_OFFLINE")
    monkeypatch.delenv("GPTRAIN_DATA_DIR", raising=False)
    return dataset


def test_named_dataset_downloads_once_into_the_cache(monkeypatch, verdict_path):
    body = verdict_path.read_bytes()
    with FileServer({"/demo.txt": body}) as server:
        _served_dataset(monkeypatch, server, body)
        assert load_corpus("demo") == body.decode("utf-8")
        assert load_corpus("demo") == body.decode("utf-8")
        assert len(server.requests) == 1  # the second call used the checked cached copy


def test_interrupted_download_resumes_with_a_range_request(tmp_path, monkeypatch):
    monkeypatch.delenv("GPTRAIN_OFFLINE")
    body = bytes(range(256)) * 4000
    dest = tmp_path / "file.bin"
    with FileServer({"/file.bin": body}) as server:
        server.cut_after = 300_000
        with pytest.raises(ValueError, match="run the same command again to resume"):
            download_file(server.url + "/file.bin", dest, sha256=hashlib.sha256(body).hexdigest())
        assert not dest.exists()
        assert (tmp_path / "file.bin.part").stat().st_size == 300_000
        server.cut_after = None
        download_file(server.url + "/file.bin", dest, sha256=hashlib.sha256(body).hexdigest())
    assert dest.read_bytes() == body
    assert server.requests[-1] == ("/file.bin", "bytes=300000-")
    assert not (tmp_path / "file.bin.part").exists()


def test_corrupt_download_is_rejected_and_removed(tmp_path, monkeypatch):
    monkeypatch.delenv("GPTRAIN_OFFLINE")
    dest = tmp_path / "file.bin"
    with FileServer({"/file.bin": b"tampered bytes"}) as server:
        with pytest.raises(ValueError, match="is corrupt"):
            download_file(server.url + "/file.bin", dest, sha256=hashlib.sha256(b"original").hexdigest())
    assert not dest.exists() and not (tmp_path / "file.bin.part").exists()


def test_unreachable_server_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("GPTRAIN_OFFLINE")
    with FileServer({}) as server:
        url = server.url + "/missing.txt"
        with pytest.raises(ValueError, match="HTTP 404"):
            download_file(url, tmp_path / "x.txt")
    with pytest.raises(ValueError, match="are you offline"):
        download_file(url, tmp_path / "x.txt", timeout=2)  # the server is gone now
