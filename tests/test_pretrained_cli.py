"""The GPT-2 commands: download-gpt2, export, info, compare; bad inputs are one line and exit 2."""

import shutil
import subprocess
import sys

import pytest
import torch

from gpt2_files import serving_as_hub_gpt2
from gptrain import GPTModel, export_hf, generate, get_tokenizer, save_checkpoint, text_to_token_ids
from gptrain.core.download import cache_dir
from gptrain.lecture.compare import compare_continuations
from gptrain.cli import main


@pytest.fixture
def hf_dir(tmp_path, tiny_cfg):
    """A GPT-2-shaped model (qkv bias, tied head) as a Hugging Face folder."""
    torch.manual_seed(7)
    return export_hf(GPTModel(tiny_cfg.replace(qkv_bias=True, tie_embeddings=True)), tmp_path / "hf")


@pytest.fixture
def checkpoint(tmp_path, tiny_cfg):
    torch.manual_seed(8)
    return save_checkpoint(GPTModel(tiny_cfg), tmp_path / "run" / "final").parent


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "gptrain", *args], capture_output=True, text=True, cwd=cwd)


def test_info_prints_the_lectures_summary(hf_dir, capsys):
    assert main(["info", str(hf_dir)]) == 0
    out = capsys.readouterr().out
    # tiny_cfg with qkv bias: 50257*32 + 32*32 + 2 blocks * 12,704 + 64, head tied
    for line in ["Token embeddings: (50257, 32)", "  Vocabulary size: 50,257", "Position embeddings: (32, 32)",
                 "  Context length: 32", "Number of transformer blocks: 2",
                 "  Block 0: attention params: 4,224, feed-forward params: 8,352",
                 "Total parameters: 1,634,720 (the tied head counted once)",
                 "  with the head counted as a matrix of its own: 3,242,944",
                 '"qkv_bias": true, "tie_embeddings": true']:
        assert line in out, line


def test_info_of_an_untied_checkpoint_counts_the_head(checkpoint, capsys):
    assert main(["info", str(checkpoint)]) == 0
    out = capsys.readouterr().out
    # 50257*32 + 32*32 + 2 blocks * 12,608 + 64, and the head 50257*32 again
    assert "Total parameters: 3,242,752\n  without the output head: 1,634,528" in out


def test_export_command_writes_a_folder_transformers_reads(checkpoint, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")]) == 0
    assert "wrote" in capsys.readouterr().out
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out")
    assert hf.config.n_layer == 2 and not hf.config.tie_word_embeddings


def printed_rows(out: str) -> dict[str, str]:
    """compare's table as {label: text}, each row's wrapped lines joined again."""
    rows = {}
    for line in out.splitlines():
        if " | " in line:
            label, text = line.split(" | ", 1)
            if label.strip():
                rows[label.strip()] = text
            else:
                rows[next(reversed(rows))] += " " + text
    return rows


def test_compare_prints_the_three_continuations(hf_dir, checkpoint, tiny_cfg, capsys):
    args = ["compare", "--prompt", "Every effort moves you", "--checkpoint", str(checkpoint),
            "--pretrained", str(hf_dir), "--max-new-tokens", "6", "--seed", "3", "--device", "cpu"]
    assert main(args) == 0
    printed = printed_rows(capsys.readouterr().out)
    assert list(printed) == ["random init", f"trained {checkpoint}", f"pretrained {hf_dir}"]

    # The random row is a model of the pretrained model's config, initialised after manual_seed(seed).
    rows = compare_continuations("Every effort moves you", checkpoint=checkpoint, pretrained=hf_dir,
                                 max_new_tokens=6, seed=3)
    assert [" ".join(text.split()) for _, text in rows] == list(printed.values())
    torch.manual_seed(3)
    random_model = GPTModel(tiny_cfg.replace(qkv_bias=True, tie_embeddings=True, drop_rate=0.1))
    idx = text_to_token_ids("Every effort moves you", get_tokenizer())
    expected = generate(random_model, idx, 6, 32, temperature=1.0, top_k=40, eos_id=50256,
                        generator=torch.Generator().manual_seed(3))
    assert rows[0] == ("random init", get_tokenizer().decode(expected[0, idx.shape[1]:].tolist()))
    assert len({text for _, text in rows}) == 3


def test_download_gpt2_command(hf_dir, monkeypatch, capsys):
    with serving_as_hub_gpt2(hf_dir, "355M", monkeypatch) as (_, weights):
        assert main(["download-gpt2", "--size", "355M"]) == 0
    folder = cache_dir() / "gpt2" / "355M"
    assert capsys.readouterr().out.strip() == str(folder)
    assert (folder / "model.safetensors").read_bytes() == weights


def make_bad_sources(root, hf_dir, tiny_cfg):
    """Each of the issue's bad inputs, by name."""
    wrong_size = root / "wrong-size"  # the analogue of a 355M file with a 124M config, at tiny scale
    shutil.copytree(hf_dir, wrong_size)
    wider = export_hf(GPTModel(tiny_cfg.replace(emb_dim=64, qkv_bias=True, tie_embeddings=True)), root / "wider")
    shutil.copy(wider / "model.safetensors", wrong_size / "model.safetensors")
    truncated = root / "truncated"
    shutil.copytree(hf_dir, truncated)
    (truncated / "model.safetensors").write_bytes((hf_dir / "model.safetensors").read_bytes()[:50_000])
    llama = root / "llama"
    shutil.copytree(hf_dir, llama)
    (llama / "config.json").write_text('{"model_type": "llama", "hidden_size": 32}')
    (root / "notes.txt").write_text("not a checkpoint\n")
    (root / "empty").mkdir()
    return root


BAD_SOURCES = [
    ("wrong-size", "tensor transformer.wte.weight has shape (50257, 64) but the model needs (50257, 32)"),
    ("truncated", "truncated/model.safetensors is truncated or damaged"),
    ("llama", "llama/config.json is not a GPT-2 config (model_type 'llama', not 'gpt2')"),
    ("notes.txt", "notes.txt is not a checkpoint: it is neither a safetensors file nor a PyTorch state dict"),
    ("empty", "empty holds no weights: expected model.safetensors or pytorch_model.bin (a Hugging Face folder)"),
    ("774M", "is not on disk and GPTRAIN_OFFLINE is set, so it is not downloaded: put config.json and "
             "model.safetensors from https://huggingface.co/openai-community/gpt2-large in"),
]


@pytest.mark.parametrize("source,message", BAD_SOURCES)
def test_bad_sources_are_one_line_and_exit_2(tmp_path, hf_dir, tiny_cfg, source, message):
    make_bad_sources(tmp_path, hf_dir, tiny_cfg)
    result = run_cli("info", source, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


@pytest.mark.parametrize("source,message", BAD_SOURCES)
def test_compare_and_export_report_bad_sources_the_same_way(tmp_path, hf_dir, tiny_cfg, monkeypatch, capsys,
                                                            source, message):
    make_bad_sources(tmp_path, hf_dir, tiny_cfg)
    monkeypatch.chdir(tmp_path)
    for args in (["compare", "--prompt", "Hello", "--pretrained", source],
                 ["export", "--checkpoint", source, "--out", "exported"]):
        assert main(args) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "exported").exists()


def test_compare_samples_with_top_p_and_rejects_a_bad_one(hf_dir, capsys):
    args = ["compare", "--prompt", "Every effort moves you", "--pretrained", str(hf_dir), "--checkpoint", str(hf_dir),
            "--max-new-tokens", "6", "--temperature", "3", "--top-p", "0.3", "--device", "cpu"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "top-p 0.3" in out
    nucleus, unfiltered = (dict(compare_continuations("Every effort moves you", pretrained=hf_dir,
                                                      max_new_tokens=6, temperature=3, top_p=top_p))
                           for top_p in (0.3, None))
    label = f"pretrained {hf_dir}"
    assert printed_rows(out)[label] == " ".join(nucleus[label].split())
    assert nucleus[label] != unfiltered[label]

    assert main(args[:-4] + ["--top-p", "0", "--device", "cpu"]) == 2
    assert "top_p must be in (0, 1]" in capsys.readouterr().err


def test_compare_offline_says_how_to_skip_its_default_pretrained_weights(checkpoint, capsys):
    """The default --baseline 124M is not cached and GPTRAIN_OFFLINE is set (conftest): say --baseline none."""
    assert main(["compare", "--prompt", "Hello", "--checkpoint", str(checkpoint), "--device", "cpu"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "GPTRAIN_OFFLINE is set" in lines[0], lines
    assert lines[0].endswith("or pass --baseline none to compare without GPT-2 (or --baseline FOLDER for a "
                             "local copy)")
    assert main(["compare", "--prompt", "Hello", "--checkpoint", str(checkpoint), "--pretrained", "none",
                 "--max-new-tokens", "2", "--device", "cpu"]) == 0
