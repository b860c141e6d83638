"""How a training run starts and ends: settings checked before any work, a folder a failed start
left behind, the last evaluation, and the corpora --data reads (issue 23)."""

import importlib.util
import json

import numpy as np
import pytest

from gptrain import TrainConfig, get_tokenizer, train
from gptrain.cli import main
from gptrain.data.corpus import load_corpus
from gptrain.core.errors import GptrainError
from gptrain.data.prepare import prepare
from gptrain.data.tokenizer import END_OF_TEXT, END_OF_TEXT_ID


def tiny_run(tmp_path, data, **overrides) -> TrainConfig:
    settings = dict(data=str(data), out=str(tmp_path / "run"), preset="tiny", context_length=32, batch_size=4,
                    max_steps=3, eval_freq=5, eval_iter=1, device="cpu", sample_tokens=0, lr=1e-3, precision="fp32")
    return TrainConfig(**(settings | overrides))


def events(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def one_line_error(capsys, args) -> str:
    capsys.readouterr()
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# --- An empty --start-context ---

def test_an_empty_start_context_is_refused_before_any_work(tmp_path, story_page, capsys):
    args = ["train", "--data", str(story_page), "--out", str(tmp_path / "run"), "--preset", "tiny",
            "--context-length", "32", "--device", "cpu", "--max-steps", "1", "--start-context", ""]
    assert "--start-context is empty" in one_line_error(capsys, args)
    assert not (tmp_path / "run").exists()
    TrainConfig(start_context="", sample_tokens=0)  # no samples: nothing to continue


# --- A folder that a failed start left ---

def test_a_retry_reuses_the_folder_a_failed_start_left(tmp_path, story_page):
    cfg = tiny_run(tmp_path, story_page)
    run = tmp_path / "run"
    if importlib.util.find_spec("tensorboard") is None:  # a real failed start: an optional package missing
        with pytest.raises(GptrainError, match="needs the tensorboard package"):
            train(tiny_run(tmp_path, story_page, logger=("tensorboard",)), echo=lambda line: None)
    else:  # what such a start leaves
        run.mkdir()
        (run / "config.json").write_text("{}")
        (run / "metrics.jsonl").write_text(json.dumps({"event": "plan", "step": 0}) + "\n")
    assert (run / "config.json").exists() and (run / "metrics.jsonl").exists()
    with pytest.raises(GptrainError, match="holds no complete checkpoint to resume from: train without --resume"):
        train(cfg, resume=True, echo=lambda line: None)
    summary = train(cfg, echo=lambda line: None)  # no --overwrite needed: nothing there was worth keeping
    assert summary["steps"] == 3
    assert [e["event"] for e in events(run)].count("plan") == 1  # a fresh log, not appended to the failed one
    assert (run / "final").is_dir()


def test_a_run_that_trained_but_saved_nothing_points_to_overwrite(tmp_path, story_page, capsys):
    """Its log is the only record of what happened: kept unless --overwrite, and no advice that loops."""
    run = tmp_path / "run"
    run.mkdir()
    log = json.dumps({"event": "plan", "step": 0}) + "\n" + json.dumps({"event": "train", "step": 0, "loss": 9.0})
    (run / "metrics.jsonl").write_text(log + "\n")
    (run / "config.json").write_text(json.dumps({"train": {}}))
    cfg = tiny_run(tmp_path, story_page)
    with pytest.raises(GptrainError, match="with no complete checkpoint to resume from: pass --overwrite"):
        train(cfg, echo=lambda line: None)
    with pytest.raises(GptrainError, match="pass --overwrite instead of --resume"):
        train(cfg, resume=True, echo=lambda line: None)
    assert (run / "metrics.jsonl").read_text() == log + "\n"
    assert train(cfg, overwrite=True, echo=lambda line: None)["steps"] == 3


# --- The last evaluation ---

def test_the_last_step_is_evaluated_so_final_losses_and_best_are_current(tmp_path, story_page):
    lines = []
    summary = train(tiny_run(tmp_path, story_page, max_steps=7, eval_freq=100), echo=lines.append)
    run = tmp_path / "run"
    evals = [e for e in events(run) if e["event"] == "eval"]
    assert [e["step"] for e in evals] == [0, 6]
    assert summary["val_losses"] == [e["val_loss"] for e in evals] and evals[1]["val_loss"] < evals[0]["val_loss"]
    assert json.loads((run / "best" / "config.json").read_text())["step"] == 7  # trained, not step 0's weights
    done = next(line for line in lines if line.startswith("Done in"))
    assert f"final train loss {evals[1]['train_loss']:.3f}, val loss {evals[1]['val_loss']:.3f}" in done

    resumed = train(tiny_run(tmp_path, story_page, max_steps=9, eval_freq=100), resume=True, echo=lambda line: None)
    assert [e["step"] for e in events(run) if e["event"] == "eval"] == [0, 6, 8]
    assert resumed["val_losses"][-1] == events(run)[-2]["val_loss"]  # the last record is "end"


def test_eval_freq_0_turns_evaluation_off(tmp_path, story_page):
    lines = []
    summary = train(tiny_run(tmp_path, story_page, eval_freq=0), echo=lines.append)
    run = tmp_path / "run"
    assert summary["steps"] == 3 and summary["val_losses"] == []
    assert not [e for e in events(run) if e["event"] == "eval"]
    assert (run / "final").is_dir() and not (run / "best").exists()
    assert any(line.startswith("Done in") and "evaluation was off (--eval-freq 0)" in line for line in lines)


@pytest.mark.parametrize("settings,message", [
    (dict(eval_freq=-1), "--eval-freq must be a non-negative integer"),
    (dict(eval_freq=0, early_stop_patience=2), "--early-stop-patience counts evaluations"),
    (dict(eval_freq=0, eval_task=("mc:x.jsonl",)), "give --eval-task-every N"),
])
def test_settings_that_need_evaluation(settings, message):
    with pytest.raises(GptrainError, match=message):
        TrainConfig(**settings)


# --- JSON lines as --data ---

@pytest.fixture
def documents(verdict_text) -> list[str]:
    return [verdict_text[i * 700:(i + 1) * 700] for i in range(6)]


def write_jsonl(path, documents, field="text"):
    path.write_text("".join(json.dumps({"id": i, field: doc}) + "\n" for i, doc in enumerate(documents)),
                    encoding="utf-8")
    return path


def test_jsonl_is_read_as_prepare_reads_it(tmp_path, documents):
    jsonl = write_jsonl(tmp_path / "docs.jsonl", documents)
    text = load_corpus(jsonl)
    assert text == END_OF_TEXT.join(documents) and '"id"' not in text
    prepare([str(jsonl)], tmp_path / "shards", val_fraction=0.0, workers=1)
    prepared = np.fromfile(tmp_path / "shards" / "train.bin", dtype=np.uint16).tolist()
    assert get_tokenizer().encode(text, allowed_special={END_OF_TEXT}) + [END_OF_TEXT_ID] == prepared


def test_train_reads_a_folder_of_jsonl_with_its_text_field(tmp_path, documents, capsys):
    (tmp_path / "corpus").mkdir()
    write_jsonl(tmp_path / "corpus" / "a.jsonl", documents[:3], field="body")
    write_jsonl(tmp_path / "corpus" / "b.jsonl", documents[3:], field="body")
    assert load_corpus(tmp_path / "corpus", "body") == END_OF_TEXT.join(documents)
    args = ["train", "--data", str(tmp_path / "corpus"), "--out", str(tmp_path / "run"), "--preset", "tiny",
            "--context-length", "32", "--device", "cpu", "--max-steps", "1", "--sample-tokens", "0"]
    assert "give no text, the first: " in one_line_error(capsys, args)  # no "text" field in these records
    assert main([*args, "--text-field", "body"]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert saved["text_field"] == "body"


def test_a_bad_jsonl_line_is_refused_with_its_place(tmp_path, documents):
    jsonl = write_jsonl(tmp_path / "docs.jsonl", documents)
    with open(jsonl, "a", encoding="utf-8") as f:
        f.write("not json\n")
    with pytest.raises(GptrainError, match=r"1 line\(s\) of .* give no text, the first: .*docs.jsonl:7 is not JSON"):
        load_corpus(jsonl)
