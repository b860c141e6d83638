"""Faults: operating-system errors in every command, concurrent runs, resume with changed settings,
damaged checkpoints. Each fault must give one line on stderr and exit 2, and lose nothing written."""

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gptrain import TrainConfig, load_checkpoint, train
from gptrain.cli import main
from gptrain.core.errors import GptrainError
from gptrain.core.files import atomic_path
from gptrain.data.prepare import prepare
from gptrain.store.integrity import MANIFEST_FILE, checked_after, verify_path
from gptrain.training.runlock import LOCK_FILE, RunLock, locks_run_dir


def quiet(line):
    pass


def prepare_parts(texts, out) -> Path:
    folder = out.with_name(out.name + "-text")
    folder.mkdir(exist_ok=True)
    for i, text in enumerate(texts):
        (folder / f"part{i}.txt").write_text(text, encoding="utf-8")
    prepare([str(folder)], out, val_fraction=0.25, workers=1, overwrite=True)
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory, verdict_text):
    return prepare_parts([verdict_text[i * 5000:(i + 1) * 5000] for i in range(4)],
                         tmp_path_factory.mktemp("shards") / "verdict")


def run_cfg(shards, out, **overrides) -> TrainConfig:
    settings = dict(data=str(shards), out=str(out), preset="tiny", context_length=16, batch_size=4, max_steps=2,
                    eval_freq=2, eval_iter=1, device="cpu", sample_tokens=0, precision="fp32", save_every=2)
    return TrainConfig(**(settings | overrides))


@pytest.fixture(scope="module")
def run_dir(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    train(run_cfg(shards, out), echo=quiet)
    return out


def one_line_error(capsys, args) -> str:
    """Run the CLI in-process; assert exit 2 and one stderr line without a traceback; return the line."""
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gptrain: error: ") and "Traceback" not in err, err
    return lines[0]


# --- Mounts and capabilities that let root meet the errors ordinary users meet ---

@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    path.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mounted.returncode:
        pytest.skip("mounting a tmpfs needs root and mount rights: " + mounted.stderr.decode().strip())
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER = 1, 2, 3


@contextlib.contextmanager
def permissions_enforced():
    """Root ignores file modes; drop the capabilities that let it (effective set only, this thread),
    so a mode of 0o555 refuses writes as it does for everybody else. Restored on exit."""
    if os.geteuid() != 0:
        yield  # an ordinary user meets the modes anyway
        return
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()
    if libc.capget(header, data) != 0:
        pytest.skip("capget is not available")
    saved = data[0]
    data[0] &= ~((1 << CAP_DAC_OVERRIDE) | (1 << CAP_DAC_READ_SEARCH) | (1 << CAP_FOWNER)) & 0xFFFFFFFF
    if libc.capset(header, data) != 0:
        pytest.skip("capset is not available")
    try:
        yield
    finally:
        data[0] = saved
        libc.capset(header, data)


# --- 1. Operating-system errors, for every command that writes or reads files ---

@pytest.fixture
def spots(tmp_path):
    """A file, a name too long for any file system, and a text to feed the commands."""
    (tmp_path / "file.txt").write_text("I am a file.\n")
    return {"file": tmp_path / "file.txt", "long": tmp_path / ("n" * 300), "tmp": tmp_path}


def outputs(kind: str, spots) -> Path:
    return {"existing file": spots["file"], "through a file": spots["file"] / "sub",
            "name too long": spots["long"]}[kind]


COMMANDS = {
    "train": lambda ctx, out: ["train", "--data", ctx["shards"], "--out", out, "--preset", "tiny",
                               "--context-length", "16", "--max-steps", "1", "--device", "cpu"],
    "prepare": lambda ctx, out: ["prepare", ctx["text"], "--out", out, "--workers", "1"],
    "export": lambda ctx, out: ["export", "--checkpoint", ctx["run"], "--out", out],
    "export-gguf": lambda ctx, out: ["export", "--checkpoint", ctx["run"], "--format", "gguf", "--out", out],
    "report": lambda ctx, out: ["report", ctx["run"], "--out", out],
}


@pytest.fixture
def ctx(shards, run_dir, verdict_path):
    return {"shards": str(shards), "run": str(run_dir), "text": str(verdict_path)}


BAD_OUTPUTS = {"existing file": ("is a file", "already exists"), "through a file": ("which is a file", "Not a directory"),
               "name too long": ("File name too long",)}


# report --out names a file: replacing an existing one is what it does
@pytest.mark.parametrize("command,kind", [(command, kind) for command in COMMANDS for kind in BAD_OUTPUTS
                                          if (command, kind) != ("report", "existing file")])
def test_bad_output_paths(capsys, ctx, spots, command, kind):
    out, expected = outputs(kind, spots), BAD_OUTPUTS[kind]
    line = one_line_error(capsys, COMMANDS[command](ctx, str(out)))
    assert any(phrase in line for phrase in expected) and str(spots["tmp"]) in line, line
    assert spots["file"].read_text() == "I am a file.\n"  # nothing written is lost


@pytest.mark.parametrize("command", [*COMMANDS])
def test_read_only_file_system(capsys, ctx, tmp_path, command):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        line = one_line_error(capsys, COMMANDS[command](ctx, str(ro / "out")))
    assert "Read-only file system" in line and str(ro) in line


@pytest.mark.parametrize("command", [*COMMANDS])
def test_permission_denied(capsys, ctx, tmp_path, command):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with permissions_enforced():
        line = one_line_error(capsys, COMMANDS[command](ctx, str(locked / "out")))
    assert "Permission denied" in line and str(locked) in line and "you may write to" in line


@pytest.mark.parametrize("command", [*COMMANDS])
def test_disk_full(capsys, ctx, tmp_path, command):
    with tmpfs(tmp_path / "full", "size=8k") as full:
        args = COMMANDS[command](ctx, str(full / "out"))
        if command == "train":
            args += ["--save-every", "1"]  # a checkpoint of 26 MB cannot fit
        line = one_line_error(capsys, args)
        leftovers = [p.name for p in full.rglob("*") if ".tmp" in p.name]
    assert "No space left on device" in line or "cannot write" in line, line
    assert not leftovers  # no half-written file is left behind


def test_a_file_written_through_atomic_path_is_whole_or_absent(tmp_path):
    path = tmp_path / "loss.pdf"
    path.write_text("old")
    with pytest.raises(OSError, match="No space"), atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".pdf"  # matplotlib reads the format from it
        tmp.write_text("half")
        raise OSError(28, "No space left on device")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["loss.pdf"]
    with atomic_path(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["loss.pdf"]


def test_eval_unreadable_and_odd_data(capsys, run_dir, spots, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("some text " * 50)
    secret.chmod(0o000)
    with permissions_enforced():
        line = one_line_error(capsys, ["eval", "--checkpoint", str(run_dir), "--data", str(secret)])
    assert "Permission denied" in line and str(secret) in line
    for data in (spots["file"] / "sub", spots["long"]):
        line = one_line_error(capsys, ["eval", "--checkpoint", str(run_dir), "--data", str(data)])
        assert str(spots["tmp"]) in line


def test_download_into_a_bad_cache(capsys, monkeypatch, tmp_path):
    from httpserver import FileServer

    from gptrain.interop import hub

    weights = b"\0" * 200_000
    monkeypatch.setitem(hub.KNOWN_WEIGHTS, "124M", (hashlib.sha256(weights).hexdigest(), len(weights)))
    monkeypatch.delenv("GPTRAIN_OFFLINE")
    repo = "/openai-community/gpt2/resolve/main"
    with FileServer({f"{repo}/config.json": b"{}", f"{repo}/model.safetensors": weights}) as server:
        monkeypatch.setenv("GPTRAIN_HF_ENDPOINT", server.url)
        (tmp_path / "file").write_text("x")
        for cache, expected in [(tmp_path / "file", "Not a directory"), (tmp_path / ("c" * 300), "too long")]:
            monkeypatch.setenv("GPTRAIN_CACHE_DIR", str(cache))
            assert expected in one_line_error(capsys, ["download-gpt2", "--size", "124M"])
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        monkeypatch.setenv("GPTRAIN_CACHE_DIR", str(locked))
        with permissions_enforced():
            assert "Permission denied" in one_line_error(capsys, ["download-gpt2"])
        with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
            monkeypatch.setenv("GPTRAIN_CACHE_DIR", str(ro))
            assert "Read-only file system" in one_line_error(capsys, ["download-gpt2"])
        with tmpfs(tmp_path / "full", "size=64k") as full:
            monkeypatch.setenv("GPTRAIN_CACHE_DIR", str(full))
            assert "No space left on device" in one_line_error(capsys, ["download-gpt2"])


# --- 2. Two processes, one run directory ---

def start_train(shards, out, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gptrain", "train", "--data", str(shards), "--out", str(out),
                             "--preset", "tiny", "--context-length", "16", "--batch-size", "1", "--max-steps", "100000",
                             "--eval-freq", "100000", "--sample-tokens", "0", "--device", "cpu", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_a_second_process_on_the_same_run_refuses_at_once(shards, tmp_path):
    out = tmp_path / "run"
    first = start_train(shards, out)
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").exists():  # past the lock, training
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        owner = json.loads((out / LOCK_FILE).read_text())
        assert owner["pid"] == first.pid
        second = subprocess.run([sys.executable, "-m", "gptrain", "train", "--data", str(shards), "--out", str(out),
                                 "--preset", "tiny", "--overwrite"], capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"in use by process {first.pid} on {owner['host']}" in lines[0], second.stderr
        assert first.poll() is None and (out / "metrics.jsonl").exists()  # the first run goes on, untouched
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # kill -9 left the lock behind; its pid is dead, so the next run takes it over
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == first.pid
    with RunLock(out) as lock:
        assert lock.took_over["pid"] == first.pid
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (out / LOCK_FILE).exists()


def test_lock_of_a_live_process_or_another_host_is_kept(tmp_path):
    with RunLock(tmp_path / "a"):
        with pytest.raises(GptrainError, match=f"in use by process {os.getpid()}"):
            RunLock(tmp_path / "a").acquire()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / LOCK_FILE).write_text(json.dumps({"pid": 1 << 30, "host": "elsewhere", "since": "then"}))
    with pytest.raises(GptrainError, match="process 1073741824 on elsewhere .*delete .*run.lock"):
        RunLock(tmp_path / "b").acquire()
    assert (tmp_path / "b" / LOCK_FILE).exists()
    RunLock(tmp_path / "c" / "d").acquire().release()
    assert not (tmp_path / "c").exists()  # a lock that made its folders and wrote nothing leaves nothing


def test_torchrun_ranks_other_than_0_do_not_lock(shards, tmp_path, monkeypatch):
    cfg = run_cfg(shards, tmp_path / "run")
    run_of_one_rank = locks_run_dir(lambda cfg: "trained")
    with RunLock(cfg.out):  # rank 0 of the same torchrun holds it
        monkeypatch.setenv("RANK", "1")
        assert run_of_one_rank(cfg) == "trained"
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(GptrainError, match="in use by"):
            run_of_one_rank(cfg)


# --- 3. Resume with changed settings ---

def test_resume_names_every_changed_model_or_data_setting(shards, run_dir):
    cfg = run_cfg(shards, run_dir, context_length=8, stride=4, seed=7, train_ratio=0.8, pad_vocab=True)
    with pytest.raises(GptrainError) as caught:
        train(cfg, resume=True, echo=quiet)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"cannot resume {run_dir / 'final'} with ")
    for phrase in ("--context-length 8 (trained with 16)", "--stride 4 (trained with None)", "--seed 7 (trained with 123)",
                   "--train-ratio 0.8 (trained with 0.9)", "--pad-vocab True (trained with False)"):
        assert phrase in message, message
    assert message.count("(trained with") == 5


def test_allowed_changes_are_recorded_and_other_data_is_refused(shards, tmp_path, verdict_text):
    data = prepare_parts([verdict_text[:10000], verdict_text[10000:20000]], tmp_path / "data")
    out = tmp_path / "run"
    train(run_cfg(data, out), echo=quiet)
    train(run_cfg(data, out, max_steps=3, eval_freq=1, save_every=3, logger=("jsonl", "csv"), dropout=0.2),
          resume=True, echo=quiet)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    resumed = [r for r in records if r["event"] == "resume"]
    assert len(resumed) == 1 and resumed[0]["step"] == 2
    assert resumed[0]["changed"] == {"max_steps": [2, 3], "eval_freq": [2, 1], "save_every": [2, 3],
                                     "logger": [["jsonl"], ["jsonl", "csv"]], "dropout": [0.1, 0.2]}
    prepare_parts([verdict_text[5000:15000], verdict_text[15000:25000]], tmp_path / "data")  # same path, other text
    with pytest.raises(GptrainError, match=r"cannot resume .* with the content of --data .*data \(sha256 [0-9a-f]{12}"
                                           r"\.\.\., trained on [0-9a-f]{12}\.\.\.\)"):
        train(run_cfg(data, out, max_steps=4, eval_freq=1, save_every=3, logger=("jsonl", "csv"), dropout=0.2),
              resume=True, echo=quiet)


# --- 4. Integrity ---

def test_every_checkpoint_file_is_recorded(run_dir):
    for checkpoint in (run_dir / "final", run_dir / "best", run_dir / "checkpoints" / "step-0000002"):
        files = json.loads((checkpoint / MANIFEST_FILE).read_text())["files"]
        on_disk = sorted(p.name for p in checkpoint.iterdir() if p.name != MANIFEST_FILE)
        assert sorted(files) == on_disk
        for name, record in files.items():
            data = (checkpoint / name).read_bytes()
            assert record == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@pytest.mark.parametrize("damage,expected", [
    (lambda data: data[:-100], "is truncated"),
    (lambda data: data[:5000] + bytes([data[5000] ^ 1]) + data[5001:], "was altered"),
])
def test_a_damaged_weights_file_is_detected_on_load_and_by_verify(run_dir, tmp_path, capsys, damage, expected):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    weights = run / "final" / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(GptrainError, match=expected):
        load_checkpoint(run / "final")
    line = one_line_error(capsys, ["generate", "--checkpoint", str(run), "--max-new-tokens", "1"])
    assert expected in line and str(weights) in line
    capsys.readouterr()
    line = one_line_error(capsys, ["info", "--verify", str(run)])
    assert "1 of 3 checkpoint(s) failed verification" in line and str(run / "final") in line
    assert main(["info", "--verify", str(run / "best")]) == 0
    assert f"{run / 'best'}: ok" in capsys.readouterr().out


def test_a_checked_after_block_reports_damage_at_its_end_and_over_its_own_errors(run_dir, tmp_path):
    checkpoint = tmp_path / "final"
    shutil.copytree(run_dir / "final", checkpoint)
    with checked_after():
        intact = load_checkpoint(checkpoint)
    assert intact.cfg.emb_dim > 0

    weights = checkpoint / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:5000] + bytes([data[5000] ^ 1]) + data[5001:])
    reached = []
    with pytest.raises(GptrainError, match="was altered"):
        with checked_after():
            load_checkpoint(checkpoint)
            reached.append("the block goes on while the hash is checked")
    assert reached == ["the block goes on while the hash is checked"]
    # What the damaged weights made go wrong in the block is reported as the damage it comes from.
    with pytest.raises(GptrainError, match="was altered"):
        with checked_after():
            load_checkpoint(checkpoint)
            raise ValueError("a product of damaged weights")


def test_verify_a_whole_run_and_an_altered_training_state(run_dir, tmp_path, capsys, shards):
    assert main(["info", "--verify", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count(": ok") == 3
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    state = run / "checkpoints" / "step-0000002" / "training_state.pt"
    state.write_bytes(state.read_bytes()[:-10])
    assert [len(problems) for _, problems in verify_path(run)] == [0, 1, 0]
    shutil.rmtree(run / "final")
    with pytest.raises(GptrainError, match="training_state.pt is truncated"):
        train(run_cfg(shards, run, max_steps=3), resume=True, echo=quiet)
