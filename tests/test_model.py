import math

import pytest
import torch
import torch.nn.functional as F

from gptrain import GPT_CONFIG_124M, PRESETS, GPTConfig, GPTModel, count_parameters, get_preset
from gptrain.model.gpt import MultiHeadAttention


def naive_causal_attention(att: MultiHeadAttention, x: torch.Tensor) -> torch.Tensor:
    """The book's masked-softmax attention: the reference our SDPA path must equal."""
    b, t, _ = x.shape
    q = att.W_query(x).view(b, t, att.num_heads, att.head_dim).transpose(1, 2)
    k = att.W_key(x).view(b, t, att.num_heads, att.head_dim).transpose(1, 2)
    v = att.W_value(x).view(b, t, att.num_heads, att.head_dim).transpose(1, 2)
    scores = q @ k.transpose(2, 3)
    mask = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
    weights = torch.softmax(scores.masked_fill(mask, -torch.inf) / att.head_dim ** 0.5, dim=-1)
    return att.out_proj((weights @ v).transpose(1, 2).reshape(b, t, att.d_out))


def test_accepts_book_dict_typed_config_and_preset_name():
    small = dict(GPT_CONFIG_124M, emb_dim=32, n_heads=4, n_layers=1, context_length=16)
    assert GPTModel(small).cfg == GPTConfig(**small)
    assert GPTModel(GPTConfig(**small)).cfg.emb_dim == 32
    assert GPTModel("tiny").cfg == PRESETS["tiny"]


def test_lecture_module_names(tiny_cfg):
    model = GPTModel(tiny_cfg)
    assert model.tok_emb.weight.shape == (tiny_cfg.vocab_size, tiny_cfg.emb_dim)
    assert model.pos_emb.weight.shape == (tiny_cfg.context_length, tiny_cfg.emb_dim)
    assert len(model.trf_blocks) == tiny_cfg.n_layers
    block = model.trf_blocks[0]
    assert sum(p.numel() for p in block.att.parameters()) > 0
    assert sum(p.numel() for p in block.ff.parameters()) > 0
    assert model.final_norm.weight.shape == (tiny_cfg.emb_dim,)
    assert model.out_head.weight.shape == (tiny_cfg.vocab_size, tiny_cfg.emb_dim)


def test_forward_returns_logits(tiny_cfg):
    model = GPTModel(tiny_cfg)
    logits = model(torch.randint(0, tiny_cfg.vocab_size, (3, 7)))
    assert logits.shape == (3, 7, tiny_cfg.vocab_size)


def test_124m_parameter_counts():
    with torch.device("meta"):
        model = GPTModel(GPT_CONFIG_124M)
    assert count_parameters(model) == 163_009_536
    assert count_parameters(model, include_out_head=False) == 124_412_160
    with torch.device("meta"):
        tied = GPTModel(get_preset("124M").replace(tie_embeddings=True))
    assert count_parameters(tied) == 124_412_160
    assert tied.out_head.weight is tied.tok_emb.weight


@pytest.mark.parametrize("name,layers,width,heads", [
    ("124M", 12, 768, 12), ("355M", 24, 1024, 16), ("774M", 36, 1280, 20), ("1558M", 48, 1600, 25),
])
def test_presets_match_the_lecture(name, layers, width, heads):
    cfg = get_preset(name)
    assert (cfg.n_layers, cfg.emb_dim, cfg.n_heads, cfg.context_length, cfg.vocab_size) == (layers, width, heads, 1024, 50257)


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown preset 'huge': choose one of tiny, 124M"):
        get_preset("huge")


@pytest.mark.parametrize("bad", [dict(emb_dim=30, n_heads=4), dict(n_layers=0), dict(drop_rate=1.5)])
def test_invalid_configs_are_refused(bad):
    with pytest.raises(ValueError, match="model config"):
        GPTConfig(**bad)


def test_sdpa_attention_equals_naive_masked_softmax(tiny_cfg):
    torch.manual_seed(1)
    att = GPTModel(tiny_cfg).eval().trf_blocks[0].att
    x = torch.randn(2, 9, tiny_cfg.emb_dim)
    torch.testing.assert_close(att(x), naive_causal_attention(att, x), atol=1e-6, rtol=1e-5)


def test_causality_future_tokens_do_not_change_past_logits(tiny_cfg):
    model = GPTModel(tiny_cfg).eval()
    x = torch.randint(0, tiny_cfg.vocab_size, (1, 10))
    y = x.clone()
    y[0, 6:] = (y[0, 6:] + 1) % tiny_cfg.vocab_size
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0, :6], model(y)[0, :6])


def test_dropout_only_in_train_mode(tiny_cfg):
    model = GPTModel(tiny_cfg.replace(drop_rate=0.5))
    x = torch.randint(0, tiny_cfg.vocab_size, (2, 8))
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_initial_loss_is_near_ln_vocab(tiny_cfg):
    torch.manual_seed(0)
    model = GPTModel(tiny_cfg).eval()
    x = torch.randint(0, tiny_cfg.vocab_size, (4, 32))
    y = torch.randint(0, tiny_cfg.vocab_size, (4, 32))
    with torch.no_grad():
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
    assert abs(loss - math.log(tiny_cfg.vocab_size)) < 0.3


def test_too_long_input_is_refused(tiny_cfg):
    model = GPTModel(tiny_cfg)
    with pytest.raises(ValueError, match="crop it"):
        model(torch.zeros(1, tiny_cfg.context_length + 1, dtype=torch.long))


def test_config_dict_access_like_the_book():
    cfg = get_preset("124M")
    assert cfg["emb_dim"] == 768
    with pytest.raises(KeyError):
        cfg["nope"]
