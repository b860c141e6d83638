"""--model as a user types it (issue 25): one trained tiny run, exported to a Hugging Face folder and to a
book-named state dict, is the same model to generate, eval, serve and info."""

import json
import re
import subprocess
import sys
import urllib.request

import pytest
import torch

from gptrain.cli import main
from gptrain.interop.sources import resolve_model
from gptrain.model.counts import parameter_counts

PROMPT = "Every effort moves you"


@pytest.fixture(scope="module")
def three_forms(tmp_path_factory, verdict_path):
    root = tmp_path_factory.mktemp("forms")
    run, hf, book = root / "run", root / "hf", root / "book.pth"
    assert main(["train", "--data", str(verdict_path), "--out", str(run), "--preset", "tiny", "--n-layers", "1",
                 "--n-heads", "2", "--emb-dim", "32", "--context-length", "16", "--batch-size", "4",
                 "--max-steps", "2", "--eval-freq", "0", "--sample-tokens", "0", "--precision", "fp32",
                 "--device", "cpu"]) == 0
    assert main(["export", "--model", str(run), "--out", str(hf)]) == 0
    torch.save(resolve_model(run).model.state_dict(), book)
    # The book's names carry no head count: --n-heads says it.
    return {"run": [str(run)], "hf": [str(hf)], "book": [str(book), "--n-heads", "2"]}


def test_generate_gives_the_same_greedy_tokens(three_forms, capsys):
    texts = {}
    for name, model in three_forms.items():
        capsys.readouterr()
        assert main(["generate", "--model", *model, "--prompt", PROMPT, "--max-new-tokens", "12",
                     "--device", "cpu", "--no-stream"]) == 0
        texts[name] = capsys.readouterr().out
    assert texts["run"].startswith(PROMPT) and len(texts["run"]) > len(PROMPT)
    assert texts["hf"] == texts["run"] and texts["book"] == texts["run"]


def test_eval_gives_the_same_loss(three_forms, verdict_path, capsys):
    losses = {}
    for name, model in three_forms.items():
        capsys.readouterr()
        assert main(["eval", "--model", *model, "--data", str(verdict_path), "--precision", "fp32", "--device", "cpu",
                     "--json"]) == 0
        losses[name] = json.loads(capsys.readouterr().out)["loss"]
    assert 9 < losses["run"] < 12  # about ln(50257) after two steps
    assert losses["hf"] == pytest.approx(losses["run"], abs=1e-5)
    assert losses["book"] == pytest.approx(losses["run"], abs=1e-5)


def test_eval_task_and_the_old_flag_names_take_the_same_model(three_forms, tmp_path, capsys):
    task = tmp_path / "mc.jsonl"
    task.write_text(json.dumps({"context": "Every effort", "choices": [" moves you", " stops"], "answer": 0}) + "\n")
    scores = []
    for flag in ("--model", "--checkpoint", "--pretrained"):
        capsys.readouterr()
        assert main(["eval", flag, *three_forms["hf"], "--task", "mc", "--data", str(task), "--device", "cpu",
                     "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        scores.append({key: value for key, value in result.items() if key not in {"seconds", "examples_per_s"}})
    assert scores[0] == scores[1] == scores[2] and scores[0]["model"] == three_forms["hf"][0]


def test_info_prints_the_same_parameter_count(three_forms, capsys):
    counts = {}
    for name, model in three_forms.items():
        capsys.readouterr()
        assert main(["info", "--model", *model]) == 0
        counts[name] = re.search(r"Total parameters: ([\d,]+)", capsys.readouterr().out).group(1)
    assert counts["run"] == counts["hf"] == counts["book"]
    assert main(["info", three_forms["run"][0]]) == 0  # the positional form stays
    assert counts["run"] in capsys.readouterr().out


def test_serve_answers_with_the_hf_folder(three_forms):
    process = subprocess.Popen([sys.executable, "-m", "gptrain", "serve", "--model", three_forms["hf"][0],
                                "--port", "0", "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        line = process.stdout.readline()  # printed once the server listens
        found = re.search(r"at (http://127\.0\.0\.1:\d+)/v1", line)
        assert found, line + process.stderr.read()
        request = urllib.request.Request(found.group(1) + "/v1/completions", headers={"Content-Type": "application/json"},
                                         data=json.dumps({"prompt": PROMPT, "max_tokens": 3, "temperature": 0}).encode())
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.loads(response.read())
        assert body["model"] == "hf" and body["usage"]["completion_tokens"] == 3
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("reference, message", [
    ("EMPTY", "holds no weights"),
    ("TEXT", "is neither a safetensors file nor a PyTorch state dict"),
    ("BOOK", "give it (n_heads=..., or --n-heads)"),
    ("774M", "GPTRAIN_OFFLINE is set"),
])
@pytest.mark.parametrize("command", [["generate"], ["eval", "--data", "the-verdict"], ["info"], ["export", "--out", "X"]])
def test_a_bad_reference_is_one_line_and_exit_2(three_forms, tmp_path, capsys, reference, message, command):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not a model\n")
    places = {"EMPTY": str(tmp_path / "empty"), "TEXT": str(tmp_path / "notes.txt"), "BOOK": three_forms["book"][0],
              "X": str(tmp_path / "out")}
    args = [places.get(arg, arg) for arg in command]
    capsys.readouterr()
    assert main([*args, "--model", places.get(reference, reference)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_estimate_takes_the_run_recipe_and_any_model_reference(three_forms, capsys):
    run = three_forms["run"][0]
    capsys.readouterr()
    assert main(["estimate", "--config", f"{run}/train.toml", "--json"]) == 0
    recipe = json.loads(capsys.readouterr().out)
    shape = resolve_model(run).config
    assert recipe["parameters"]["total"] == parameter_counts(shape).total
    assert (recipe["plan"]["batch_size"], recipe["plan"]["precision"], recipe["tokens"]) == (4, "fp32", 2 * 4 * 16)
    assert main(["estimate", "--config", f"{run}/train.toml", "--batch-size", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == 2 * 8 * 16  # a flag beside --config overrides it
    for model in three_forms.values():
        assert main(["estimate", "--model", *model, "--tokens", "1e6", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["parameters"]["total"] == parameter_counts(shape).total


@pytest.mark.parametrize("flags, message", [
    (["--preset", "tiny", "--n-heads", "3"], "--emb-dim 64 is not divisible by --n-heads 3"),
    (["--emb-dim", "0"], "--emb-dim must be a positive integer, not 0"),
    (["--vocab-size", "100"], "--vocab-size 100 is smaller than the 50,257 tokens of the tokenizer gpt2"),
    (["--init", "EMPTY"], "holds no weights"),
    (["--init", "RUN", "--n-layers", "3"], "--n-layers 3 disagrees with --init"),
])
def test_a_bad_shape_or_init_is_one_line_before_any_data_is_read(three_forms, tmp_path, capsys, flags, message):
    (tmp_path / "empty").mkdir()
    places = {"EMPTY": str(tmp_path / "empty"), "RUN": three_forms["run"][0]}
    flags = [places.get(flag, flag) for flag in flags]
    capsys.readouterr()
    assert main(["train", "--data", str(tmp_path / "no-such-corpus.txt"), "--out", str(tmp_path / "run"), *flags]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "run").exists()
