import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gptrain import GPTConfig, GPTModel, save_checkpoint
from gptrain.cli import main
from gptrain.data.corpus import open_shards, split_text
from gptrain.data.splits import text_tokens
from gptrain.evaluation.heldout import evaluate_text, evaluate_tokens, sliding_windows
from gptrain.data.prepare import prepare
from gptrain.core.runtime import resolve_precision


def seeded_model(cfg: GPTConfig, seed: int = 1) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(cfg).eval()


def promised_start(t: int, num_tokens: int, context: int, stride: int) -> int:
    """Where the context of token t starts: the first window whose last target reaches t, the
    last window slid back to end at the last token."""
    length = min(context, num_tokens - 1)
    k = max(0, math.ceil((t - length) / stride))
    return min(k * stride, num_tokens - 1 - length)


@torch.no_grad()
def token_by_token_nats(model, tokens, context, stride, shift: int = 0) -> float:
    total = 0.0
    for t in range(1, len(tokens)):
        start = min(promised_start(t, len(tokens), context, stride) + shift, t - 1)
        logits = model(torch.tensor([tokens[start:t]]))[0, -1]
        total += F.cross_entropy(logits, torch.tensor(tokens[t])).item()
    return total


@pytest.mark.parametrize("num_tokens,context,stride", [
    (2, 8, 8), (5, 8, 3), (9, 8, 8), (10, 8, 8), (17, 8, 8), (30, 8, 3), (30, 8, 1), (31, 8, 5), (100, 16, 7),
])
def test_every_token_is_scored_once_with_the_promised_context(num_tokens, context, stride):
    length, windows = sliding_windows(num_tokens, context, stride)
    assert length == min(context, num_tokens - 1)
    scored = []
    for w in windows:
        assert 0 <= w.start and w.start + length <= num_tokens - 1  # inputs and targets inside the text
        targets = range(w.start + w.first_scored + 1, w.start + length + 1)
        for t in targets:
            assert w.start == promised_start(t, num_tokens, context, stride)
        scored.extend(targets)
    assert scored == list(range(1, num_tokens))
    for w in windows[1:]:  # after the first window every prediction has at least context - stride + 1 tokens
        assert w.first_scored + 1 >= length - stride + 1


def test_stride_equal_to_context_gives_disjoint_windows():
    length, windows = sliding_windows(33, 8, 8)
    assert [(w.start, w.first_scored) for w in windows] == [(0, 0), (8, 0), (16, 0), (24, 0)]
    length, windows = sliding_windows(36, 8, 8)  # 35 predictions: the tail window slides back, scores 3
    assert [(w.start, w.first_scored) for w in windows][-1] == (27, 5)


@pytest.mark.parametrize("context,stride,chars", [(8, 8, 400), (8, 3, 400), (8, 1, 150), (8, 5, 12), (12, 12, 1)])
def test_equals_a_token_by_token_computation(tiny_cfg, verdict_text, context, stride, chars):
    model = seeded_model(tiny_cfg)
    text = verdict_text[:chars] if chars > 1 else "Hello world"  # 2 tokens: the shortest text that scores
    tokens = text_tokens(text).tolist()
    result = evaluate_text(model, text, context_length=context, stride=stride, batch_size=3, progress=False)
    expected = token_by_token_nats(model, tokens, context, stride)
    assert result.scored_tokens == len(tokens) - 1
    assert result.loss == pytest.approx(expected / (len(tokens) - 1), abs=1e-5)
    assert result.perplexity == pytest.approx(math.exp(result.loss))
    assert result.bits_per_byte == pytest.approx(result.total_nats / math.log(2) / len(text.encode("utf-8")))
    if len(tokens) > context + 1:  # the model does use its context: one token less of it changes the figure
        shifted = token_by_token_nats(model, tokens, context, stride, shift=1)
        assert abs(shifted - expected) / (len(tokens) - 1) > 1e-4


def test_batch_size_does_not_change_the_result(tiny_cfg, verdict_text):
    model = seeded_model(tiny_cfg)
    one = evaluate_text(model, verdict_text[:800], context_length=16, stride=5, batch_size=1, progress=False)
    many = evaluate_text(model, verdict_text[:800], context_length=16, stride=5, batch_size=64, progress=False)
    assert many.loss == pytest.approx(one.loss, abs=1e-6) and many.windows == one.windows


def hf_model_from(model):
    """HF transformers' GPT2LMHeadModel holding ``model``'s weights (zero q/k/v biases if it has none)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = model.cfg
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.context_length, n_embd=cfg.emb_dim,
                                    n_layer=cfg.n_layers, n_head=cfg.n_heads, resid_pdrop=0.0, embd_pdrop=0.0,
                                    attn_pdrop=0.0, tie_word_embeddings=cfg.tie_embeddings,
                                    activation_function="gelu_new"))
    ours = model.state_dict()
    state = {"transformer.wte.weight": ours["tok_emb.weight"], "transformer.wpe.weight": ours["pos_emb.weight"],
             "transformer.ln_f.weight": ours["final_norm.weight"], "transformer.ln_f.bias": ours["final_norm.bias"],
             "lm_head.weight": ours["out_head.weight"]}
    for i in range(cfg.n_layers):
        p, h = f"trf_blocks.{i}.", f"transformer.h.{i}."
        qkv = ("query", "key", "value")
        state[h + "attn.c_attn.weight"] = torch.cat([ours[p + f"att.W_{n}.weight"] for n in qkv], 0).t()
        state[h + "attn.c_attn.bias"] = (torch.cat([ours[p + f"att.W_{n}.bias"] for n in qkv]) if cfg.qkv_bias
                                         else torch.zeros(3 * cfg.emb_dim))
        for ours_name, hf_name in (("att.out_proj", "attn.c_proj"), ("ff.layers.0", "mlp.c_fc"),
                                   ("ff.layers.2", "mlp.c_proj")):
            state[h + hf_name + ".weight"] = ours[p + ours_name + ".weight"].t()
            state[h + hf_name + ".bias"] = ours[p + ours_name + ".bias"]
        for n in ("1", "2"):
            state[h + f"ln_{n}.weight"] = ours[p + f"norm{n}.weight"]
            state[h + f"ln_{n}.bias"] = ours[p + f"norm{n}.bias"]
    hf.load_state_dict({k: v.contiguous().clone() for k, v in state.items()}, strict=False)
    return hf.eval()


@pytest.mark.parametrize("gpt2_proper", [False, True])
@pytest.mark.parametrize("context,stride,chars", [(16, 16, 1200), (16, 5, 600), (32, 1, 250)])
def test_equals_hf_transformers_loss_on_the_same_windows(tiny_cfg, verdict_text, gpt2_proper, context, stride, chars):
    pytest.importorskip("transformers")
    cfg = tiny_cfg.replace(qkv_bias=True, tie_embeddings=True) if gpt2_proper else tiny_cfg
    model = seeded_model(cfg)
    text = verdict_text[:chars]
    ours = evaluate_text(model, text, context_length=context, stride=stride, batch_size=4, progress=False)

    tokens = torch.from_numpy(text_tokens(text).astype(np.int64))
    length, windows = sliding_windows(len(tokens), context, stride)
    inputs = torch.stack([tokens[w.start:w.start + length] for w in windows])
    labels = torch.stack([tokens[w.start + 1:w.start + length + 1] for w in windows])
    for row, w in zip(labels, windows):
        row[:w.first_scored] = -100  # HF's "not scored"
    with torch.no_grad():
        hf_loss = hf_model_from(model)(input_ids=inputs, labels=inputs, shift_labels=labels,
                                       num_items_in_batch=(labels != -100).sum()).loss.item()
    assert (labels != -100).sum().item() == len(tokens) - 1
    assert ours.loss == pytest.approx(hf_loss, abs=1e-4)


# --- The CLI ---

@pytest.fixture
def checkpoint(tmp_path, tiny_cfg):
    return save_checkpoint(seeded_model(tiny_cfg), tmp_path / "ckpt")


def eval_json(capsys, *args) -> dict:
    capsys.readouterr()
    assert main(["eval", *args, "--device", "cpu", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def fp32_json(capsys, *args) -> dict:
    """The figures in fp32, which the exact comparisons with evaluate_tokens' default need."""
    return eval_json(capsys, *args, "--precision", "fp32")


def test_eval_a_text_file(tmp_path, checkpoint, verdict_text, capsys):
    text = verdict_text[:2500]
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    data = ["--checkpoint", str(checkpoint), "--data", str(tmp_path / "text.txt")]
    model = seeded_model(GPTConfig.from_dict(json.loads((checkpoint / "config.json").read_text())["model"]))
    figures = fp32_json(capsys, *data, "--stride", "16")
    expected = evaluate_text(model, text, stride=16, progress=False)
    assert figures["loss"] == pytest.approx(expected.loss, abs=1e-6)
    assert figures["bytes"] == len(text.encode("utf-8")) and figures["tokens"] == len(text_tokens(text))
    assert figures["context_length"] == 32 and figures["tokens_per_s"] > 0

    val = fp32_json(capsys, *data, "--split", "val")
    assert val["loss"] == pytest.approx(evaluate_text(model, split_text(text)[1], progress=False).loss, abs=1e-6)

    assert main(["eval", *data, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "bits/byte" in out and "tokens/s" in out


def test_eval_a_prepared_folder(tmp_path, checkpoint, verdict_text, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(8):
        (corpus / f"doc{i:02d}.txt").write_text(verdict_text[i * 300:(i + 1) * 300], encoding="utf-8")
    prepare([str(corpus)], tmp_path / "shards", val_fraction=0.3, workers=1)
    shards = open_shards(tmp_path / "shards")
    model = seeded_model(GPTConfig.from_dict(json.loads((checkpoint / "config.json").read_text())["model"]))
    split_bytes = 0
    for split, tokens in (("val", shards.val), ("train", shards.train)):
        args = ["--checkpoint", str(checkpoint), "--data", str(tmp_path / "shards")]
        figures = fp32_json(capsys, *args, *(["--split", split] if split == "train" else []))
        expected = evaluate_tokens(model, np.asarray(tokens), progress=False)
        assert figures["tokens"] == len(tokens) and figures["loss"] == pytest.approx(expected.loss, abs=1e-6)
        text = model_free_decode(tokens)
        assert text.count("<|endoftext|>") >= 2  # every document ends with one
        # Bits per byte is per byte of the documents: the separators between them were never in the source.
        assert figures["bytes"] == len(text.replace("<|endoftext|>", "").encode("utf-8"))
        assert figures["bits_per_byte"] == pytest.approx(expected.total_nats / math.log(2) / figures["bytes"])
        split_bytes += figures["bytes"]
    assert split_bytes == sum(p.stat().st_size for p in corpus.iterdir())


def test_eval_a_folder_counts_the_bytes_of_its_files(tmp_path, checkpoint, verdict_text, capsys):
    (tmp_path / "docs").mkdir()
    for i in range(3):
        (tmp_path / "docs" / f"{i}.txt").write_text(verdict_text[i * 400:(i + 1) * 400], encoding="utf-8")
    figures = eval_json(capsys, "--checkpoint", str(checkpoint), "--data", str(tmp_path / "docs"))
    assert figures["bytes"] == sum(p.stat().st_size for p in (tmp_path / "docs").iterdir())
    assert figures["bits_per_byte"] == pytest.approx(figures["total_nats"] / math.log(2) / figures["bytes"])


def test_eval_precision_defaults_to_auto_as_train(tmp_path, checkpoint, verdict_text, capsys):
    """auto is bf16 on CPUs with native bf16 (and on CUDA), else fp32: the same resolution as train's."""
    text = verdict_text[:2500]
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    figures = eval_json(capsys, "--checkpoint", str(checkpoint), "--data", str(tmp_path / "text.txt"))
    model = seeded_model(GPTConfig.from_dict(json.loads((checkpoint / "config.json").read_text())["model"]))
    auto = resolve_precision("auto", torch.device("cpu"))
    assert figures["loss"] == pytest.approx(evaluate_text(model, text, precision=auto, progress=False).loss, abs=1e-6)
    assert figures["loss"] == eval_json(capsys, "--checkpoint", str(checkpoint), "--data", str(tmp_path / "text.txt"),
                                        "--precision", auto)["loss"]


def test_eval_checks_the_data_before_loading_the_model(tmp_path, capsys):
    """An empty or one-token text is refused before any model is read: here there is none to read."""
    (tmp_path / "one.txt").write_text("Hello", encoding="utf-8")
    (tmp_path / "empty").mkdir()
    for data, message in (("one.txt", "the text has 1 token(s): at least two are needed"), ("empty", "empty")):
        line = one_line_error(capsys, ["eval", "--checkpoint", str(tmp_path / "no-such-checkpoint"),
                                       "--data", str(tmp_path / data), "--device", "cpu"])
        assert message in line and "no-such-checkpoint" not in line, line


def model_free_decode(tokens) -> str:
    from gptrain import get_tokenizer

    return get_tokenizer().decode(np.asarray(tokens).tolist())


def test_eval_pretrained_hf_folder(tmp_path, tiny_cfg, verdict_text, capsys):
    """--pretrained reads a Hugging Face folder: the loss of the model it was saved from."""
    pytest.importorskip("transformers")
    model = seeded_model(tiny_cfg.replace(qkv_bias=True, tie_embeddings=True))
    hf_model_from(model).save_pretrained(tmp_path / "hf")
    (tmp_path / "text.txt").write_text(verdict_text[:2000], encoding="utf-8")
    args = ["eval", "--pretrained", str(tmp_path / "hf"), "--data", str(tmp_path / "text.txt"), "--device", "cpu",
            "--json", "--precision", "fp32"]
    capsys.readouterr()
    assert main(args) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["loss"] == pytest.approx(evaluate_text(model, verdict_text[:2000], progress=False).loss, abs=1e-4)


def one_line_error(capsys, args) -> str:
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("flags,message", [
    (["--stride", "33"], "--stride 33 is larger than the context length 32"),
    (["--stride", "0"], "--stride must be at least 1, not 0"),
    (["--stride", "-4"], "--stride must be at least 1, not -4"),
    (["--context-length", "16", "--stride", "17"], "--stride 17 is larger than the context length 16"),
    (["--context-length", "64"], "exceeds the model's window of 32 tokens"),
    (["--context-length", "0"], "--context-length must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--split", "all", "--data", "SHARDS"], "use --split train or --split val"),
    (["--data", "ONE_TOKEN"], "the text has 1 token(s): at least two are needed"),
    (["--data", "/no/such/text.txt"], "neither a file, a folder nor a named dataset"),
])
def test_bad_eval_input_is_one_line_and_exit_2(tmp_path, checkpoint, verdict_path, capsys, flags, message):
    (tmp_path / "one.txt").write_text("Hello", encoding="utf-8")
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "meta.json").write_text("{}")
    replace = {"ONE_TOKEN": str(tmp_path / "one.txt"), "SHARDS": str(tmp_path / "shards")}
    flags = [replace.get(f, f) for f in flags]
    data = [] if "--data" in flags else ["--data", str(verdict_path)]
    line = one_line_error(capsys, ["eval", "--checkpoint", str(checkpoint), *data, "--device", "cpu", *flags])
    assert message in line


def test_a_checkpoint_or_folder_from_another_tokenizer_is_refused(tmp_path, checkpoint, verdict_text, capsys):
    config = json.loads((checkpoint / "config.json").read_text())
    config["tokenizer"] = {"name": "cl100k_base", "sha256": "ab" * 32}
    (checkpoint / "config.json").write_text(json.dumps(config))
    (tmp_path / "text.txt").write_text(verdict_text[:500], encoding="utf-8")
    line = one_line_error(capsys, ["eval", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "text.txt")])
    assert "was trained with the tokenizer cl100k_base (sha256 abababababab…) but holds no tokenizer.json" in line

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text(verdict_text[:300], encoding="utf-8")
    prepare([str(tmp_path / "docs")], tmp_path / "shards", val_fraction=0.0, workers=1)
    meta = json.loads((tmp_path / "shards" / "meta.json").read_text())
    meta["tokenizer"]["sha256"] = "cd" * 32
    (tmp_path / "shards" / "meta.json").write_text(json.dumps(meta))
    other = save_checkpoint(seeded_model(GPTConfig(vocab_size=50257, context_length=16, emb_dim=16, n_heads=2,
                                                   n_layers=1)), tmp_path / "ok")
    line = one_line_error(capsys, ["eval", "--checkpoint", str(other), "--data", str(tmp_path / "shards"),
                                   "--split", "train"])
    assert "was prepared with the tokenizer gpt2 (sha256 cdcdcdcdcdcd…), which is neither in the folder" in line


def test_eval_needs_a_model(verdict_path, capsys):
    assert "the following arguments are required: --model/--checkpoint/--pretrained" in one_line_error(
        capsys, ["eval", "--data", str(verdict_path)])
