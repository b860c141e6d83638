"""Property-based tests: hypothesis searches the inputs, and each property must hold for all of them.

Each test runs ``max_examples`` generated examples (see EXAMPLES); ``pytest --hypothesis-show-statistics``
prints how many ran and how long they took.
"""

import json
import math
import string

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptrain import GPTModel, TrainConfig
from gptrain.training.config import read_config_file
from gptrain.data.corpus import SHARD_DTYPE
from gptrain.core.errors import GptrainError
from gptrain.evaluation.heldout import evaluate_text
from gptrain.inference.generate import generate
from gptrain.data.prepare import prepare
from gptrain.data.tokenizer import END_OF_TEXT_ID, get_tokenizer, text_to_token_ids, token_ids_to_text

EXAMPLES = {"tokenizer": 300, "prepare_bytes": 40, "prepare_jsonl": 40, "config": 300, "generate": 25, "eval": 40}
# Fixtures reused across examples are read-only, or each example writes under its own name.
# Which examples run is conftest's hypothesis profile: a fixed stream unless asked to explore.
SETTINGS = dict(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@settings(max_examples=EXAMPLES["tokenizer"], **SETTINGS)
@given(st.text())
def test_tokenizer_round_trip_on_any_unicode(tokenizer, text):
    ids = text_to_token_ids(text, tokenizer)
    assert ids.shape[0] == 1 and (ids >= 0).all() and (ids < tokenizer.n_vocab).all()
    assert token_ids_to_text(ids, tokenizer) == text


def read_tokens(folder):
    return [np.fromfile(folder / f"{split}.bin", dtype=SHARD_DTYPE).tolist() for split in ("train", "val")]


class Counter:
    def __init__(self):
        self.n = 0

    def next(self) -> int:
        self.n += 1
        return self.n


@pytest.fixture
def names():
    return Counter()


@settings(max_examples=EXAMPLES["prepare_bytes"], **SETTINGS)
@given(data=st.binary(max_size=300), val_fraction=st.sampled_from([0.0, 0.1, 0.5]))
def test_prepare_on_arbitrary_bytes_keeps_the_text_or_says_why(tmp_path, names, data, val_fraction):
    n = names.next()
    source = tmp_path / f"in{n}.txt"
    source.write_bytes(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    try:
        meta = prepare([str(source)], tmp_path / f"out{n}", val_fraction=val_fraction, workers=1)
    except GptrainError as exc:
        assert "\n" not in str(exc)
        assert text is None and "not UTF-8" in str(exc) or text == "" and "hold no text" in str(exc), str(exc)
        return
    assert text, "prepare accepted bytes that are not a non-empty UTF-8 text"
    train, val = read_tokens(tmp_path / f"out{n}")
    read_as = text.replace("\r\n", "\n").replace("\r", "\n")  # as open() reads text, and the book's loader
    assert train + val == get_tokenizer().encode_ordinary(read_as) + [END_OF_TEXT_ID]
    assert meta["documents"]["train"] + meta["documents"]["val"] == 1


# A line of a .jsonl file: a good record, or junk of every kind prepare must skip and count.
good_records = st.builds(lambda text: json.dumps({"text": text, "id": 1}), st.text(max_size=40))
junk = st.one_of(
    st.text(alphabet=st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)), max_size=30),
    st.builds(json.dumps, st.one_of(st.integers(), st.lists(st.integers(), max_size=3), st.none(),
                                    st.fixed_dictionaries({"text": st.integers()}),
                                    st.fixed_dictionaries({"body": st.text(max_size=10)}))),
)


def is_good(line: str) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and isinstance(record.get("text"), str)


@settings(max_examples=EXAMPLES["prepare_jsonl"], **SETTINGS)
@given(lines=st.lists(st.one_of(good_records, junk), min_size=1, max_size=12))
def test_prepare_keeps_every_valid_jsonl_document(tmp_path, names, lines):
    n = names.next()
    source = tmp_path / f"in{n}.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    good = [json.loads(line)["text"] for line in lines if is_good(line)]
    bad = [line for line in lines if line.strip() and not is_good(line)]
    try:
        meta = prepare([str(source)], tmp_path / f"out{n}", val_fraction=0.3, workers=1)
    except GptrainError as exc:
        assert not good and "hold no text" in str(exc) and "\n" not in str(exc), str(exc)
        return
    assert meta["documents"]["train"] + meta["documents"]["val"] == len(good)
    assert meta["skipped_lines"] == len(bad)
    train, val = read_tokens(tmp_path / f"out{n}")
    tokens = train + val
    assert tokens.count(END_OF_TEXT_ID) == len(good)
    assert len(tokens) == sum(len(get_tokenizer().encode_ordinary(text)) + 1 for text in good)


FIELDS = list(TrainConfig.__dataclass_fields__)
any_value = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True),
                      st.text(max_size=12), st.lists(st.text(max_size=5), max_size=3))


@settings(max_examples=EXAMPLES["config"], **SETTINGS)
@given(values=st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(string.ascii_lowercase + "_", max_size=12)),
                              any_value, max_size=6))
def test_config_files_with_wrong_types_or_unknown_keys_give_one_line(tmp_path, names, values):
    path = tmp_path / f"run{names.next()}.json"
    path.write_text(json.dumps(values))
    try:
        cfg = TrainConfig.from_dict(read_config_file(path), source=str(path))
    except GptrainError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    # accepted: every setting given has the type of its default
    assert set(values) <= set(FIELDS)
    for name in values:
        field = TrainConfig.__dataclass_fields__[name]
        value, default = getattr(cfg, name), field.default
        if isinstance(default, str):  # preset: str | None, None meaning GPTConfig's defaults
            assert isinstance(value, str) or (value is None and "None" in str(field.type)), name
        elif isinstance(default, bool) or str(field.type).startswith("bool"):  # pad_vocab: bool | None
            assert isinstance(value, bool) or value is None, name
        elif isinstance(value, (int, float)):
            assert not isinstance(value, bool) and math.isfinite(value), name
    assert set(cfg.logger) <= {"jsonl", "csv", "tensorboard", "wandb", "mlflow"} and cfg.lr > 0 and cfg.batch_size >= 1


@settings(max_examples=EXAMPLES["config"], **SETTINGS)
@given(text=st.text(max_size=80), suffix=st.sampled_from([".toml", ".json"]))
def test_arbitrary_config_text_parses_or_gives_one_line(tmp_path, names, text, suffix):
    path = tmp_path / f"run{names.next()}{suffix}"
    path.write_text(text, encoding="utf-8")
    try:
        TrainConfig.from_dict(read_config_file(path), source=str(path))
    except GptrainError as exc:
        assert "\n" not in str(exc)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    from gptrain import GPTConfig

    return GPTModel(GPTConfig(vocab_size=50257, context_length=16, emb_dim=16, n_heads=2, n_layers=1,
                              drop_rate=0.0)).eval()


@settings(max_examples=EXAMPLES["generate"], **SETTINGS)
@given(prompt=st.lists(st.integers(0, 50256), min_size=1, max_size=20), max_new_tokens=st.integers(0, 24),
       temperature=st.one_of(st.just(0.0), st.floats(0.05, 3.0)), top_k=st.one_of(st.none(), st.integers(1, 60000)),
       top_p=st.one_of(st.none(), st.floats(0.01, 1.0)), eos=st.booleans(), seed=st.integers(0, 2**31))
def test_generate_returns_exactly_the_asked_tokens_or_stops_at_eos(tiny_model, prompt, max_new_tokens, temperature,
                                                                    top_k, top_p, eos, seed):
    idx = torch.tensor([prompt])
    generator = torch.Generator().manual_seed(seed)
    # With an eos id, make it the most likely token now and then, so that stopping is exercised too.
    eos_id = prompt[-1] if eos else None
    out = generate(tiny_model, idx, max_new_tokens, context_size=16, temperature=temperature, top_k=top_k,
                   top_p=top_p, eos_id=eos_id, generator=generator)
    assert torch.equal(out[:, :len(prompt)], idx)
    new = out[0, len(prompt):].tolist()
    assert all(0 <= token < 50257 for token in new)
    if eos_id is None:
        assert len(new) == max_new_tokens
    else:
        assert len(new) <= max_new_tokens and eos_id not in new
        if len(new) < max_new_tokens:  # it stopped: the next token would have been eos
            again = generate(tiny_model, idx, len(new) + 1, context_size=16, temperature=temperature, top_k=top_k,
                             top_p=top_p, generator=torch.Generator().manual_seed(seed))
            assert again[0, -1].item() == eos_id


@settings(max_examples=EXAMPLES["eval"], **SETTINGS)
@given(text=st.text(max_size=60), stride=st.one_of(st.none(), st.integers(1, 16)), batch_size=st.integers(1, 4))
def test_eval_scores_any_short_text_or_gives_one_line(tiny_model, text, stride, batch_size):
    tokens = len(get_tokenizer().encode(text, allowed_special="all"))
    try:
        result = evaluate_text(tiny_model, text, stride=stride, batch_size=batch_size, progress=False)
    except GptrainError as exc:
        assert "\n" not in str(exc) and tokens < 2, str(exc)
        return
    assert tokens >= 2
    assert result.scored_tokens == tokens - 1 and math.isfinite(result.loss) and result.loss > 0
    assert result.bytes == len(text.encode("utf-8"))
