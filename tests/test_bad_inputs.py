"""Bad inputs across every command: each gives exit code 2 and exactly one line on stderr that names
the problem, never a traceback. In-process through ``gptrain.cli.main``, and a few as real processes."""

import json
import subprocess
import sys

import pytest
import torch

from gptrain import TrainConfig, train
from gptrain.cli import main


@pytest.fixture(scope="module")
def place(tmp_path_factory, verdict_path):
    """A folder of files that are wrong in every way, and one small trained run."""
    root = tmp_path_factory.mktemp("bad")
    (root / "binary.txt").write_bytes(b"\x80\x81\xfe not utf-8")
    (root / "short.txt").write_text("only a few words")
    (root / "empty.txt").write_text("")
    (root / "file.txt").write_text("a file, not a folder")
    (root / "doc.pdf").write_bytes(b"%PDF-1.4")
    (root / "no-text").mkdir()
    (root / "no-text" / "image.png").write_bytes(b"\x89PNG")
    (root / "full").mkdir()
    (root / "full" / "keep.txt").write_text("something")
    (root / "bad.jsonl").write_text('{"text": "fine"}\nnot json\n')
    (root / "garbled.toml").write_text("lr = = 3\n")
    (root / "unknown.toml").write_text("learning_rate = 3e-4\n")
    (root / "wrong-type.toml").write_text('lr = "fast"\n')
    (root / "null-out.json").write_text(json.dumps({"out": None}))
    (root / "list.json").write_text("[1, 2]")
    run = root / "run"
    train(TrainConfig(data=str(verdict_path), out=str(run), preset="tiny", context_length=16, batch_size=8,
                      max_steps=1, eval_freq=1, eval_iter=1, device="cpu", sample_tokens=0, precision="fp32"),
          echo=lambda line: None)
    damaged = root / "damaged"
    damaged.mkdir()
    for name in ("config.json", "model.safetensors", "manifest.json"):
        (damaged / name).write_bytes((run / "final" / name).read_bytes())
    (damaged / "model.safetensors").write_bytes((damaged / "model.safetensors").read_bytes()[:-64])
    return root


def tiny(*args):
    return ["--preset", "tiny", "--context-length", "16", "--device", "cpu", "--max-steps", "1", *args]


# (arguments with {root} for the folder above, a phrase the one line must hold)
CASES = [
    # train
    (["train", "--data", "{root}/missing.txt"], "neither a file, a folder nor a named dataset"),
    (["train", "--preset", "huge"], "unknown preset 'huge'"),
    (["train", "--batch-size", "0"], "--batch-size must be a positive integer"),
    (["train", "--batch-size", "two"], "invalid int value"),
    (["train", "--lr", "-1"], "--lr must be a positive number"),
    (["train", "--lr", "nan"], "--lr must be a finite number"),
    (["train", "--min-lr", "1"], "--min-lr must be between 0 and --lr"),
    (["train", "--train-ratio", "1.5"], "--train-ratio must be between 0 and 1"),
    (["train", "--dropout", "1"], "--dropout must be in [0, 1)"),
    (["train", "--precision", "fp8"], "invalid choice: 'fp8'"),
    (["train", "--logger", "neptune"], "invalid choice: 'neptune'"),
    (["train", "--grad-accum", "2", "--global-batch-tokens", "1024"], "not both"),
    (["train", "--warmup-steps", "-1"], "--warmup-steps must be a non-negative integer"),
    (["train", "--eval-freq", "-1"], "--eval-freq must be a non-negative integer"),
    (["train", "--context-length", "0"], "--context-length must be a positive integer"),
    (["train", "--grad-clip", "-1"], "--grad-clip must be positive"),
    (["train", "--config", "{root}/missing.toml"], "does not exist"),
    (["train", "--config", "{root}/garbled.toml"], "cannot be parsed"),
    (["train", "--config", "{root}/unknown.toml"], "unknown setting(s) learning_rate"),
    (["train", "--config", "{root}/wrong-type.toml"], "--lr must be a finite number, not 'fast'"),
    (["train", "--config", "{root}/null-out.json"], "--out must be a string, not None"),
    (["train", "--config", "{root}/list.json"], "must hold a table of settings"),
    (["train", "--data", "{root}/binary.txt", "--out", "{root}/o1", *tiny()], "not UTF-8 text"),
    (["train", "--data", "{root}/short.txt", "--out", "{root}/o2", *tiny()], "fewer than one window"),
    (["train", "--data", "{root}/empty.txt", "--out", "{root}/o3", *tiny()], "is empty"),
    (["train", "--data", "{root}/no-text", "--out", "{root}/o4", *tiny()], "holds no .txt files"),
    (["train", "--out", "{root}/file.txt", *tiny()], "is a file, not a folder"),
    (["train", "--out", "{root}/file.txt/run", *tiny()], "lies under"),
    (["train", "--out", "{root}/" + "x" * 300, *tiny()], "File name too long"),
    (["train", "--out", "{root}/nothing-here", "--resume", *tiny()], "holds no run to resume"),
    (["train", "--out", "{root}/run", "--data", "the-verdict", *tiny()], "already holds a run"),
    (["train", "--out", "{root}/o5", *tiny("--device", "tpu")], "unknown device 'tpu'"),
    (["train", "--out", "{root}/o7", *tiny("--device", "meta")], "unknown device 'meta'"),
    (["train", "--out", "{root}/o6", "--global-batch-tokens", "1000", "--batch-size", "2", *tiny()],
     "is not a multiple of batch size"),
    (["train", "--no-such-flag"], "unrecognized arguments"),
    # prepare
    (["prepare", "{root}/missing.txt", "--out", "{root}/p"], "does not exist"),
    (["prepare", "{root}/nomatch*.txt", "--out", "{root}/p"], "matches no files"),
    (["prepare", "{root}/no-text", "--out", "{root}/p"], "holds no .txt, .md, .jsonl"),
    (["prepare", "{root}/doc.pdf", "--out", "{root}/p"], "is not a .txt, .md, .jsonl"),
    (["prepare", "{root}/binary.txt", "--out", "{root}/p"], "is not UTF-8 text"),
    (["prepare", "{root}/short.txt", "--out", "{root}/full"], "is not empty"),
    (["prepare", "{root}/short.txt", "--out", "{root}/file.txt"], "is a file, not a folder"),
    (["prepare", "{root}/short.txt", "--out", "{root}/p", "--val-fraction", "1.5"], "--val-fraction must be in"),
    (["prepare", "{root}/short.txt", "--out", "{root}/p", "--workers", "0"], "--workers must be at least 1"),
    (["prepare", "{root}/bad.jsonl", "--out", "{root}/p", "--strict"], "bad.jsonl:2 is not JSON"),
    (["prepare", "{root}/empty.txt", "--out", "{root}/p"], "hold no text"),
    (["prepare", "{root}/short.txt"], "the following arguments are required: --out"),
    # generate
    (["generate", "--checkpoint", "{root}/missing"], "does not exist"),
    (["generate", "--checkpoint", "{root}/run", "--temperature", "-1"], "temperature must be >= 0"),
    (["generate", "--checkpoint", "{root}/run", "--top-k", "0"], "top_k must be at least 1"),
    (["generate", "--checkpoint", "{root}/run", "--top-p", "0"], "top_p must be in (0, 1]"),
    (["generate", "--checkpoint", "{root}/run", "--max-new-tokens", "-5"], "max_new_tokens must not be negative"),
    (["generate", "--checkpoint", "{root}/run", "--prompt", ""], "the prompt is empty"),
    (["generate", "--checkpoint", "{root}/no-text"], "holds no weights"),
    (["generate", "--checkpoint", "{root}/damaged"], "is truncated"),
    (["generate", "--checkpoint", "{root}/run", "--device", f"cuda:{torch.cuda.device_count() + 7}"],
     "CUDA GPU(s): use cuda:0" if torch.cuda.is_available() else "no CUDA GPU is available"),
    # eval
    (["eval", "--checkpoint", "{root}/run", "--data", "{root}/missing.txt"], "neither a file"),
    (["eval", "--checkpoint", "{root}/run", "--data", "{root}/short.txt", "--stride", "0"], "--stride must be at least 1"),
    (["eval", "--checkpoint", "{root}/run", "--data", "{root}/short.txt", "--context-length", "999"], "999"),
    (["eval", "--checkpoint", "{root}/run", "--data", "{root}/short.txt", "--batch-size", "0"],
     "--batch-size must be at least 1"),
    (["eval", "--checkpoint", "{root}/damaged", "--data", "{root}/short.txt"], "is truncated"),
    (["eval", "--data", "{root}/short.txt"], "the following arguments are required: --model/--checkpoint/--pretrained"),
    # report
    (["report", "{root}/missing"], "is not a directory"),
    (["report", "{root}/no-text"], "holds no metrics.jsonl"),
    (["report", "{root}/run", "--out", "{root}/missing-folder/r.html"], "No such file or directory"),
    # export, download, info, compare
    (["export", "--checkpoint", "{root}/missing", "--out", "{root}/e"], "does not exist"),
    (["export", "--checkpoint", "{root}/run", "--out", "{root}/full"], "already exists"),
    (["download-gpt2", "--size", "999M"], "unknown GPT-2 size '999M'"),
    (["download-gpt2", "--size", "124M"], "GPTRAIN_OFFLINE is set"),
    (["info", "{root}/missing"], "does not exist"),
    (["info", "--verify", "{root}/no-text"], "holds no checkpoint"),
    (["info", "--verify", "{root}/damaged"], "1 of 1 checkpoint(s) failed verification"),
    (["compare", "--prompt", "hi", "--temperature", "-1", "--pretrained", "none"], "temperature must be >= 0"),
    (["compare", "--prompt", "hi", "--checkpoint", "{root}/missing", "--pretrained", "none"], "does not exist"),
    # labs
    (["lab", "temperature", "--temperatures", "-1"], "temperatures must be >= 0"),
    (["lab", "multinomial", "--probs", "0.5", "0.6"], "sum"),
    (["lab", "loss", "--probs", "0.6,0.4"], "give --target"),
    (["lab", "loss", "--probs", "a,b", "--target", "0"], "is not a comma-separated list of numbers"),
    (["lab", "sweep", "--checkpoint", "{root}/run", "--grid", "1/0"], "top_k must be at least 1"),
    (["no-such-command"], "invalid choice: 'no-such-command'"),
]


def run_in_process(capsys, args) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's errors
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("args,phrase", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_gives_one_line_and_exit_2(place, capsys, args, phrase):
    code, err = run_in_process(capsys, [a.format(root=place) for a in args])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert phrase in lines[0], lines[0]


def test_there_are_at_least_fifty_distinct_bad_inputs():
    assert len({tuple(args) for args, _ in CASES}) >= 50


@pytest.mark.parametrize("args", [
    ["train", "--out", "{root}/file.txt/run", *tiny()],
    ["prepare", "{root}/short.txt", "--out", "{root}/file.txt"],
    ["generate", "--checkpoint", "{root}/damaged"],
    ["report", "{root}/run", "--out", "{root}/" + "r" * 300 + ".html"],
])
def test_as_a_real_process(place, args):
    result = subprocess.run([sys.executable, "-m", "gptrain", *[a.format(root=place) for a in args]],
                            capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("gptrain: error: "), result.stderr
