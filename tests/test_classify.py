"""Classification fine-tuning (the book's chapter 6): gptrain finetune classify, gptrain classify, the
classifier's checkpoint, and its bad inputs."""

import csv
import json
import random
import re
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from gptrain import (
    GPTModel,
    calc_loss_batch_classifier,
    count_parameters,
    resolve_model,
    save_checkpoint,
)
from gptrain.cli import main
from gptrain.core.errors import GptrainError
from gptrain.model.classifier import add_class_head, freeze_for_classification
from gptrain.model.lora import ADAPTER_FILE
from gptrain.training.classify import (
    ClassifyConfig,
    Inputs,
    finetune_classifier,
    train_epoch,
)

SPORT = ["football", "tennis", "hockey", "rugby", "cricket", "golf", "boxing", "cycling"]
FOOD = ["pasta", "soup", "bread", "cheese", "salad", "pizza", "rice", "cake"]


def topic_rows(n, seed):
    """Sentences from one template about sport or food, labelled with their topic."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["sport", "food"])
        word = rng.choice(SPORT if label == "sport" else FOOD)
        verb = rng.choice(["love", "watch", "like", "enjoy", "talk about"])
        rows.append({"text": f"We {verb} {word} {rng.choice(['today', 'a lot', 'every day', 'with friends'])}",
                     "label": label})
    return rows


def write_csv(path, rows, fields=("text", "label")):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    root = tmp_path_factory.mktemp("classify")
    torch.manual_seed(0)
    cfg = dict(vocab_size=50257, context_length=32, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
    save_checkpoint(GPTModel(cfg), root / "base")
    write_csv(root / "topics.csv", topic_rows(200, seed=1))
    with open(root / "held-out.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in topic_rows(40, seed=2))
    return root


@pytest.fixture(scope="module")
def trained(place):
    """One run through the command line: every parameter trained on the two topics."""
    run = place / "run"
    done = subprocess.run([sys.executable, "-m", "gptrain", "finetune", "classify", "--model", str(place / "base"),
                           "--data", str(place / "topics.csv"), "--out", str(run), "--train-all", "--lr", "1e-3",
                           "--epochs", "5", "--device", "cpu", "--precision", "fp32"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return run, done.stdout


def test_two_topics_reach_high_accuracy_and_the_run_records_it(trained):
    run, printed = trained
    accuracies = {split: float(value) for split, value in re.findall(r"(\w+) accuracy: ([\d.]+)%", printed)}
    assert accuracies["Test"] >= 90.0 and accuracies["Train"] >= 90.0, printed
    assert "Confusion on the test set" in printed and "true \\ predicted  food  sport" in printed
    assert json.loads((run / "final" / "config.json").read_text())["classifier"] == {
        "labels": ["food", "sport"], "max_length": 6}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    test = next(r for r in records if r["event"] == "classification" and r["split"] == "test")
    assert test["examples"] == 40 and sum(map(sum, test["confusion"])) == 40
    assert test["accuracy"] == pytest.approx(accuracies["Test"] / 100, abs=1e-4)


def test_classify_prints_labels_probabilities_and_accuracy(trained, place, capsys):
    run, _ = trained
    assert main(["classify", "--model", str(run), "--data", str(place / "held-out.jsonl"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 41 and float(re.match(r"Accuracy: ([\d.]+)% \(\d+ of 40\)", out[-1]).group(1)) >= 90.0
    assert main(["classify", "--model", str(run), "--text", "We love soup today", "--text", "We watch rugby a lot",
                 "--probs", "--device", "cpu"]) == 0
    food, sport = capsys.readouterr().out.splitlines()
    assert food.startswith("food\tfood=") and sport.startswith("sport\tfood=")
    probabilities = [float(p) for p in re.findall(r"=([\d.]+)", food)]
    assert sum(probabilities) == pytest.approx(1.0, abs=2e-3) and probabilities[0] > 0.5


def test_the_checkpoint_rebuilds_the_classifier_and_language_model_commands_refuse_it(trained, capsys):
    run, _ = trained
    source = resolve_model(run, allow_classifier=True)
    assert source.labels == ["food", "sport"] and source.max_length == 6
    assert source.model.out_head.out_features == 2 and source.model.out_head.bias is not None
    assert count_parameters(source.model) == sum(p.numel() for p in source.model.parameters())
    assert count_parameters(source.model, include_out_head=False) == count_parameters(source.model) - 2 * 32 - 2
    with pytest.raises(GptrainError, match="is a classifier"):
        resolve_model(run)
    assert main(["generate", "--model", str(run), "--prompt", "We love"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a classifier (labels food, sport)" in err and "gptrain classify" in err
    assert main(["info", str(run)]) == 0
    assert "Classifier of 2 labels: food, sport (texts padded to 6 tokens)" in capsys.readouterr().out
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "<h2>Classification</h2>" in page and "test: accuracy" in page


def test_reusing_the_frozen_blocks_output_gives_the_full_models_losses(tiny_cfg, tokenizer):
    """The book's freezing: blocks before the last are run once; each step's loss is the book's loss
    (the whole model on the batch), on the batches of the book's shuffled DataLoader."""
    ids = torch.randint(0, tiny_cfg.vocab_size, (24, 12))
    targets = torch.randint(0, 2, (24,))
    models = []
    for _ in range(2):
        torch.manual_seed(5)
        model = freeze_for_classification(add_class_head(GPTModel(tiny_cfg), 2))
        models.append((model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)))
    (ours, opt_ours), (book, opt_book) = models
    inputs = Inputs(ours, ids, targets, torch.device("cpu"), "fp32")
    assert inputs.start == 1
    torch.manual_seed(9)
    losses = train_epoch(ours, inputs, opt_ours, batch_size=5) + train_epoch(ours, inputs, opt_ours, batch_size=5)
    torch.manual_seed(9)
    expected = []
    loader = DataLoader(TensorDataset(ids, targets), batch_size=5, shuffle=True, drop_last=True)
    for _ in range(2):
        for input_batch, target_batch in loader:
            opt_book.zero_grad()
            loss = calc_loss_batch_classifier(input_batch, target_batch, book, "cpu")
            loss.backward()
            opt_book.step()
            expected.append(loss.item())
    assert len(losses) == 8 and losses == pytest.approx(expected, abs=1e-5)


def test_lora_trains_adapters_and_the_head_and_saves_them_merged(place):
    out, printed = place / "lora-run", []
    finetune_classifier(ClassifyConfig(model=str(place / "base"), data=str(place / "topics.csv"), out=str(out),
                                       lora_rank=2, epochs=1, max_length=4, device="cpu", precision="fp32"),
                        echo=printed.append)
    assert re.search(r"padded to 4 tokens; \d+ longer texts cut to that length", printed[0]), printed[0]
    source = resolve_model(out, allow_classifier=True)
    assert source.labels == ["food", "sport"] and not any("lora" in name for name, _ in source.model.named_parameters())
    assert (out / "final" / ADAPTER_FILE).is_file()


@pytest.fixture(scope="module")
def bad_place(place):
    root = place
    write_csv(root / "no-label.csv", topic_rows(20, 3), fields=("text",))
    rows = topic_rows(20, 4)
    rows[5]["label"] = ""
    rows[9]["label"] = " "
    write_csv(root / "some-unlabelled.csv", rows)
    write_csv(root / "one-class.csv", [dict(row, label="sport") for row in topic_rows(20, 5)])
    (root / "notes.txt").write_text("text,label\nhello,a\n")
    (root / "binary.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff")
    (root / "broken.jsonl").write_text('{"text": "fine", "label": "a"}\nnot json\n')
    (root / "taken").mkdir()
    (root / "taken" / "keep.txt").write_text("something")
    return root


@pytest.mark.parametrize("data, out, phrase", [
    ("no-label.csv", "new", "has no label column 'label' (its columns: text): name it with --label-field"),
    ("some-unlabelled.csv", "new", "2 of 20 rows have no label (first at line 7): fill them in or remove those rows"),
    ("one-class.csv", "new", "has a single class ('sport'): a classifier needs rows of at least two labels"),
    ("notes.txt", "new", "is not CSV, TSV or JSON (.txt)"),
    ("binary.csv", "new", "is not UTF-8 text, so not CSV, TSV or JSON"),
    ("broken.jsonl", "new", "is not valid JSON"),
    ("topics.csv", "taken", "already exists and is not an empty folder"),
])
def test_bad_classification_input_is_one_line_and_writes_nothing(bad_place, capsys, data, out, phrase):
    place = bad_place
    code = main(["finetune", "classify", "--model", str(place / "base"), "--data", str(place / data),
                 "--out", str(place / out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and phrase in err, err
    assert not (place / "new").exists()
    assert sorted(p.name for p in (place / "taken").iterdir()) == ["keep.txt"]
