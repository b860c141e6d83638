import math

import pytest
import torch
import torch.nn.functional as F

from gptrain import (
    GPTModel,
    calc_loss_batch,
    calc_loss_loader,
    calc_loss_manual,
    calc_loss_pytorch,
    create_dataloader_v1,
    perplexity,
)


def test_manual_loss_equals_cross_entropy(tiny_cfg):
    torch.manual_seed(3)
    model = GPTModel(tiny_cfg).eval()
    x = torch.randint(0, tiny_cfg.vocab_size, (2, 16))
    y = torch.randint(0, tiny_cfg.vocab_size, (2, 16))
    with torch.no_grad():
        manual = calc_loss_manual(x, y, model, "cpu")
        fused = calc_loss_pytorch(x, y, model, "cpu")
        direct = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    assert abs(manual.item() - fused.item()) < 1e-5
    assert fused.item() == pytest.approx(direct.item(), abs=1e-7)


def test_lecture_exercise_numbers():
    # -log(0.6) for "mat"; the good and bad models of the lecture's weather example.
    assert round(-math.log(0.6), 2) == 0.51
    assert round(-math.log(0.8), 2) == 0.22 and round(-math.log(0.1), 2) == 2.30


def test_loss_is_differentiable(tiny_cfg):
    model = GPTModel(tiny_cfg)
    x = torch.randint(0, tiny_cfg.vocab_size, (2, 8))
    loss = calc_loss_batch(x, x, model, "cpu")
    loss.backward()
    assert model.tok_emb.weight.grad is not None


def test_loader_loss_averages_batches(tiny_cfg, verdict_text):
    model = GPTModel(tiny_cfg).eval()
    loader = create_dataloader_v1(verdict_text[:2000], batch_size=2, max_length=16, stride=16, shuffle=False)
    batches = list(loader)[:3]
    with torch.no_grad():
        expected = sum(calc_loss_batch(x, y, model, "cpu").item() for x, y in batches) / 3
        assert calc_loss_loader(loader, model, "cpu", num_batches=3) == pytest.approx(expected, rel=1e-6)
        # asking for more batches than exist uses them all
        everything = calc_loss_loader(loader, model, "cpu")
        assert calc_loss_loader(loader, model, "cpu", num_batches=10_000) == pytest.approx(everything)


def test_empty_loader_is_an_error_not_nan(tiny_cfg, verdict_text):
    loader = create_dataloader_v1(verdict_text[:300], batch_size=50, max_length=16, stride=16, drop_last=True)
    assert len(loader) == 0
    with pytest.raises(ValueError, match="no batches"):
        calc_loss_loader(loader, GPTModel(tiny_cfg), "cpu")


def test_perplexity():
    assert perplexity(0.0) == 1.0
    assert perplexity(torch.tensor(math.log(50257))) == pytest.approx(50257)
