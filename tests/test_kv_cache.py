"""The KV cache: cached logits equal full recomputation, and cached generation equals the plain loop."""

import copy

import pytest
import torch

from gptrain import GPTModel, load_checkpoint, save_checkpoint
from gptrain.inference.cpu import (
    SlicedLinear,
    _inner_slices,
    _one_bfloat16_row,
    optimize_for_cpu_inference,
    store_weights_transposed,
)
from gptrain.inference.generate import generate, generate_batch, stream_tokens
from gptrain.model.gpt import KVCache


@pytest.fixture
def model(tiny_cfg):
    torch.manual_seed(3)
    return GPTModel(tiny_cfg).eval()


def test_cached_logits_equal_the_full_forward(model, tiny_cfg):
    x = torch.randint(0, tiny_cfg.vocab_size, (2, 20))
    with torch.no_grad():
        full = model(x)
        cache = KVCache(tiny_cfg, batch_size=2, max_len=tiny_cfg.context_length)
        pieces = [model(x[:, :6], cache)]  # prefill
        pieces += [model(x[:, i:i + 1], cache) for i in range(6, 12)]  # one token per step
        pieces.append(model(x[:, 12:20], cache))  # a chunk after cached tokens needs an explicit causal mask
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_last_only_gives_the_last_positions_logits(model, tiny_cfg):
    x = torch.randint(0, tiny_cfg.vocab_size, (3, 9))
    with torch.no_grad():
        last = model(x, KVCache(tiny_cfg, 3, 16), last_only=True)
        assert last.shape == (3, 1, tiny_cfg.vocab_size)
        torch.testing.assert_close(last[:, 0], model(x)[:, -1], atol=1e-5, rtol=1e-5)


def test_left_padded_rows_equal_each_row_alone_and_padding_stays_finite(model, tiny_cfg):
    rows = [torch.randint(0, tiny_cfg.vocab_size, (n,)) for n in (7, 3, 5)]
    pad = torch.tensor([0, 4, 2])
    batch = torch.zeros(3, 7, dtype=torch.long)
    for i, row in enumerate(rows):
        batch[i, pad[i]:] = row
    with torch.no_grad():
        cache = KVCache(tiny_cfg, 3, tiny_cfg.context_length, pad=pad)
        prefill = model(batch, cache)
        next_tokens = torch.randint(0, tiny_cfg.vocab_size, (3, 1))
        step = model(next_tokens, cache)
        assert torch.isfinite(prefill).all()  # a padding slot attends to itself, never to nothing (NaN)
        for i, row in enumerate(rows):
            alone = model(torch.cat([row, next_tokens[i]])[None])
            torch.testing.assert_close(prefill[i, pad[i]:], alone[0, :-1], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(step[i, 0], alone[0, -1], atol=1e-5, rtol=1e-5)


def test_a_full_cache_refuses_more_tokens(model, tiny_cfg):
    cache = KVCache(tiny_cfg, 1, 8)
    with torch.no_grad():
        model(torch.zeros(1, 8, dtype=torch.long), cache)
        with pytest.raises(ValueError, match="do not fit in its 8 positions: reset it"):
            model(torch.zeros(1, 1, dtype=torch.long), cache)
        cache.reset()
        assert model(torch.zeros(1, 1, dtype=torch.long), cache).shape == (1, 1, tiny_cfg.vocab_size)


SAMPLING = [
    dict(),
    dict(temperature=0.7),
    dict(temperature=1.0),
    dict(temperature=1.5, top_k=25),
    dict(temperature=2.0, top_k=1),
    dict(temperature=1.0, top_p=0.5),
    dict(temperature=1.3, top_k=40, top_p=0.9),
    dict(top_k=5, top_p=0.3),  # greedy: the filters cannot change the argmax
]


@pytest.mark.parametrize("sampling", SAMPLING, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "greedy")
@pytest.mark.parametrize("prompt_len,new_tokens,context_size", [
    (4, 20, 32),    # stays inside the window
    (4, 60, 32),    # outgrows the window: slides and recomputes every step
    (32, 5, 32),    # the prompt fills the window
    (45, 5, 32),    # the prompt is longer than the window
    (3, 30, 10),    # a window smaller than the model's
])
def test_cached_generation_equals_the_plain_loop(model, tiny_cfg, sampling, prompt_len, new_tokens, context_size):
    idx = torch.randint(0, tiny_cfg.vocab_size, (2, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
    runs = []
    for use_cache in (True, False):
        generator = torch.Generator().manual_seed(11)
        runs.append(generate(model, idx, new_tokens, context_size, generator=generator, use_cache=use_cache,
                             **sampling))
    assert runs[0].shape == (2, prompt_len + new_tokens)
    assert torch.equal(runs[0], runs[1])


def test_cached_sampling_consumes_the_global_rng_like_the_plain_loop(model):
    idx = torch.tensor([[6109, 3626, 6100, 345]])
    runs = []
    for use_cache in (True, False):
        torch.manual_seed(5)
        runs.append((generate(model, idx, 40, 32, temperature=1.4, top_k=25, use_cache=use_cache), torch.rand(3)))
    assert torch.equal(runs[0][0], runs[1][0])
    assert torch.equal(runs[0][1], runs[1][1])  # the same number of draws was taken


def test_eos_with_the_cache_equals_the_plain_loop(model):
    idx = torch.tensor([[5, 6, 7]])
    greedy = generate(model, idx, 12, 32, use_cache=False)
    eos = greedy[0, 8].item()
    cached = generate(model, idx, 12, 32, eos_id=eos)
    assert torch.equal(cached, generate(model, idx, 12, 32, eos_id=eos, use_cache=False))
    assert cached.shape[1] < greedy.shape[1] and eos not in cached[0, 3:].tolist()


def test_transposed_storage_changes_nothing_but_the_layout(model, tiny_cfg, tmp_path):
    transposed = store_weights_transposed(copy.deepcopy(model))
    assert not transposed.trf_blocks[0].att.W_query.weight.is_contiguous()
    for (name, a), b in zip(model.state_dict().items(), transposed.state_dict().values()):
        assert torch.equal(a, b), name
    idx = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(generate(transposed, idx, 30, 32), generate(model, idx, 30, 32))
    store_weights_transposed(transposed)  # a second call keeps the layout
    assert transposed.trf_blocks[0].att.W_query.weight.stride() == (1, tiny_cfg.emb_dim)
    save_checkpoint(transposed, tmp_path / "ckpt")
    for a, b in zip(model.state_dict().values(), load_checkpoint(tmp_path / "ckpt").state_dict().values()):
        assert torch.equal(a, b)


def test_tied_head_stays_tied(tiny_cfg):
    model = store_weights_transposed(GPTModel(tiny_cfg.replace(tie_embeddings=True)))
    assert model.out_head.weight is model.tok_emb.weight


def test_bfloat16_model_generates_with_a_bfloat16_cache(model):
    half = copy.deepcopy(model).to(torch.bfloat16)
    idx = torch.tensor([[1, 2, 3]])
    assert torch.equal(generate(half, idx, 10, 32), generate(half, idx, 10, 32, use_cache=False))


def test_generated_ids_can_feed_training(model):
    out = generate(model, torch.tensor([[1, 2, 3]]), 5, 32)
    model.train()
    loss = model(out[:, :-1]).flatten(0, 1).logsumexp(-1).mean()
    loss.backward()  # fails if generate leaked an inference-mode tensor
    assert model.tok_emb.weight.grad is not None


# --- batches of prompts of different lengths ------------------------------------------------

PROMPTS = [[6109, 3626, 6100, 345], [40], [464, 3290, 318, 257, 2829, 11, 290, 340, 1110], [50256, 50256]]


def test_batch_rows_equal_each_prompt_alone(model):
    out = generate_batch(model, PROMPTS, 25)
    for prompt, row in zip(PROMPTS, out):
        assert torch.equal(row, generate(model, torch.tensor([prompt]), 25, 32)[0])


def test_batch_rows_that_outgrow_the_window_equal_each_prompt_alone(model, tiny_cfg):
    prompts = [list(range(100, 100 + n)) for n in (30, 12, 1)]
    out = generate_batch(model, prompts, 20, context_size=tiny_cfg.context_length)
    for prompt, row in zip(prompts, out):
        assert torch.equal(row, generate(model, torch.tensor([prompt]), 20, 32)[0])


def test_each_row_stops_at_its_own_eos(model):
    alone = [generate(model, torch.tensor([p]), 25, 32)[0] for p in PROMPTS]
    eos = alone[0][len(PROMPTS[0]) + 4].item()  # row 0's fifth new token
    out = generate_batch(model, PROMPTS, 25, eos_id=eos)
    stopped = 0
    for prompt, row, full in zip(PROMPTS, out, alone):
        new = full[len(prompt):].tolist()
        expected = new[:new.index(eos)] if eos in new else new
        assert row.tolist() == prompt + expected
        stopped += eos in new
    assert stopped >= 1 and len(out[0]) == len(PROMPTS[0]) + 4


def test_sampled_batches_repeat_with_the_same_seed(model):
    runs = [generate_batch(model, PROMPTS, 15, temperature=1.2, top_p=0.95, generator=torch.Generator().manual_seed(4))
            for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize("prompts", [[], [[1, 2], []]])
def test_empty_batches_and_prompts_are_refused(model, prompts):
    with pytest.raises(ValueError, match="no empty prompt"):
        generate_batch(model, prompts, 3)


# --- streaming -----------------------------------------------------------------------------

def test_stream_tokens_yields_what_generate_appends(model):
    idx = torch.tensor([[6109, 3626]])
    full = generate(model, idx, 30, 32, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(2))
    streamed = list(stream_tokens(model, idx, 30, 32, temperature=1.0, top_k=20,
                                  generator=torch.Generator().manual_seed(2)))
    assert streamed == full[0, 2:].tolist()


def test_stream_keeps_eval_mode_until_it_ends_and_stops_at_eos(tiny_cfg):
    model = GPTModel(tiny_cfg.replace(drop_rate=0.5)).train()
    stream = stream_tokens(model, [1, 2, 3], 10)
    tokens = [next(stream)]
    assert not model.training
    tokens += list(stream)
    assert model.training and len(tokens) == 10
    eos = tokens[4]
    assert list(stream_tokens(model, [1, 2, 3], 10, eos_id=eos)) == tokens[:tokens.index(eos)]
    abandoned = stream_tokens(model, [1, 2, 3], 10)
    next(abandoned)
    abandoned.close()
    assert model.training


# --- one-row products spread over the threads ----------------------------------------------

@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("rows", [1, 5, 16, 17, 40])
@pytest.mark.parametrize("transposed", [False, True])
def test_sliced_products_equal_nn_linear(threads, rows, transposed):
    threads(3)  # 48 inner features cut in 3 slices of 16
    torch.manual_seed(0)
    layer = SlicedLinear(48, 20)
    if transposed:
        store_weights_transposed(layer)
    x = torch.randn(rows, 48)
    expected = torch.nn.functional.linear(x, layer.weight, layer.bias)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x[None])[0], expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(layer(x), expected)  # with autograd (training) it is nn.Linear exactly


def test_one_row_products_are_sliced_only_when_inferring_few_float32_rows_on_several_threads(threads):
    x = torch.randn(1, 768)
    threads(2)
    with torch.inference_mode():
        assert _inner_slices(x, 768) == 2
        assert _inner_slices(torch.randn(16, 768), 768) == 2
        assert _inner_slices(torch.randn(17, 768), 768) == 1  # MKL's own threading takes over
        assert _inner_slices(x.bfloat16(), 768) == 1
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert _inner_slices(x, 768) == 1
        threads(5)
        assert _inner_slices(x, 768) == 4  # the largest count up to the threads that divides 768
        threads(1)
        assert _inner_slices(x, 768) == 1
    threads(2)
    assert _inner_slices(x, 768) == 1  # autograd on: training stays nn.Linear


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 768), (1, 1, 768)])
def test_one_bfloat16_row_is_a_matrix_vector_product_with_nn_linears_bits(bias, shape):
    torch.manual_seed(0)
    layer = SlicedLinear(768, 2304, bias=bias).to(torch.bfloat16)
    for _ in range(5):
        x = torch.randn(shape, dtype=torch.bfloat16)
        expected = torch.nn.functional.linear(x, layer.weight, layer.bias)
        with torch.inference_mode():
            assert _one_bfloat16_row(x, layer.weight)
            assert torch.equal(layer(x), expected)


def test_only_one_inferred_bfloat16_row_takes_the_matrix_vector_product():
    weight = torch.zeros(20, 768, dtype=torch.bfloat16)
    row = torch.randn(1, 768, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert _one_bfloat16_row(row, weight)
        assert not _one_bfloat16_row(torch.randn(2, 768, dtype=torch.bfloat16), weight)  # a batch: F.linear
        assert not _one_bfloat16_row(row.float(), weight.float())  # float32 is sliced instead
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not _one_bfloat16_row(row, weight)
    assert not _one_bfloat16_row(row, weight)  # autograd on: training stays nn.Linear


def test_the_model_is_plain_until_optimized_and_keeps_its_names_and_state(model):
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 6 * model.cfg.n_layers + 1 and all(type(m) is torch.nn.Linear for m in linears)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    optimize_for_cpu_inference(model.eval())
    assert all(type(m) is SlicedLinear for m in linears)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items()) and state.keys() == model.state_dict().keys()


def test_generation_under_bfloat16_autocast(model):
    idx = torch.tensor([[1, 2, 3]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cached = generate(model, idx, 10, 32)
        assert torch.equal(cached, generate(model, idx, 10, 32, use_cache=False))
