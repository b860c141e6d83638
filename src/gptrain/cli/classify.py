"""``gptrain finetune classify`` (a GPT model turned classifier, the book's chapter 6) and
``gptrain classify`` (its predictions)."""

from __future__ import annotations

import argparse

from gptrain.cli.common import (
    DefaultsHelpFormatter,
    add_device_flag,
    add_model_flags,
    add_precision_flag,
)

LABELED_FILE_HELP = "CSV, TSV, JSON Lines or JSON list (.csv, .tsv, .jsonl, .json) of texts and labels"


def add_fields_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-field", default="text", help="the column or field that holds each text "
                                                        "(matched ignoring case when no column has the exact name)")
    p.add_argument("--label-field", default="label", help="the column or field that holds each label "
                                                          "(any strings; matched ignoring case likewise)")


def add_classify_finetune_parser(finetune_subparsers) -> None:
    """``gptrain finetune classify``, under the ``finetune`` command group."""
    p = finetune_subparsers.add_parser(
        "classify", help="turn a model into a classifier of labelled texts (the book's chapter 6)",
        description="Replace the model's output head by one with an output per class and train it on the last "
                    "token's logits, as the book's chapter 6 does: by default only the last transformer block, the "
                    "final norm and the head learn. Without --val-data, --data is shuffled (--seed) and split 70/10/20 "
                    "into train, validation and test. Prints the loss and validation accuracy of each epoch, then the "
                    "accuracy of every split and the test set's confusion table (also in RUN/metrics.jsonl and "
                    "gptrain report); the classifier is saved in RUN/final with its labels.",
        formatter_class=DefaultsHelpFormatter,
    )
    add_model_flags(p, help="the model to fine-tune", aliases=("--init",), n_heads=False)
    p.add_argument("--data", required=True, metavar="FILE", help=f"training texts: {LABELED_FILE_HELP}")
    p.add_argument("--out", required=True, metavar="RUN", help="the run directory to create (new or empty)")
    p.add_argument("--val-data", metavar="FILE", default=None,
                   help="validation texts; without it --data is split (70/10/20, or 7:1 with --test-data)")
    p.add_argument("--test-data", metavar="FILE", default=None, help="test texts")
    add_fields_flags(p)
    p.add_argument("--epochs", type=int, default=5, help="passes over the training texts")
    p.add_argument("--batch-size", type=int, default=8, help="texts per step")
    p.add_argument("--lr", type=float, default=5e-5, help="AdamW's learning rate")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW's weight decay (on matrices)")
    p.add_argument("--max-length", type=int, default=None,
                   help="tokens each text is cut and padded to [the longest training text, at most the context]")
    trained = p.add_mutually_exclusive_group()
    trained.add_argument("--train-all", action="store_true", help="train every parameter, not only the last block")
    trained.add_argument("--lora-rank", type=int, default=None,
                         help="train LoRA adapters of this rank in every block (and the new head) instead")
    p.add_argument("--lora-alpha", type=float, default=None, help="LoRA's alpha [2 x rank]")
    p.add_argument("--drop-rate", type=float, default=0.0, help="dropout while fine-tuning (the book's 0)")
    p.add_argument("--seed", type=int, default=123, help="seed of the split, the head's initialisation and the order")
    add_device_flag(p)
    add_precision_flag(p, "auto: bf16 where the device computes it natively, else fp32")
    p.set_defaults(handler=run_finetune)


def run_finetune(args: argparse.Namespace) -> int:
    from gptrain.training.classify import ClassifyConfig, finetune_classifier

    cfg = ClassifyConfig(model=args.model, data=args.data, out=args.out, val_data=args.val_data,
                         test_data=args.test_data, text_field=args.text_field, label_field=args.label_field,
                         epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                         max_length=args.max_length, train_all=args.train_all, lora_rank=args.lora_rank,
                         lora_alpha=args.lora_alpha, drop_rate=args.drop_rate, seed=args.seed, device=args.device,
                         precision=args.precision)
    finetune_classifier(cfg)
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "classify", help="label texts with a classifier made by gptrain finetune classify",
        description="Print the label of each text (and, with --probs, every class's probability). Given a --data "
                    "file that has labels, it also prints the accuracy.",
        formatter_class=DefaultsHelpFormatter,
    )
    add_model_flags(p, help="the classifier: a gptrain finetune classify run directory or checkpoint", n_heads=False)
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("--text", action="append", help="a text to classify (repeat for several)")
    given.add_argument("--data", metavar="FILE", help=f"texts to classify: {LABELED_FILE_HELP}")
    add_fields_flags(p)
    p.add_argument("--probs", action="store_true", help="also print each class's probability")
    add_device_flag(p)
    p.set_defaults(handler=run_classify)


def run_classify(args: argparse.Namespace) -> int:
    from gptrain.data.labeled import read_labeled
    from gptrain.inference.classify import load_classifier

    data = read_labeled(args.data, args.text_field, args.label_field, optional_labels=True) if args.data else None
    texts = data.texts if data else args.text
    classifier = load_classifier(args.model, device=args.device)
    probs = classifier.probabilities(texts)
    labels = classifier.labels
    predicted = [labels[i] for i in probs.argmax(-1).tolist()]
    for text, label, row in zip(texts, predicted, probs.tolist()):
        shown = " ".join(text.split())
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        odds = "\t" + " ".join(f"{name}={p:.3f}" for name, p in zip(labels, row)) if args.probs else ""
        print(f"{label}{odds}\t{shown}")
    if data is not None and data.labels is not None:
        correct = sum(p == t for p, t in zip(predicted, data.labels))
        print(f"Accuracy: {correct / len(texts) * 100:.2f}% ({correct} of {len(texts)})")
    return 0
