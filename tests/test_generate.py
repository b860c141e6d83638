import pytest
import torch

from gptrain import (
    GPTModel,
    generate,
    generate_and_print_sample,
    generate_text_advanced,
    generate_text_simple,
    text_to_token_ids,
)
from gptrain.inference.generate import SamplingError, check_sampling_args, keep_top_p, select_next_token, stream_text

LECTURE_LOGITS = torch.tensor([[2.1, 1.3, 0.8]])


def test_temperature_scaling_of_the_lecture_logits():
    # Worked by hand: exp(l / T) / sum. (The lecture's slide rounds these loosely: it shows
    # [0.70, 0.25, 0.05], [0.52, 0.31, 0.17] and [0.42, 0.35, 0.23].)
    expected = {0.5: [0.7836, 0.1582, 0.0582], 1.0: [0.5808, 0.2610, 0.1583], 2.0: [0.4561, 0.3058, 0.2381]}
    for temperature, probs in expected.items():
        got = torch.softmax(LECTURE_LOGITS / temperature, dim=-1)[0]
        assert got.tolist() == pytest.approx(probs, abs=1e-4)


def test_temperature_zero_is_argmax():
    assert select_next_token(LECTURE_LOGITS, temperature=0.0).item() == 0
    assert select_next_token(torch.tensor([[0.1, 3.0, -1.0], [5.0, 0.0, 0.0]])).tolist() == [[1], [0]]


def test_top_k_never_samples_outside_the_k_largest():
    logits = torch.tensor([[0.0, 5.0, 4.9, -3.0, 4.8, 1.0]])
    gen = torch.Generator().manual_seed(0)
    seen = {select_next_token(logits, temperature=5.0, top_k=3, generator=gen).item() for _ in range(300)}
    assert seen == {1, 2, 4}


def test_top_k_one_is_greedy_even_when_hot():
    gen = torch.Generator().manual_seed(0)
    assert {select_next_token(LECTURE_LOGITS, 100.0, top_k=1, generator=gen).item() for _ in range(50)} == {0}


def test_top_k_larger_than_vocabulary_is_clamped():
    gen = torch.Generator().manual_seed(0)
    assert select_next_token(LECTURE_LOGITS, 1.0, top_k=10, generator=gen).item() in {0, 1, 2}


def test_sampling_frequencies_follow_the_softmax():
    gen = torch.Generator().manual_seed(123)
    draws = torch.cat([select_next_token(LECTURE_LOGITS, 1.0, generator=gen) for _ in range(4000)])
    observed = torch.bincount(draws.flatten(), minlength=3).float() / 4000
    torch.testing.assert_close(observed, torch.softmax(LECTURE_LOGITS, -1)[0], atol=0.03, rtol=0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=-0.1), "temperature must be >= 0"), (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=float("inf")), "temperature"), (dict(top_k=0), "top_k must be at least 1"),
    (dict(max_new_tokens=-1), "max_new_tokens"), (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), "top_p"), (dict(top_p=-0.2), "top_p"), (dict(context_size=0), "context_size"),
])
def test_bad_sampling_arguments(tiny_cfg, kwargs, match):
    args = dict(max_new_tokens=3, temperature=1.0, top_k=None, context_size=8) | kwargs
    with pytest.raises(ValueError, match=match):
        generate(GPTModel(tiny_cfg), torch.tensor([[1, 2]]), **args)


@pytest.mark.parametrize("field,settings", [("max_new_tokens", (-1, 1.0, None, None)), ("temperature", (3, -1.0, None, None)),
                                            ("top_k", (3, 1.0, 0, None)), ("top_p", (3, 1.0, None, 1.5))])
def test_a_bad_sampling_setting_names_its_field(field, settings):
    """The server answers with this name as its error object's param."""
    with pytest.raises(SamplingError) as caught:
        check_sampling_args(*settings)
    assert caught.value.param == field


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.2, 0.5, 0.05, 0.25]])
    kept = {top_p: (keep_top_p(probs, top_p)[0] > 0).nonzero().flatten().tolist()
            for top_p in (0.01, 0.5, 0.51, 0.74, 0.76, 0.96, 1.0)}
    assert kept == {0.01: [1], 0.5: [1], 0.51: [1, 3], 0.74: [1, 3], 0.76: [0, 1, 3], 0.96: [0, 1, 2, 3],
                    1.0: [0, 1, 2, 3]}
    assert torch.equal(keep_top_p(probs, 0.6)[0], torch.tensor([0.0, 0.5, 0.0, 0.25]))


def test_top_p_never_samples_outside_the_nucleus_and_follows_its_renormalised_probabilities():
    logits = torch.log(torch.tensor([[0.45, 0.05, 0.3, 0.2]]))
    gen = torch.Generator().manual_seed(0)
    draws = torch.cat([select_next_token(logits, 1.0, top_p=0.7, generator=gen) for _ in range(3000)]).flatten()
    assert set(draws.tolist()) == {0, 2}
    assert (draws == 0).float().mean().item() == pytest.approx(0.45 / 0.75, abs=0.03)


def test_top_p_one_and_huge_top_k_change_nothing():
    logits = torch.randn(2, 50)
    draws = []
    for kwargs in (dict(), dict(top_p=1.0), dict(top_k=10_000)):
        gen = torch.Generator().manual_seed(3)
        draws.append(torch.cat([select_next_token(logits, 1.0, generator=gen, **kwargs) for _ in range(50)], 1))
    assert torch.equal(draws[0], draws[1]) and torch.equal(draws[0], draws[2])


def test_a_seeded_generator_is_independent_of_the_global_rng(tiny_cfg):
    model = GPTModel(tiny_cfg)
    idx = torch.tensor([[6109, 3626]])
    outs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        outs.append(generate(model, idx, 15, 32, temperature=1.0, generator=torch.Generator().manual_seed(8)))
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], generate(model, idx, 15, 32, temperature=1.0,
                                             generator=torch.Generator().manual_seed(9)))


def test_stream_text_never_splits_a_character(tokenizer):
    text = "Grüße, naïve café 🙂🚀 日本語のテキスト ok"
    ids = tokenizer.encode(text)
    split = [i for i in ids if not _is_utf8(tokenizer.decode_single_token_bytes(i))]
    assert split  # the text does have tokens that end inside a character
    pieces = list(stream_text(tokenizer, ids))
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)
    assert len(pieces) > 5  # it streams, rather than decoding everything at the end


def test_stream_text_replaces_invalid_bytes_like_decode(tokenizer):
    ids = tokenizer.encode("🙂")[:1] + tokenizer.encode(" ok")  # a character cut short, then text
    assert "".join(stream_text(tokenizer, ids)) == tokenizer.decode(ids)
    assert "".join(stream_text(tokenizer, ids[:1])) == tokenizer.decode(ids[:1]) == "\ufffd"


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_same_seed_same_output(tiny_cfg):
    model = GPTModel(tiny_cfg)
    idx = torch.tensor([[6109, 3626]])
    outs = []
    for _ in range(2):
        torch.manual_seed(42)
        outs.append(generate(model, idx, 20, 32, temperature=1.5, top_k=50))
    assert torch.equal(outs[0], outs[1])
    torch.manual_seed(43)
    assert not torch.equal(outs[0], generate(model, idx, 20, 32, temperature=1.5, top_k=50))


def test_greedy_shapes_and_crop_to_the_model_window(tiny_cfg):
    model = GPTModel(tiny_cfg)
    idx = torch.randint(0, tiny_cfg.vocab_size, (2, tiny_cfg.context_length + 5))
    out = generate_text_simple(model, idx, 4, context_size=10_000)
    assert out.shape == (2, tiny_cfg.context_length + 9)
    assert torch.equal(out[:, :idx.shape[1]], idx)


def test_generation_restores_train_mode_and_ignores_dropout(tiny_cfg):
    model = GPTModel(tiny_cfg.replace(drop_rate=0.5)).train()
    idx = torch.tensor([[1, 2, 3]])
    first = generate(model, idx, 10, 32)
    assert model.training
    assert torch.equal(first, generate(model, idx, 10, 32))


def test_stops_at_eos_without_appending_it(tiny_cfg):
    model = GPTModel(tiny_cfg).eval()
    idx = torch.tensor([[5, 6, 7]])
    greedy = generate(model, idx, 10, 32)
    eos = greedy[0, 5].item()  # the third new token
    stopped = generate(model, idx, 10, 32, eos_id=eos)
    first_eos = (greedy[0, 3:] == eos).nonzero()[0].item()
    assert torch.equal(stopped, greedy[:, :3 + first_eos])


def test_generate_text_advanced_defaults_to_sampling(tiny_cfg):
    model = GPTModel(tiny_cfg)
    idx = torch.tensor([[1, 2]])
    torch.manual_seed(9)
    a = generate_text_advanced(model, idx, 8, 32, top_k=5)
    torch.manual_seed(9)
    b = generate(model, idx, 8, 32, temperature=1.0, top_k=5)
    assert torch.equal(a, b)


def test_generate_and_print_sample(tiny_cfg, tokenizer, capsys):
    text = generate_and_print_sample(GPTModel(tiny_cfg), tokenizer, "cpu", "Every effort moves you")
    assert capsys.readouterr().out.strip() == text
    assert text.startswith("Every effort moves you")
    assert len(tokenizer.encode(text)) >= 4 + 50 - 5  # 50 new tokens (re-encoding may merge a few)
    assert text_to_token_ids("Every effort moves you", tokenizer).shape == (1, 4)
