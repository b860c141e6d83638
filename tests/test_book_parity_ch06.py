"""Chapter 6 side by side with the book's own package (llms-from-scratch): same seeds, same numbers."""

import csv

import pytest
import torch
from torch.utils.data import DataLoader

from gptrain import (
    GPTModel,
    SpamDataset,
    calc_accuracy_loader,
    calc_loss_batch,
    calc_loss_batch_classifier,
    calc_loss_loader_classifier,
    classify_review,
    evaluate_model_classifier,
    train_classifier_simple,
)

pytest.importorskip("pandas")
book_ch04 = pytest.importorskip("llms_from_scratch.ch04")
book_ch06 = pytest.importorskip("llms_from_scratch.ch06")

TEXTS = ["You won a free prize, call now!", "See you at lunch?", "URGENT: claim your reward",
         "Running late, start without me", "Free entry in a weekly draw, text WIN", "Ok thanks",
         "Congratulations, you have been selected for a cash award of 1000 pounds", "Can you pick up milk"]


@pytest.fixture
def spam_csv(tmp_path):
    """The book's CSV layout (Label, Text, integer labels) with texts of several lengths."""
    path = tmp_path / "train.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Label", "Text"])
        writer.writerows([i % 2 == 0, text] for i, text in enumerate(TEXTS))
    path.write_text(path.read_text().replace("True", "1").replace("False", "0"))
    return path


def classifiers(cfg, seed=123):
    """Our model and the book's, each with the book's 2-class head and freezing, from the same seeds."""
    models = []
    for build in (GPTModel, lambda c: book_ch04.GPTModel(c.to_dict())):
        torch.manual_seed(seed)
        model = build(cfg)
        model.requires_grad_(False)
        torch.manual_seed(seed)
        model.out_head = torch.nn.Linear(cfg.emb_dim, 2)
        for module in (model.trf_blocks[-1], model.final_norm, model.out_head):
            module.requires_grad_(True)
        models.append(model)
    return models


def test_spam_dataset_equals_the_books(spam_csv, tokenizer):
    for max_length in (None, 6):
        ours = SpamDataset(spam_csv, tokenizer, max_length=max_length)
        book = book_ch06.SpamDataset(spam_csv, tokenizer, max_length=max_length)
        assert ours.max_length == book.max_length == (13 if max_length is None else 6)
        assert len(ours) == len(book) == len(TEXTS)
        for i in range(len(book)):
            assert torch.equal(ours[i][0], book[i][0]) and torch.equal(ours[i][1], book[i][1])


def test_losses_accuracy_and_review_equal_the_books(spam_csv, tokenizer, tiny_cfg):
    ours, book = classifiers(tiny_cfg)
    loader = DataLoader(SpamDataset(spam_csv, tokenizer), batch_size=3)
    x, y = next(iter(loader))
    with torch.no_grad():
        assert calc_loss_batch_classifier(x, y, ours.eval(), "cpu").item() == pytest.approx(
            book_ch06.calc_loss_batch(x, y, book.eval(), "cpu").item(), abs=1e-5)
    assert calc_loss_loader_classifier(loader, ours, "cpu", 2) == pytest.approx(
        book_ch06.calc_loss_loader(loader, book, "cpu", 2), abs=1e-5)
    assert evaluate_model_classifier(ours, loader, loader, "cpu", 3) == pytest.approx(
        book_ch06.evaluate_model(book, loader, loader, "cpu", 3), abs=1e-5)
    assert calc_accuracy_loader(loader, ours, "cpu") == book_ch06.calc_accuracy_loader(loader, book, "cpu")
    for text in TEXTS[:4]:
        assert classify_review(text, ours, tokenizer, "cpu", max_length=13) == classify_review(
            text, book, tokenizer, "cpu", max_length=13) == book_ch06.classify_review(
            text, book, tokenizer, "cpu", max_length=13)
    with pytest.raises(ValueError):  # the chapter 5 name keeps the chapter 5 loss: targets per token
        calc_loss_batch(x, y, ours, "cpu")


def test_train_classifier_simple_reproduces_the_books(spam_csv, tokenizer, tiny_cfg, capsys):
    def run(model, train_fn):
        torch.manual_seed(123)
        loader = DataLoader(SpamDataset(spam_csv, tokenizer), batch_size=2, shuffle=True, drop_last=True)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
        return train_fn(model, loader, loader, optimizer, "cpu", num_epochs=3, eval_freq=2, eval_iter=2)

    ours, book = classifiers(tiny_cfg)
    mine = run(ours, train_classifier_simple)
    printed_ours = capsys.readouterr().out
    theirs = run(book, book_ch06.train_classifier_simple)
    printed_book = capsys.readouterr().out
    assert mine[4] == theirs[4] == 3 * len(TEXTS)  # examples seen
    for a, b in zip(mine[:4], theirs[:4]):
        assert a == pytest.approx(b, abs=1e-4)
    assert mine[0][-1] < mine[0][0]
    assert printed_ours.splitlines()[:2] == printed_book.splitlines()[:2]
