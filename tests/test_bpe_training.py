import hashlib
import json

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from gptrain.data import prepare as prepare_module
from gptrain.data.bpe_training import new_tokenizer, train_tokenizer
from gptrain.cli import main
from gptrain.data.prepare import prepare
from gptrain.data.tokenizer import END_OF_TEXT, TABLE_SHA256, bytes_to_unicode, get_tokenizer
from gptrain.data.trained_tokenizer import TrainedTokenizer, load_tokenizer

TEXTS = ["It had always been his fate to have women say such things of him.\n\n  Indented, 12345 dogs!",
         "héllo wörld, 日本語 and an emoji 🙂\r\n", f"two documents{END_OF_TEXT}in one string", " ", ""]


@pytest.fixture(scope="module", params=["gpt2", "gpt4"])
def trained(request, tmp_path_factory, verdict_path):
    out = tmp_path_factory.mktemp("tok") / request.param
    assert main(["tokenizer", "train", str(verdict_path), "--vocab-size", "600", "--out", str(out),
                 "--pattern", request.param]) == 0
    return out


def test_trained_tokenizer_loads_in_transformers_and_encodes_identically(trained):
    ours = load_tokenizer(trained)
    auto = AutoTokenizer.from_pretrained(trained)
    fast = PreTrainedTokenizerFast(tokenizer_file=str(trained / "tokenizer.json"))
    assert ours.n_vocab == len(auto) == 600
    assert ours.eot_token == auto.eos_token_id == auto.convert_tokens_to_ids(END_OF_TEXT)
    for text in TEXTS:
        ids = ours.encode(text, allowed_special={END_OF_TEXT})
        assert ids == auto.encode(text) == fast.encode(text)
        assert ours.decode(ids) == auto.decode(ids) == text
        assert b"".join(ours.decode_single_token_bytes(i) for i in ids) == text.encode("utf-8")


def test_adapter_keeps_tiktokens_special_token_rules(trained):
    ours = load_tokenizer(trained)
    text = f"a{END_OF_TEXT}b"
    assert ours.encode(text, allowed_special={END_OF_TEXT}).count(ours.eot_token) == 1
    assert ours.eot_token not in ours.encode_ordinary(text)
    assert ours.decode(ours.encode_ordinary(text)) == text
    with pytest.raises(ValueError, match="holds <|endoftext|>"):
        ours.encode(text)


def test_load_tokenizer_gpt2_is_the_bundled_encoding():
    assert load_tokenizer("gpt2") is get_tokenizer()


def test_gpt4_pattern_splits_numbers_in_threes():
    def words(pattern):
        return [w for w, _ in new_tokenizer(pattern).pre_tokenizer.pre_tokenize_str("in 12345 ways")]
    assert words("gpt2") == ["in", "Ġ12345", "Ġways"]
    assert words("gpt4") == ["in", "Ġ", "123", "45", "Ġways"]


def test_streamed_blocks_train_the_same_tokenizer(tmp_path, monkeypatch, verdict_path):
    train_tokenizer([str(verdict_path)], tmp_path / "whole", 400)
    monkeypatch.setattr(prepare_module, "BLOCK_CHARS", 2000)  # the story in ~10 blocks
    small_blocks = train_tokenizer([str(verdict_path)], tmp_path / "blocks", 400)
    assert isinstance(small_blocks, TrainedTokenizer)
    assert (tmp_path / "blocks" / "tokenizer.json").read_bytes() == (tmp_path / "whole" / "tokenizer.json").read_bytes()


def test_info_prints_vocabulary_specials_and_pattern(trained, capsys):
    assert main(["tokenizer", "info", str(trained)]) == 0
    out = capsys.readouterr().out
    assert "vocabulary: 600 tokens" in out and f"special tokens: {END_OF_TEXT}" in out
    assert f"pattern: {trained.name}" in out
    config = json.loads((trained / "tokenizer_config.json").read_text())
    assert config["eos_token"] == END_OF_TEXT and config["clean_up_tokenization_spaces"] is False


def test_compare_prints_vocabulary_and_bytes_per_token(trained, verdict_path, capsys):
    assert main(["tokenizer", "compare", str(verdict_path), "--tokenizer", str(trained), "--tokenizer", "gpt2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["tokenizer", "vocab", "tokens", "bytes/token"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    # The story is 20,479 bytes; GPT-2's BPE takes 5,145 tokens for it (the book's count).
    assert rows["gpt2"] == ["50,257", "5,145", "3.980"]
    vocab, tokens, per_token = rows[str(trained)]
    assert vocab == "600" and 1.5 < float(per_token) < 3.980
    assert int(tokens.replace(",", "")) == round(20479 / float(per_token))


@pytest.mark.parametrize("args, message", [
    (["train", "CORPUS", "--vocab-size", "200", "--out", "t"], "--vocab-size must be at least 257"),
    (["train", "missing.txt", "--vocab-size", "300", "--out", "t"], "does not exist"),
    (["info", "empty"], "has no tokenizer.json"),
    (["compare", "CORPUS", "--tokenizer", "nowhere"], "is neither gpt2 nor a folder"),
    (["info", "bad"], "is not a tokenizer file"),
])
def test_bad_inputs_exit_2_with_one_line(tmp_path, monkeypatch, capsys, verdict_path, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer.json").write_text("{not json")
    args = [str(verdict_path) if a == "CORPUS" else a for a in args]
    assert main(["tokenizer", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "t").exists()


def test_refuses_to_overwrite_a_tokenizer_without_the_flag(trained, verdict_path):
    with pytest.raises(ValueError, match="pass --overwrite"):
        train_tokenizer([str(verdict_path)], trained, 600)


def test_prepare_with_a_trained_tokenizer_records_its_hash(trained, verdict_path, tmp_path):
    meta = prepare([str(verdict_path)], tmp_path / "out", workers=2, tokenizer=str(trained))
    ours = load_tokenizer(trained)
    assert meta["tokenizer"] == {"name": str(trained.resolve()),
                                 "sha256": hashlib.sha256((trained / "tokenizer.json").read_bytes()).hexdigest()}
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 600 and meta["eot_token"] == ours.eot_token
    tokens = np.concatenate([np.fromfile(tmp_path / "out" / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")])
    assert tokens.tolist() == ours.encode_ordinary(verdict_path.read_text(encoding="utf-8")) + [ours.eot_token]


def test_prepare_keeps_gpt2_by_default(verdict_path, tmp_path):
    meta = prepare([str(verdict_path)], tmp_path / "out", workers=1)
    assert meta["tokenizer"] == {"name": "gpt2", "sha256": TABLE_SHA256}
    assert meta["dtype"] == "uint16" and meta["train_tokens"] + meta["val_tokens"] == 5145 + 1


def big_vocabulary_tokenizer(folder, size=70_000):
    """Bytes, filler tokens that no text produces, and <|endoftext|> at id 70,000: beyond uint16."""
    alphabet = bytes_to_unicode()
    vocab = {alphabet[b]: b for b in range(min(size, 256))}
    vocab.update({f"Ġ{i}x": i for i in range(256, size)})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([END_OF_TEXT])
    folder.mkdir()
    tokenizer.save(str(folder / "tokenizer.json"))


def test_a_vocabulary_beyond_65536_writes_uint32_shards(tmp_path):
    big_vocabulary_tokenizer(tmp_path / "big")
    (tmp_path / "a.txt").write_text("héllo", encoding="utf-8")
    meta = prepare([str(tmp_path / "a.txt")], tmp_path / "out", workers=1, val_fraction=0.0,
                   tokenizer=str(tmp_path / "big"))
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == 70_001 and meta["eot_token"] == 70_000
    tokens = np.fromfile(tmp_path / "out" / "train.bin", dtype=np.uint32)
    assert tokens.tolist() == [*"héllo".encode("utf-8"), 70_000]


@pytest.mark.parametrize("make, message", [
    (lambda p: (p / "tok").mkdir(), "tokenizer folder tok has no tokenizer.json"),
    (lambda p: big_vocabulary_tokenizer(p / "tok", size=200), "has 201 tokens, fewer than 256 bytes"),
    (lambda p: None, "--tokenizer tok is neither gpt2 nor a folder"),
])
def test_prepare_refuses_a_bad_tokenizer_in_one_line(tmp_path, monkeypatch, capsys, make, message):
    monkeypatch.chdir(tmp_path)
    make(tmp_path)
    (tmp_path / "a.txt").write_text("some text", encoding="utf-8")
    assert main(["prepare", "a.txt", "--out", "out", "--tokenizer", "tok", "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "out").exists()
