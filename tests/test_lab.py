"""`gptrain lab`: the lecture's sampling exercises, with their numbers."""

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from gptrain import GPTModel, save_checkpoint
from gptrain.cli import main
from gptrain.inference.generate import generate
from gptrain.lecture.lab import cross_entropy_rows, multinomial_counts, parse_grid, softmax_at_temperatures, sweep


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "gptrain", *args], capture_output=True, text=True)


def lab(capsys, *args) -> str:
    assert main(["lab", *args]) == 0
    return capsys.readouterr().out


# --- temperature ---

def test_temperature_table_has_the_exact_values(capsys):
    # The lecture's slide shows [0.70, 0.25, 0.05], [0.52, 0.31, 0.17], [0.42, 0.35, 0.23]; these are exact.
    expected = [[0.7836, 0.1582, 0.0582], [0.5808, 0.2610, 0.1583], [0.4561, 0.3058, 0.2381]]
    probs = softmax_at_temperatures([2.1, 1.3, 0.8], [0.5, 1, 2])
    torch.testing.assert_close(probs, torch.tensor(expected, dtype=torch.float64), atol=5e-5, rtol=0)
    lines = lab(capsys, "temperature").splitlines()
    assert lines[-3].split() == ["T=0.5", "0.7836", "0.1582", "0.0582"]
    assert lines[-2].split() == ["T=1", "0.5808", "0.2610", "0.1583"]
    assert lines[-1].split() == ["T=2", "0.4561", "0.3058", "0.2381"]


def test_temperature_table_takes_logits_temperatures_and_names(capsys):
    out = lab(capsys, "temperature", "--logits", "1", "0", "--temperatures", "0", "1", "100", "--names", "yes", "no")
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:]}
    assert rows["T=0"] == ["1.0000", "0.0000"]  # temperature 0 is greedy
    assert float(rows["T=1"][0]) == pytest.approx(1 / (1 + math.exp(-1)), abs=1e-4)
    assert float(rows["T=100"][0]) == pytest.approx(0.5025, abs=1e-4)  # high temperature flattens
    assert out.splitlines()[1].split() == ["yes", "no"]


@pytest.mark.parametrize("args,message", [
    (["--temperatures", "-1"], "temperatures must be >= 0"),
    (["--logits", "1", "2", "--names", "a"], "1 names for 2 logits"),
    (["--logits", "nan"], "logits must be finite"),
])
def test_temperature_bad_input(args, message):
    result = run_cli("lab", "temperature", *args)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1


# --- multinomial ---

def test_multinomial_is_reproducible_with_a_seed_and_near_the_expected_frequencies(capsys):
    a = multinomial_counts([0.5, 0.3, 0.2], 1000, seed=7)
    assert torch.equal(a, multinomial_counts([0.5, 0.3, 0.2], 1000, seed=7))
    assert not torch.equal(a, multinomial_counts([0.5, 0.3, 0.2], 1000, seed=8))
    assert a.sum() == 1000
    many = multinomial_counts([0.5, 0.3, 0.2], 200_000, seed=1).double() / 200_000
    torch.testing.assert_close(many, torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), atol=0.005, rtol=0)
    out = lab(capsys, "multinomial", "--seed", "7")
    assert out == lab(capsys, "multinomial", "--seed", "7")
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}
    assert list(rows) == ["sunny", "rainy", "cloudy"]
    assert [int(r[1]) for r in rows.values()] == a.tolist()
    assert [r[0] for r in rows.values()] == ["0.500", "0.300", "0.200"]
    assert out.startswith("1000 draws")


def test_multinomial_with_own_distribution(capsys):
    out = lab(capsys, "multinomial", "--probs", "0", "1", "--samples", "50")
    assert [line.split()[:3] for line in out.splitlines()[2:]] == [["token", "0", "0.000"], ["token", "1", "1.000"]]


def test_multinomial_takes_commas_as_loss_does(capsys):
    spaces = lab(capsys, "multinomial", "--probs", "0.6", "0.4", "--seed", "3")
    assert lab(capsys, "multinomial", "--probs", "0.6,0.4", "--seed", "3") == spaces
    assert [line.split()[-2] for line in spaces.splitlines()[2:]] == [
        f"{count / 1000:.3f}" for count in multinomial_counts([0.6, 0.4], 1000, seed=3).tolist()]


@pytest.mark.parametrize("args,message", [
    (["--probs", "0.5", "0.6"], "sum to 1.1, not 1"),
    (["--probs", "1.5", "-0.5"], "between 0 and 1"),
    (["--samples", "0"], "at least 1"),
])
def test_multinomial_bad_input(args, message):
    result = run_cli("lab", "multinomial", *args)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1


# --- loss ---

def test_loss_of_the_lectures_exercise(capsys):
    target_probs, losses = cross_entropy_rows([[0.6, 0.2, 0.1, 0.1]], [0])
    assert losses.item() == pytest.approx(0.51, abs=0.005)
    out = lab(capsys, "loss")
    rows = [line.split() for line in out.splitlines()[1:3]]
    assert rows == [["1", "mat", "0.6000", "0.5108"], ["2", "mat", "0.1000", "2.3026"]]
    assert out.splitlines()[-1].startswith("batch average: 1.4067")


def test_loss_from_logits_equals_pytorch_cross_entropy(capsys):
    logits = torch.tensor([[2.1, 1.3, 0.8], [0.1, 0.2, 3.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    targets = torch.tensor([0, 2, 1])
    _, losses = cross_entropy_rows(logits.tolist(), targets.tolist(), from_logits=True)
    torch.testing.assert_close(losses, F.cross_entropy(logits, targets, reduction="none"))
    out = lab(capsys, "loss", "--logits", "2.1,1.3,0.8", "--logits", "0.1,0.2,3", "--logits", "1,1,1",
              "--target", "0", "--target", "2", "--target", "1")
    assert out.splitlines()[-1].startswith(f"batch average: {F.cross_entropy(logits, targets).item():.4f}")


def test_loss_one_target_for_all_rows_and_names(capsys):
    out = lab(capsys, "loss", "--probs", "0.25,0.75", "--probs", "0.5,0.5", "--target", "b", "--names", "a", "b")
    rows = [line.split()[1:] for line in out.splitlines()[1:3]]
    assert rows == [["b", "0.7500", "0.2877"], ["b", "0.5000", "0.6931"]]


def test_loss_takes_spaces_as_multinomial_does(capsys):
    commas = lab(capsys, "loss", "--probs", "0.6,0.2,0.1,0.1", "--probs", "0.1,0.6,0.2,0.1", "--target", "0")
    spaces = lab(capsys, "loss", "--probs", "0.6", "0.2", "0.1", "0.1", "--probs", "0.1", "0.6", "0.2", "0.1",
                 "--target", "0")
    assert spaces == commas and spaces.splitlines()[-1].startswith("batch average: 1.4067")
    logits = lab(capsys, "loss", "--logits", "2.1", "1.3", "0.8", "--target", "0")
    assert logits == lab(capsys, "loss", "--logits", "2.1,1.3,0.8", "--target", "0")


@pytest.mark.parametrize("args,message", [
    (["--probs", "0.6,0.6"], "give --target"),
    (["--probs", "0.6,0.6", "--target", "0"], "sum to 1.2, not 1"),
    (["--probs", "0.5,0.5", "--target", "2"], "targets must be indices from 0 to 1"),
    (["--probs", "0.5,0.5", "--probs", "1,0", "--target", "0", "--target", "1", "--target", "0"],
     "3 targets for 2 rows"),
    (["--probs", "0.5,0.5", "--probs", "1", "--target", "0"], "same number of values"),
    (["--probs", "a,b", "--target", "0"], "not a comma-separated list of numbers"),
    (["--probs", "0.5,0.5", "--target", "cat", "--names", "a", "b"], "neither an index nor one of the names a, b"),
    (["--probs", "0.5,0.5", "--logits", "1,2"], "not allowed with argument"),
])
def test_loss_bad_input(args, message):
    result = run_cli("lab", "loss", *args)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1


# --- sweep ---

@pytest.fixture
def checkpoint(tiny_cfg, tmp_path):
    torch.manual_seed(0)
    return save_checkpoint(GPTModel(tiny_cfg), tmp_path / "ckpt")


def test_sweep_prints_the_lectures_grid_with_each_cells_text(checkpoint, tokenizer, capsys):
    assert parse_grid(["0.5/10", "1/none"]) == [(0.5, 10), (1.0, None)]
    out = lab(capsys, "sweep", "--checkpoint", str(checkpoint), "--max-new-tokens", "6", "--device", "cpu")
    lines = out.splitlines()
    assert lines[0] == "prompt: In the year 2030,"
    assert [line.split()[:2] for line in lines[2:]] == [["0.5", "10"], ["1", "25"], ["1.8", "50"], ["2.5", "5"]]
    from gptrain import load_checkpoint

    model = load_checkpoint(checkpoint)
    cells = sweep(model, tokenizer, max_new_tokens=6, seed=123)
    idx = torch.tensor([tokenizer.encode("In the year 2030,")])
    for (temperature, top_k, text), line in zip(cells, lines[2:]):
        expected = generate(model, idx, 6, 32, temperature=temperature, top_k=top_k,
                            generator=torch.Generator().manual_seed(123))
        assert text == tokenizer.decode(expected[0, idx.shape[1]:].tolist())
        assert line.split(maxsplit=2)[2] == " ".join(text.split())
    assert len({text for _, _, text in cells}) > 1


def test_sweep_custom_grid_and_prompt(checkpoint, capsys):
    out = lab(capsys, "sweep", "--checkpoint", str(checkpoint), "--grid", "0/none", "3/2", "--prompt", "Hi",
              "--max-new-tokens", "3")
    assert [line.split()[:2] for line in out.splitlines()[2:]] == [["0", "none"], ["3", "2"]]


@pytest.mark.parametrize("args,message", [
    (["--grid", "hot/10"], "is not TEMPERATURE/TOP_K"),
    (["--grid", "1.0/0"], "top_k must be at least 1"),
    (["--grid=-1/5"], "temperature must be >= 0"),
    (["--checkpoint", "/no/such/ckpt"], "does not exist"),
])
def test_sweep_bad_input(args, message, checkpoint):
    if "--checkpoint" not in args:
        args = ["--checkpoint", str(checkpoint), *args]
    result = run_cli("lab", "sweep", *args)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1


def test_sweep_with_pretrained_weights_from_a_local_hf_folder(tmp_path):
    from gpt2_files import tiny_hf_model

    tiny_hf_model().save_pretrained(tmp_path / "hf")
    result = run_cli("lab", "sweep", "--pretrained", str(tmp_path / "hf"), "--max-new-tokens", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "prompt: In the year 2030," and lines[1].split() == ["temperature", "top_k", "continuation"]
    assert [line.split()[:2] for line in lines[2:]] == [["0.5", "10"], ["1", "25"], ["1.8", "50"], ["2.5", "5"]]


def test_sweep_needs_a_model():
    result = run_cli("lab", "sweep")
    assert result.returncode == 2 and "the following arguments are required: --model/--checkpoint/--pretrained" in result.stderr


def test_lab_without_a_lab_prints_help():
    result = run_cli("lab")
    assert result.returncode == 2 and "temperature" in result.stdout and "sweep" in result.stdout
