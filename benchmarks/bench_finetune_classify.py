"""Classification fine-tuning side by side with the book's chapter 6 loop (run through bench_finetune.py).

Classification (chapter 6): the book's ``train_classifier_simple`` (llms_from_scratch.ch06, its
GPTModel from ch04) against gptrain's epoch (``gptrain finetune classify``'s: ``Inputs``,
``train_epoch`` and a validation pass), both from the same random GPT-2-shaped weights with the
book's 2-class head and freezing (last block, final norm and head train), AdamW at lr 5e-5 and
weight decay 0 (gptrain decays matrices only, the book every parameter; at 0 they agree), batch 8,
texts padded to the longest as the book's SpamDataset does. The texts are made up (spam-like and
not), as many as the book's SMS training split (1,045) by default.

It prints each loop's seconds per epoch (the book's with its evaluations every 50 steps on 5
batches, as chapter 6 runs it; gptrain's with a validation pass over the whole split) and, from one
epoch of each started from the same state, the train and validation loss and accuracy of both
results (computed with the book's functions): in fp32 they agree to rounding.

    python benchmarks/bench_finetune.py classify [--preset 124M] [--train-texts 1045] [--epochs 3] [--device cpu]
    python benchmarks/bench_finetune.py classify --n-layers 2 --emb-dim 64 --n-heads 4 --train-texts 96 --epochs 2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import book_model_from, machine_description  # noqa: E402

SPAM = ["WINNER! claim your free prize now", "URGENT: your account won a cash award, text CLAIM",
        "Free entry in our weekly draw, reply WIN", "You have been selected for a holiday, call now"]
HAM = ["see you at lunch tomorrow?", "running late, start without me", "can you pick up milk on the way home",
       "thanks for yesterday, it was great"]


def spam_like_texts(n: int, seed: int = 123) -> tuple[list[str], list[int]]:
    """Balanced made-up messages (label 1 spam, 0 not), of varied length as SMS are."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        words = " ".join(rng.choice(SPAM if label else HAM) for _ in range(rng.randint(1, 4)))
        texts.append(words)
        labels.append(label)
    return texts, labels


def classify_models(cfg, seed: int = 123):
    """gptrain's classifier and the book's computing the same function, with the book's head and freezing."""
    import torch

    from gptrain import GPTModel
    from gptrain.model.classifier import add_class_head, freeze_for_classification

    torch.manual_seed(seed)
    ours = GPTModel(cfg)
    book = book_model_from(ours)
    torch.manual_seed(seed)
    freeze_for_classification(add_class_head(ours, 2))
    book.requires_grad_(False)
    book.out_head = torch.nn.Linear(cfg.emb_dim, 2)
    book.out_head.load_state_dict(ours.out_head.state_dict())
    for module in (book.trf_blocks[-1], book.final_norm, book.out_head):
        module.requires_grad_(True)
    return ours, book


def classify_data(n_train: int, max_length: int | None):
    """Token ids and labels of the train and validation texts (1/7 as many), padded as SpamDataset does."""
    import torch

    from gptrain import get_tokenizer
    from gptrain.data.labeled import pad_encoded

    tokenizer = get_tokenizer()
    texts, labels = spam_like_texts(n_train + max(8, n_train // 7))
    encoded = [tokenizer.encode(text) for text in texts]
    length = max_length or max(len(ids) for ids in encoded[:n_train])
    ids = torch.tensor(pad_encoded(encoded, length))
    targets = torch.tensor(labels)
    return (ids[:n_train], targets[:n_train]), (ids[n_train:], targets[n_train:]), length


def book_loaders(train, val, batch_size: int):
    from torch.utils.data import DataLoader, TensorDataset

    return (DataLoader(TensorDataset(*train), batch_size=batch_size, shuffle=True, drop_last=True),
            DataLoader(TensorDataset(*val), batch_size=batch_size, drop_last=False))


def time_book_epochs(book, train, val, device, epochs: int, batch_size: int) -> float:
    """Seconds per epoch of the book's train_classifier_simple, as chapter 6 calls it."""
    import torch
    from llms_from_scratch.ch06 import train_classifier_simple

    train_loader, val_loader = book_loaders(train, val, batch_size)
    optimizer = torch.optim.AdamW(book.parameters(), lr=5e-5, weight_decay=0.0)
    torch.manual_seed(123)
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        train_classifier_simple(book, train_loader, val_loader, optimizer, device, num_epochs=epochs,
                                eval_freq=50, eval_iter=5)
    return (time.perf_counter() - started) / epochs


def time_gptrain_epochs(ours, train, val, device, epochs: int, batch_size: int) -> list[float]:
    """Seconds of each of gptrain's epochs (the first computes the frozen blocks' outputs once)."""
    import torch

    from gptrain.training.classify import Inputs, predict, train_epoch
    from gptrain.training.config import TrainConfig
    from gptrain.training.optim import make_optimizer

    optimizer = make_optimizer(ours, TrainConfig(lr=5e-5, weight_decay=0.0), device)
    torch.manual_seed(123)
    seconds = []
    inputs = None
    for _ in range(epochs):
        started = time.perf_counter()
        if inputs is None:
            inputs = {name: Inputs(ours, *split, device, "fp32") for name, split in (("train", train), ("val", val))}
        train_epoch(ours, inputs["train"], optimizer, batch_size)
        predict(ours, inputs["val"])
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return seconds


def compare_one_epoch(cfg, train, val, device, batch_size: int) -> dict[str, tuple[float, float]]:
    """Train and validation loss and accuracy after one epoch of each loop from the same state,
    computed with the book's functions: (book, gptrain) per figure."""
    import torch
    from llms_from_scratch.ch06 import (
        calc_accuracy_loader,
        calc_loss_loader,
        train_classifier_simple,
    )

    from gptrain.training.classify import Inputs, train_epoch
    from gptrain.training.config import TrainConfig
    from gptrain.training.optim import make_optimizer

    ours, book = (m.to(device) for m in classify_models(cfg))
    train_loader, val_loader = book_loaders(train, val, batch_size)
    torch.manual_seed(123)
    with contextlib.redirect_stdout(io.StringIO()):
        train_classifier_simple(book, train_loader, val_loader,
                                torch.optim.AdamW(book.parameters(), lr=5e-5, weight_decay=0.0), device,
                                num_epochs=1, eval_freq=10**9, eval_iter=1)
    torch.manual_seed(123)
    train_epoch(ours, Inputs(ours, *train, device, "fp32"),
                make_optimizer(ours, TrainConfig(lr=5e-5, weight_decay=0.0), device), batch_size)
    figures = {}
    plain = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*train), batch_size=batch_size)
    for name, loader in (("train", plain), ("val", val_loader)):
        with torch.no_grad():
            figures[f"{name} loss"] = (calc_loss_loader(loader, book.eval(), device),
                                       calc_loss_loader(loader, ours.eval(), device))
        figures[f"{name} accuracy"] = (calc_accuracy_loader(loader, book, device),
                                       calc_accuracy_loader(loader, ours, device))
    return figures


def bench_classify(args: argparse.Namespace) -> None:
    import torch

    from gptrain import GPTConfig, get_preset
    from gptrain.core.runtime import resolve_device

    device = resolve_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 on both sides
    cfg = (get_preset(args.preset) if args.preset else GPTConfig()).replace(drop_rate=0.0, context_length=args.context)
    cfg = cfg.replace(**{k: v for k, v in (("n_layers", args.n_layers), ("emb_dim", args.emb_dim),
                                           ("n_heads", args.n_heads)) if v is not None})
    train, val, length = classify_data(args.train_texts, args.max_length)
    print(f"Classification, {machine_description(device)}: {cfg.describe()}, {len(train[0])} train / "
          f"{len(val[0])} val texts of {length} tokens, batch {args.batch_size}, fp32")
    ours, book = (m.to(device) for m in classify_models(cfg))
    book_epoch = time_book_epochs(book, train, val, device, args.epochs, args.batch_size)
    ours_epochs = time_gptrain_epochs(ours, train, val, device, args.epochs, args.batch_size)
    mean = sum(ours_epochs) / len(ours_epochs)
    print(f"book train_classifier_simple: {book_epoch:.2f} s/epoch (mean of {args.epochs})")
    print(f"gptrain:                      {mean:.2f} s/epoch (mean of {args.epochs}; each "
          + ", ".join(f"{s:.2f}" for s in ours_epochs) + f") = {mean / book_epoch:.2f}x the book's")
    for name, (theirs, mine) in compare_one_epoch(cfg, train, val, device, args.batch_size).items():
        print(f"after one epoch, {name:14s} book {theirs:.6f}  gptrain {mine:.6f}  |diff| {abs(theirs - mine):.1e}")


def add_classify_command(commands) -> None:
    """``bench_finetune.py classify`` and its flags."""
    classify = commands.add_parser("classify", help="chapter 6: train_classifier_simple against gptrain's epoch")
    classify.add_argument("--preset", default="124M", help="the model's shape (a gptrain preset)")
    classify.add_argument("--n-layers", type=int, default=None)
    classify.add_argument("--emb-dim", type=int, default=None)
    classify.add_argument("--n-heads", type=int, default=None)
    classify.add_argument("--context", type=int, default=1024, help="the model's context length")
    classify.add_argument("--train-texts", type=int, default=1045, help="training texts (the book's SMS split: 1045)")
    classify.add_argument("--max-length", type=int, default=None, help="pad length [the longest training text]")
    classify.add_argument("--batch-size", type=int, default=8)
    classify.add_argument("--epochs", type=int, default=3)
    classify.add_argument("--device", default="auto")
    classify.set_defaults(run=bench_classify)
