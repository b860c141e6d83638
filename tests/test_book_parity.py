"""Side by side with the book's own package (llms-from-scratch): same seeds, same numbers."""

import pytest
import torch

from gptrain import (
    GPTDatasetV1,
    GPTModel,
    calc_loss_loader,
    create_dataloader_v1,
    generate,
    generate_text_simple,
    train_model_simple,
)

book_ch02 = pytest.importorskip("llms_from_scratch.ch02")
book_ch04 = pytest.importorskip("llms_from_scratch.ch04")
book_ch05 = pytest.importorskip("llms_from_scratch.ch05")

NORM_NAMES = {"weight": "scale", "bias": "shift"}


def book_name(name: str) -> str:
    parts = name.split(".")
    if parts[-2] in {"norm1", "norm2", "final_norm"}:
        parts[-1] = NORM_NAMES[parts[-1]]
    return ".".join(parts)


def both_models(cfg, seed=123):
    torch.manual_seed(seed)
    ours = GPTModel(cfg)
    torch.manual_seed(seed)
    book = book_ch04.GPTModel(cfg.to_dict())
    return ours, book


def test_same_seed_gives_the_books_initial_weights(tiny_cfg):
    ours, book = both_models(tiny_cfg)
    book_state = book.state_dict()
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, book_state[book_name(name)]), name


def test_logits_equal_the_books(tiny_cfg):
    ours, book = both_models(tiny_cfg)
    x = torch.randint(0, tiny_cfg.vocab_size, (2, tiny_cfg.context_length))
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), book.eval()(x), atol=1e-5, rtol=1e-5)


def test_windows_equal_the_books(tokenizer, verdict_text):
    ours = GPTDatasetV1(verdict_text, tokenizer, max_length=256, stride=128)
    book = book_ch02.GPTDatasetV1(verdict_text, tokenizer, max_length=256, stride=128)
    assert len(ours) == len(book) == 39
    for i in (0, 17, len(book) - 1):
        assert torch.equal(ours[i][0], book[i][0]) and torch.equal(ours[i][1], book[i][1])


def test_greedy_and_sampled_generation_equal_the_books(tiny_cfg):
    ours, book = both_models(tiny_cfg)
    ours.eval(), book.eval()
    idx = torch.tensor([[6109, 3626, 6100, 345]])
    assert torch.equal(generate_text_simple(ours, idx, 20, tiny_cfg.context_length),
                       book_ch04.generate_text_simple(book, idx, 20, tiny_cfg.context_length))
    torch.manual_seed(7)
    mine = generate(ours, idx, 40, tiny_cfg.context_length, temperature=1.4, top_k=25)
    torch.manual_seed(7)
    theirs = book_ch05.generate(book, idx, 40, tiny_cfg.context_length, temperature=1.4, top_k=25)
    assert torch.equal(mine, theirs)


def test_train_model_simple_reproduces_the_books_losses(tiny_cfg, tokenizer, verdict_text, capsys):
    text = verdict_text[:4000]
    cut = int(0.9 * len(text))

    def run(model, train_fn):
        torch.manual_seed(5)
        train_loader = create_dataloader_v1(text[:cut], batch_size=2, max_length=32, stride=32)
        val_loader = create_dataloader_v1(text[cut:], batch_size=2, max_length=32, stride=32,
                                          shuffle=False, drop_last=False)
        optimizer = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
        return train_fn(model, train_loader, val_loader, optimizer, "cpu", num_epochs=2, eval_freq=5,
                        eval_iter=2, start_context="Every effort moves you", tokenizer=tokenizer)

    ours, book = both_models(tiny_cfg)
    train_ours, val_ours, tokens_ours = run(ours, train_model_simple)
    printed_ours = capsys.readouterr().out
    train_book, val_book, tokens_book = run(book, book_ch05.train_model_simple)
    printed_book = capsys.readouterr().out
    assert tokens_ours == tokens_book
    assert train_ours == pytest.approx(train_book, abs=1e-4)
    assert val_ours == pytest.approx(val_book, abs=1e-4)
    assert printed_ours.splitlines()[0] == printed_book.splitlines()[0]
    assert printed_ours.startswith("Ep 1 (Step 000000): Train loss")


def test_loader_loss_equals_the_books(tiny_cfg, verdict_text):
    ours, book = both_models(tiny_cfg)
    loader = create_dataloader_v1(verdict_text[:3000], batch_size=2, max_length=32, stride=32, shuffle=False)
    with torch.no_grad():
        assert calc_loss_loader(loader, ours.eval(), "cpu", 3) == pytest.approx(
            book_ch05.calc_loss_loader(loader, book.eval(), "cpu", 3), abs=1e-5)
