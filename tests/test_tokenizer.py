import hashlib

import pytest
import tiktoken
import torch

from gptrain import get_tokenizer, text_to_token_ids, token_ids_to_text
from gptrain.data import tokenizer as tokenizer_module


def test_is_a_tiktoken_encoding_with_gpt2_special_token(tokenizer):
    assert isinstance(tokenizer, tiktoken.Encoding)
    assert tokenizer.n_vocab == 50257
    assert tokenizer.eot_token == 50256
    assert tokenizer.encode("<|endoftext|>", allowed_special="all") == [50256]


def test_lecture_golden_ids(tokenizer):
    assert tokenizer.encode("Hello, I am") == [15496, 11, 314, 716]
    assert tokenizer.encode("Every effort moves you") == [6109, 3626, 6100, 345]


def test_verdict_is_5145_tokens(tokenizer, verdict_text):
    assert len(verdict_text) == 20479
    assert len(tokenizer.encode(verdict_text)) == 5145


def test_bundled_table_is_the_r50k_file():
    data = tokenizer_module._table_bytes()
    assert hashlib.sha256(data).hexdigest() == tokenizer_module.TABLE_SHA256
    assert len(tokenizer_module.load_merge_ranks()) == 50256


def test_damaged_table_is_refused(monkeypatch):
    monkeypatch.setattr(tokenizer_module, "_table_bytes", lambda: b"IQ== 0\n")
    with pytest.raises(ValueError, match="damaged"):
        tokenizer_module.load_merge_ranks()


def test_text_to_token_ids_shape_and_endoftext(tokenizer):
    ids = text_to_token_ids("Hello, I am<|endoftext|>", tokenizer)
    assert ids.dtype == torch.long
    assert ids.tolist() == [[15496, 11, 314, 716, 50256]]


def test_round_trip_accepts_both_shapes(tokenizer):
    text = "Every effort moves you forward — naïve café ☕"
    ids = text_to_token_ids(text, tokenizer)
    assert token_ids_to_text(ids, tokenizer) == text
    assert token_ids_to_text(ids[0], tokenizer) == text


def test_token_ids_to_text_rejects_batches(tokenizer):
    with pytest.raises(ValueError, match="one row at a time"):
        token_ids_to_text(torch.zeros(2, 3, dtype=torch.long), tokenizer)


def test_get_tokenizer_is_cached():
    assert get_tokenizer() is get_tokenizer()
