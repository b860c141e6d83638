"""The inference layout by default: generation on a model in eval mode switches its float32 weights, training switches back."""

import copy

import pytest
import torch
import torch.nn.functional as F

from gptrain import GPTModel, load_checkpoint, save_checkpoint
from gptrain.inference.cpu import SlicedLinear
from gptrain.inference.generate import generate
from gptrain.model.lora import LoRALinear, add_lora, lora_layers, merge_lora


def linear_weights(model):
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]


def transposed(weight) -> bool:
    return weight.t().is_contiguous() and not weight.is_contiguous()


def loss_and_grads(model, batch):
    model.zero_grad()
    loss = F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.fixture
def model(tiny_cfg):
    torch.manual_seed(3)
    return GPTModel(tiny_cfg.replace(emb_dim=64, qkv_bias=True))


def test_generate_switches_an_eval_model_by_itself_and_train_switches_back(model, tmp_path):
    reference = copy.deepcopy(model).eval()
    idx = torch.tensor([[1, 2, 3, 4]])
    expected = reference(idx)  # with autograd: no switch
    assert all(w.is_contiguous() for w in linear_weights(reference))
    model.eval()
    tokens = generate(model, idx, 20, 32)
    assert all(transposed(w) for w in linear_weights(model))
    assert torch.equal(tokens[:, :5], torch.cat([idx, expected[:, -1:].argmax(-1)], dim=1))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), expected, atol=1e-5, rtol=1e-5)
    save_checkpoint(model, tmp_path / "ckpt")  # saved contiguous, loads equal
    for a, b in zip(reference.state_dict().values(), load_checkpoint(tmp_path / "ckpt").state_dict().values()):
        assert torch.equal(a, b)
    model.train()
    assert all(w.is_contiguous() for w in linear_weights(model))
    batch = torch.randint(0, model.cfg.vocab_size, (2, 17))
    loss, grads = loss_and_grads(model, batch)  # no inference tensor left behind; same gradients
    expected_loss, expected_grads = loss_and_grads(reference.train(), batch)
    assert torch.equal(loss, expected_loss)
    for a, b in zip(grads, expected_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_generate_on_a_model_in_train_mode_leaves_it_training_in_the_default_layout(model):
    generate(model, torch.tensor([[5, 6]]), 5, 32)  # a sample in the middle of training copies no weights
    assert model.training and all(w.is_contiguous() for w in linear_weights(model))


def test_the_layout_stays_across_generate_calls_until_training(model):
    model.eval()
    generate(model, torch.tensor([[5, 6]]), 3, 32)
    weights = [w.data_ptr() for w in linear_weights(model)]
    generate(model, torch.tensor([[7]]), 3, 32)
    assert [w.data_ptr() for w in linear_weights(model)] == weights  # switched once, not per call


def test_evaluating_batches_or_with_autograd_or_in_bf16_keeps_the_layout(model):
    model.eval()
    windows = torch.randint(0, model.cfg.vocab_size, (2, 32))
    with torch.no_grad():
        model(windows)
    model(windows[:, :2])  # autograd on: a product that trains keeps its layout
    assert all(w.is_contiguous() for w in linear_weights(model))
    half = copy.deepcopy(model).to(torch.bfloat16)
    generate(half, windows[:1, :3], 3, 32)
    assert all(w.is_contiguous() for w in linear_weights(half))


def test_lora_layers_keep_their_class_and_layout_and_generate_the_same_tokens(model):
    adapted = add_lora(model, rank=4).eval()
    with torch.no_grad():
        for layer in lora_layers(adapted).values():
            layer.lora_B.normal_()  # a non-zero update, so the adapters count in the tokens
    plain = copy.deepcopy(adapted)
    idx = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        expected = [plain(idx[:, :n])[:, -1] for n in range(1, 5)]
    tokens = generate(adapted, idx, 12, 32)
    assert all(type(m) is LoRALinear and m.weight.is_contiguous() for m in lora_layers(adapted).values())
    assert type(adapted.out_head) is SlicedLinear and transposed(adapted.out_head.weight)
    with torch.no_grad():
        torch.testing.assert_close([adapted(idx[:, :n])[:, -1] for n in range(1, 5)], expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(tokens, generate(merge_lora(plain), idx, 12, 32))
