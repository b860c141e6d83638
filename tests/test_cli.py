import argparse
import json
import os
import re
import subprocess
import sys

import pytest

from gptrain.cli import main
from gptrain.core.errors import GptrainError
from gptrain.training.config import resolve_train_config


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "gptrain", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture
def tiny_run_dir(tmp_path, verdict_path):
    out = tmp_path / "run"
    assert main(["train", "--data", str(verdict_path), "--out", str(out), "--preset", "tiny",
                 "--context-length", "32", "--batch-size", "4", "--epochs", "1", "--eval-freq", "10",
                 "--eval-iter", "1", "--device", "cpu", "--sample-tokens", "3"]) == 0
    return out


def test_train_then_generate(tiny_run_dir, capsys):
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(tiny_run_dir), "--prompt", "Every effort moves you",
                 "--max-new-tokens", "5", "--temperature", "1.4", "--top-k", "25", "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("Every effort moves you")
    main(["generate", "--checkpoint", str(tiny_run_dir / "final"), "--prompt", "Every effort moves you",
          "--max-new-tokens", "5", "--temperature", "1.4", "--top-k", "25", "--seed", "1"])
    assert capsys.readouterr().out == first


def test_config_file_with_flag_override(tmp_path, verdict_path):
    config = tmp_path / "run.toml"
    config.write_text(f'data = "{verdict_path}"\npreset = "tiny"\ncontext_length = 16\nbatch_size = 8\n'
                      f'epochs = 1\neval_freq = 100\ndevice = "cpu"\nsample_tokens = 1\n')
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(out), "--context-length", "24"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["context_length"] == 24 and saved["train"]["batch_size"] == 8


def test_train_settings_come_from_the_saved_run_then_the_config_file_then_the_flags(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"train": {"out": str(run), "preset": "tiny", "seed": 7,
                                                           "lr": 1e-3, "batch_size": 4}}))
    config = tmp_path / "more.toml"
    config.write_text("lr = 2e-3\nbatch_size = 3\n")
    resumed = resolve_train_config({"out": str(run), "batch_size": 5}, config_file=config, resume=True)
    assert (resumed.preset, resumed.seed, resumed.lr, resumed.batch_size) == ("tiny", 7, 2e-3, 5)
    fresh = resolve_train_config({"out": str(run)}, config_file=config)
    assert (fresh.preset, fresh.seed, fresh.lr, fresh.batch_size) == ("124M", 123, 2e-3, 3)
    transfer = resolve_train_config({"init": "124M", "out": str(tmp_path / "new")})
    assert (transfer.preset, transfer.context_length) == (None, None)  # the architecture is SOURCE's
    with pytest.raises(GptrainError, match="--init starts a new run and --resume continues one"):
        resolve_train_config({"init": "124M", "out": str(run)}, resume=True)


@pytest.mark.parametrize("args,message", [
    (["train", "--data", "/no/such/file.txt"], "neither a file, a folder nor a named dataset"),
    (["train", "--preset", "huge"], "unknown preset 'huge'"),
    (["train", "--batch-size", "0"], "--batch-size must be a positive integer"),
    (["train", "--batch-size", "two"], "invalid int value"),
    (["generate", "--checkpoint", "/no/such/ckpt"], "does not exist"),
    (["generate", "--checkpoint", ".", "--temperature", "-1"], "temperature must be >= 0"),
    (["generate", "--checkpoint", ".", "--top-k", "0"], "top_k must be at least 1"),
    (["generate", "--checkpoint", ".", "--max-new-tokens", "-5"], "max_new_tokens must not be negative"),
    (["generate", "--checkpoint", "."], "holds no weights"),
    (["train", "--config", "/no/such.toml"], "config file /no/such.toml does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_bad_file_types(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"\x80\x81 not utf-8")
    (tmp_path / "short.txt").write_text("only a few words")
    for name, message in [("bin.txt", "not UTF-8 text"), ("short.txt", "fewer than one window")]:
        result = run_cli("train", "--data", str(tmp_path / name), "--out", str(tmp_path / "run"),
                         "--preset", "tiny", "--device", "cpu")
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
        assert not (tmp_path / "run").exists()  # nothing half-written


def test_corrupt_checkpoint_via_cli(tiny_run_dir):
    (tiny_run_dir / "final" / "model.safetensors").write_bytes(b"garbage")
    result = run_cli("generate", "--checkpoint", str(tiny_run_dir))
    assert result.returncode == 2 and "damaged" in result.stderr and "Traceback" not in result.stderr


def test_help_everywhere():
    for args in (["--help"], ["train", "--help"], ["generate", "--help"]):
        result = run_cli(*args)
        assert result.returncode == 0 and "usage: gptrain" in result.stdout
    assert "--context-length" in run_cli("train", "--help").stdout


def test_version_is_the_package_metadata():
    from importlib.metadata import version

    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout == f"gptrain {version('gptrain')}\n"


def every_help_text() -> dict[str, str]:
    """The --help of every command and lab, whitespace collapsed (argparse wraps lines)."""
    from gptrain.cli import build_parser

    def subparsers(parser):
        return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})

    texts = {}
    for name, parser in subparsers(build_parser()).items():
        texts[name] = " ".join(parser.format_help().split())
        for lab, lab_parser in subparsers(parser).items():
            texts[f"{name} {lab}"] = " ".join(lab_parser.format_help().split())
    return texts


def test_help_shows_each_default_once_and_no_none():
    texts = every_help_text()
    assert {"train", "estimate", "lab loss", "lab multinomial"} <= set(texts)
    for name, text in texts.items():
        assert "(default: None)" not in text, name
        assert not re.search(r"\]\s*\(default:", text), (name, re.findall(r".{40}\]\s*\(default:[^)]*\)", text))
    # Defaults not already in brackets are still shown, once.
    assert "--samples SAMPLES number of draws (default: 1000)" in texts["lab multinomial"]
    assert "--grad-accum GRAD_ACCUM micro-batches per optimizer step [1] --" in texts["estimate"]


def test_serve_caps_requests_with_max_request_tokens_and_keeps_the_old_name():
    """train's --max-tokens is a training budget; serve's cap has its own name, the old one an alias."""
    from gptrain.cli import build_parser

    parser = build_parser()
    for flag in ("--max-request-tokens", "--max-tokens"):
        assert parser.parse_args(["serve", "--checkpoint", "ckpt", flag, "24"]).max_request_tokens == 24
    assert parser.parse_args(["serve", "--checkpoint", "ckpt"]).max_request_tokens is None
    assert parser.parse_args(["train", "--max-tokens", "1000"]).max_tokens == 1000
    assert "--max-request-tokens" in every_help_text()["serve"]
    for flag in ("--max-request-tokens", "--max-tokens"):  # the value reaches the server's settings
        result = run_cli("serve", "--checkpoint", "ckpt", flag, "0")
        assert result.returncode == 2 and "max_tokens must be at least 1" in result.stderr, result.stderr


def test_an_unknown_setting_names_the_closest_one(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text("epoch = 3\nbatchsize = 2\n")
    capsys.readouterr()
    assert main(["train", "--config", str(config)]) == 2
    line = capsys.readouterr().err.strip()
    assert line == (f"gptrain: error: {config}: unknown setting(s) batchsize (did you mean batch_size?), "
                    "epoch (did you mean epochs?)")
    config.write_text("epochs = 3\nfoo = 1\n")  # nothing close: where the settings are listed
    assert main(["train", "--config", str(config)]) == 2
    assert capsys.readouterr().err.strip().endswith("unknown setting(s) foo; the settings are gptrain train's flags "
                                                    "with _ for - (see gptrain train --help)")
    from gptrain.model.config import GPTConfig

    with pytest.raises(GptrainError, match=r"^model config: unknown key\(s\) n_layer \(did you mean n_layers\?\)$"):
        GPTConfig.from_dict({"n_layer": 2})


@pytest.mark.parametrize("world_size", ["1", "2"])
def test_a_worker_of_a_multi_process_run_leaves_without_the_interpreters_teardown(world_size):
    """A torchrun worker ends with its exit code and all its output, but no interpreter teardown, where
    gloo threads that an FSDP model keeps alive can abort the process; a lone process ends as usual."""
    script = ("import atexit, sys; from gptrain.cli import main; atexit.register(print, 'teardown ran'); "
              "sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "WORLD_SIZE": world_size}
    done = subprocess.run([sys.executable, "-c", script, "estimate", "--preset", "tiny", "--tokens", "1000000"],
                          capture_output=True, text=True, env=env, timeout=120)
    refused = subprocess.run([sys.executable, "-c", script, "estimate", "--preset", "tiny"],
                             capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and "FLOPs per token" in done.stdout
    assert refused.returncode == 2 and refused.stderr.startswith("gptrain: error: give a budget")
    for result in (done, refused):
        assert ("teardown ran" in result.stdout) == (world_size == "1")
