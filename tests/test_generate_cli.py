"""`gptrain generate`: streaming, --no-stream, --top-p and the tokens/s report."""

import subprocess
import sys

import pytest
import torch

from gptrain import GPTModel, get_tokenizer, save_checkpoint
from gptrain.cli import main
from gptrain.inference.generate import generate


@pytest.fixture
def checkpoint(tiny_cfg, tmp_path):
    torch.manual_seed(0)
    return save_checkpoint(GPTModel(tiny_cfg), tmp_path / "ckpt")


class RecordingStdout:
    """Records every write and flush, to see text arrive piece by piece."""

    def __init__(self):
        self.writes, self.flushes = [], 0

    def write(self, text):
        self.writes.append(text)
        return len(text)

    def flush(self):
        self.flushes += 1

    def text(self):
        return "".join(self.writes)


def run(monkeypatch, capsys, *args):
    out = RecordingStdout()
    monkeypatch.setattr(sys, "stdout", out)
    assert main(["generate", "--device", "cpu", *args]) == 0  # the expected tokens are drawn on the CPU
    return out, capsys.readouterr().err


def test_streams_token_by_token_and_equals_no_stream(checkpoint, monkeypatch, capsys):
    args = ["--checkpoint", str(checkpoint), "--prompt", "Grüße 🙂", "--max-new-tokens", "30",
            "--temperature", "1.0", "--top-p", "0.9", "--seed", "5"]
    streamed, err = run(monkeypatch, capsys, *args)
    whole, _ = run(monkeypatch, capsys, *args, "--no-stream")
    assert streamed.text() == whole.text()
    assert streamed.flushes >= 20 and len(streamed.writes) >= 20  # pieces arrive as tokens are produced
    assert len(whole.writes) <= 2  # the text and print's newline
    assert "\ufffd" not in "".join(streamed.writes[:-1])
    assert err.splitlines()[-1].startswith("30 tokens in ") and err.strip().endswith("tokens/s")


def test_output_is_the_prompt_and_the_tokens_generate_produces(checkpoint, monkeypatch, capsys):
    out, _ = run(monkeypatch, capsys, "--checkpoint", str(checkpoint), "--prompt", "Every effort moves you",
                 "--max-new-tokens", "12", "--temperature", "1.3", "--top-k", "30", "--top-p", "0.8", "--seed", "3")
    from gptrain import load_checkpoint

    tokenizer = get_tokenizer()
    idx = torch.tensor([tokenizer.encode("Every effort moves you")])
    expected = generate(load_checkpoint(checkpoint), idx, 12, 32, temperature=1.3, top_k=30, top_p=0.8,
                        generator=torch.Generator().manual_seed(3))
    assert out.text() == tokenizer.decode(expected[0].tolist()) + "\n"


def test_bf16_precision_generates_what_the_model_in_bf16_generates(checkpoint, monkeypatch, capsys):
    from gptrain import load_checkpoint

    out, _ = run(monkeypatch, capsys, "--checkpoint", str(checkpoint), "--max-new-tokens", "12", "--precision", "bf16")
    tokenizer = get_tokenizer()
    idx = torch.tensor([tokenizer.encode("Every effort moves you")])
    expected = generate(load_checkpoint(checkpoint).to(torch.bfloat16), idx, 12, 32)
    assert out.text() == tokenizer.decode(expected[0].tolist()) + "\n"


def test_precision_and_quantize_together_are_refused(checkpoint):
    result = subprocess.run([sys.executable, "-m", "gptrain", "generate", "--checkpoint", str(checkpoint),
                             "--precision", "bf16", "--quantize", "int8"], capture_output=True, text=True)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "--precision bf16 and --quantize int8 both set the weights' format: give one of them" in result.stderr


def test_top_p_changes_the_sample(checkpoint, monkeypatch, capsys):
    base = ["--checkpoint", str(checkpoint), "--max-new-tokens", "10", "--temperature", "1.0", "--seed", "1"]
    texts = {top_p: run(monkeypatch, capsys, *base, "--top-p", top_p)[0].text() for top_p in ("1", "1e-9")}
    greedy = run(monkeypatch, capsys, "--checkpoint", str(checkpoint), "--max-new-tokens", "10")[0].text()
    assert texts["1e-9"] == greedy  # a nucleus that small holds only the most likely token
    assert texts["1"] != greedy


@pytest.mark.parametrize("args,message", [
    (["--top-p", "0"], "top_p must be in (0, 1]"),
    (["--top-p", "1.01"], "top_p must be in (0, 1]"),
    (["--temperature", "nan"], "temperature must be >= 0"),
])
def test_bad_sampling_flags(checkpoint, args, message):
    result = subprocess.run([sys.executable, "-m", "gptrain", "generate", "--checkpoint", str(checkpoint), *args],
                            capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1


def test_a_prompt_longer_than_the_context_is_reported_on_stderr(checkpoint, monkeypatch, capsys):
    """The model's window is 32 tokens: a 37-token prompt loses its first 5, in one line on stderr."""
    prompt = "Every effort moves you " * 9
    assert len(get_tokenizer().encode(prompt)) == 37
    out, err = run(monkeypatch, capsys, "--checkpoint", str(checkpoint), "--prompt", prompt, "--max-new-tokens", "5")
    warning, speed = err.splitlines()
    assert warning.startswith("gptrain: warning: the prompt has 37 tokens but the model's context is 32: its first "
                              "5 tokens are dropped, and generation past the window slides it")
    assert speed.startswith("5 tokens in ")
    assert out.text().startswith(prompt)  # the whole prompt is still printed


def test_generation_past_the_window_is_reported_once(checkpoint, monkeypatch, capsys):
    args = ["--checkpoint", str(checkpoint), "--prompt", "Every effort moves you"]  # 4 tokens
    warning, _ = run(monkeypatch, capsys, *args, "--max-new-tokens", "29")[1].splitlines()
    assert warning.startswith("gptrain: warning: the prompt (4 tokens) and 29 new tokens exceed the model's context "
                              "of 32: no prompt token is dropped, but once the window is full generation slides it")
    assert len(run(monkeypatch, capsys, *args, "--max-new-tokens", "28")[1].splitlines()) == 1  # 32 fit: no warning
