"""Weight-only int8 inference (gptrain.quantize) against the float model it came from."""

import copy
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import gptrain
import gptrain.interop.sources
from gptrain import GPTModel, GptrainError, add_lora, evaluate_tokens, generate, split_text
from gptrain.cli import main
from gptrain.evaluation.tasks import evaluate_task
from gptrain.lecture.compare import compare_continuations
from gptrain.model.quantize import (
    Int8Embedding,
    Int8Linear,
    has_int8_kernel,
    int8_rows,
    quantize,
    weight_bytes,
)


@pytest.fixture(scope="module")
def trained_and_heldout(verdict_text, tokenizer):
    """A tiny model trained for 100 steps on the story's first 90%, and the ids of the last 10% it never saw.

    Its vocabulary is the story's own tokens (GPT-2 ids renumbered), which keeps training to seconds.
    """
    train_text, heldout_text = split_text(verdict_text, 0.9)
    gpt2_ids = [tokenizer.encode(text) for text in (train_text, heldout_text)]
    ids = {token: i for i, token in enumerate(sorted(set(gpt2_ids[0] + gpt2_ids[1])))}
    train, heldout = ([ids[t] for t in part] for part in gpt2_ids)
    torch.manual_seed(123)
    model = GPTModel(gptrain.GPTConfig(vocab_size=len(ids), context_length=64, emb_dim=64, n_heads=4, n_layers=2,
                                       drop_rate=0.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    windows = torch.tensor(train[:len(train) // 65 * 65]).view(-1, 65)
    for step in range(100):
        batch = windows[torch.randint(len(windows), (8,))]
        loss = F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), heldout


def test_int8_logits_stay_close_to_float32(trained_and_heldout, tokenizer):
    model, heldout = trained_and_heldout
    ids = torch.tensor([heldout[:64]])
    q = quantize(copy.deepcopy(model))
    with torch.no_grad():
        ref, got = model(ids), q(ids)
    relative = ((got - ref).norm() / ref.norm()).item()
    assert relative < 0.02, relative
    agree = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
    assert agree > 0.9, agree


def test_int8_perplexity_on_held_out_text_is_within_one_percent(trained_and_heldout):
    model, heldout = trained_and_heldout
    float_ppl = evaluate_tokens(model, heldout).perplexity
    int8_ppl = evaluate_tokens(quantize(copy.deepcopy(model)), heldout).perplexity
    assert float_ppl < 0.5 * model.cfg.vocab_size  # trained: a random model sits near the vocabulary size
    assert abs(int8_ppl / float_ppl - 1) < 0.01, (float_ppl, int8_ppl)


def test_int8_weights_take_about_a_quarter_of_the_bytes(tiny_cfg):
    for tied in (False, True):
        model = GPTModel(tiny_cfg.replace(tie_embeddings=tied)).eval()
        before = weight_bytes(model)
        q = quantize(model)
        assert 0.24 < weight_bytes(q) / before < 0.30, weight_bytes(q) / before
        # The tied head keeps sharing the embedding's rows: one int8 copy, not two.
        assert (q.out_head.weight_int8 is q.tok_emb.weight_int8) == tied
        assert all(not p.requires_grad for p in q.parameters())


def test_every_linear_layer_and_the_token_embedding_become_int8(tiny_cfg):
    q = quantize(GPTModel(tiny_cfg.replace(qkv_bias=True)))
    linears = [m for m in q.modules() if isinstance(m, Int8Linear)]
    assert len(linears) == 6 * tiny_cfg.n_layers + 1
    assert not any(isinstance(m, torch.nn.Linear) for m in q.modules())
    assert isinstance(q.tok_emb, Int8Embedding)
    assert isinstance(q.pos_emb, torch.nn.Embedding)  # tiny, and read by its shape elsewhere


def test_int8_greedy_generation_and_a_padded_vocabulary(trained_and_heldout):
    model, heldout = trained_and_heldout
    prompt = torch.tensor([heldout[:8]])
    expected = generate(model, prompt, 20, 64)
    padded = quantize(copy.deepcopy(model).pad_vocab(64))
    assert padded.out_head.out_features % 64 == 0 and padded.out_head.out_features > model.cfg.vocab_size
    got = generate(padded, prompt, 20, 64)
    # Greedy paths part at the first near tie; until then they agree token for token.
    assert torch.equal(got[0, :18], expected[0, :18])
    assert gptrain.quantize is quantize


def test_quantize_refuses_what_it_cannot_quantize(tiny_cfg):
    with pytest.raises(GptrainError, match="unknown quantization 'int4': choose int8"):
        quantize(GPTModel(tiny_cfg), "int4")
    with pytest.raises(GptrainError, match="already quantized"):
        quantize(quantize(GPTModel(tiny_cfg)))
    with pytest.raises(GptrainError, match="merge them first"):
        quantize(add_lora(GPTModel(tiny_cfg), rank=2))
    with pytest.raises(GptrainError, match="takes a GPTModel, not Linear"):
        quantize(torch.nn.Linear(2, 2))


def test_a_device_or_dtype_without_int8_kernels_is_refused_in_one_line():
    # PyTorch's CPU kernel takes float32, bfloat16 and float16 activations, and is vectorized for bfloat16.
    assert has_int8_kernel("cpu") and has_int8_kernel("cpu", torch.bfloat16)
    assert not has_int8_kernel("cpu", torch.float64)
    layer = Int8Linear(*int8_rows(torch.randn(8, 32)), None, torch.float64)
    with pytest.raises(GptrainError, match=r"no int8 weight kernel .* for torch.float64 on cpu: run the int8 model"):
        layer(torch.zeros(1, 32))
    if not torch.cuda.is_available():
        assert not has_int8_kernel("cuda")


def test_on_cpu_the_int8_products_take_bfloat16_and_return_float32(tiny_cfg):
    q = quantize(GPTModel(tiny_cfg))
    assert {m.compute_dtype for m in q.modules() if isinstance(m, Int8Linear)} == {torch.bfloat16}
    assert q(torch.zeros(1, 4, dtype=torch.long)).dtype == torch.float32


def test_gptrain_generate_quantize_int8_gives_what_the_python_api_gives(tmp_path, tiny_cfg, tokenizer):
    torch.manual_seed(5)
    model = GPTModel(tiny_cfg).eval()
    checkpoint = gptrain.save_checkpoint(model, tmp_path / "run")
    prompt = "Every effort moves you"
    result = subprocess.run([sys.executable, "-m", "gptrain", "generate", "--model", str(checkpoint), "--prompt", prompt,
                             "--max-new-tokens", "12", "--device", "cpu", "--quantize", "int8", "--no-stream"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    ids = gptrain.text_to_token_ids(prompt, tokenizer)
    expected = generate(quantize(copy.deepcopy(model)), ids, 12, tiny_cfg.context_length)
    assert result.stdout.rstrip("\n") == gptrain.token_ids_to_text(expected, tokenizer)
    bad = subprocess.run([sys.executable, "-m", "gptrain", "generate", "--model", str(checkpoint), "--quantize", "int4"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice: 'int4'" in bad.stderr


@pytest.fixture(scope="module")
def float_checkpoint(tmp_path_factory):
    torch.manual_seed(5)
    cfg = gptrain.GPTConfig(vocab_size=50257, context_length=32, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
    model = GPTModel(cfg).eval()
    return model, gptrain.save_checkpoint(model, tmp_path_factory.mktemp("int8") / "run")


def test_gptrain_eval_quantize_int8_scores_the_int8_model(float_checkpoint, verdict_text, tokenizer, capsys):
    model, checkpoint = float_checkpoint
    text = checkpoint.parent / "page.txt"
    text.write_text(verdict_text[:2000], encoding="utf-8")
    capsys.readouterr()
    base = ["eval", "--model", str(checkpoint), "--device", "cpu", "--precision", "fp32", "--json"]
    assert main([*base, "--data", str(text), "--quantize", "int8"]) == 0
    got = json.loads(capsys.readouterr().out)
    ids = tokenizer.encode(text.read_text(encoding="utf-8"))
    expected = evaluate_tokens(quantize(copy.deepcopy(model)), ids)
    assert got["loss"] == pytest.approx(expected.loss, rel=1e-6)
    assert got["loss"] != pytest.approx(evaluate_tokens(model, ids).loss, rel=1e-7)  # not the float model's
    mc = checkpoint.parent / "mc.jsonl"
    mc.write_text(json.dumps({"context": "Every effort moves", "choices": [" you", " the", " him"], "answer": 0}) + "\n")
    assert main([*base, "--task", "mc", "--data", str(mc), "--quantize", "int8"]) == 0
    task = json.loads(capsys.readouterr().out)
    assert task["examples"] == 1
    assert task["acc"] == evaluate_task(quantize(copy.deepcopy(model)), "mc", mc, progress=False).metrics["acc"]


def test_gptrain_compare_quantize_int8_continues_with_the_int8_models(float_checkpoint, tokenizer, capsys, monkeypatch):
    model, checkpoint = float_checkpoint
    monkeypatch.setenv("COLUMNS", "400")  # each row on one line
    capsys.readouterr()
    prompt = "Every effort moves you"
    assert main(["compare", "--model", str(checkpoint), "--baseline", "none", "--prompt", prompt, "--temperature", "0",
                 "--max-new-tokens", "8", "--device", "cpu", "--quantize", "int8"]) == 0
    out = capsys.readouterr().out
    ids = gptrain.text_to_token_ids(prompt, tokenizer)
    continued = generate(quantize(copy.deepcopy(model)), ids, 8, 32)[0, ids.shape[1]:]
    trained_row = next(line for line in out.splitlines() if line.startswith("trained "))
    assert trained_row.split(" | ", 1)[1] == " ".join(gptrain.token_ids_to_text(continued, tokenizer).split())
    rows = compare_continuations(prompt, checkpoint=checkpoint, pretrained=None, max_new_tokens=8, temperature=0,
                                 quantize="int8")
    assert rows[1][1] == gptrain.token_ids_to_text(continued, tokenizer)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with CUDA: the command's test below runs instead")
def test_a_device_without_int8_kernels_is_refused_before_the_model_loads(float_checkpoint, tmp_path):
    _, checkpoint = float_checkpoint
    with pytest.raises(GptrainError, match=r"^PyTorch .* has no int8 weight kernel .* on cuda: run it on the CPU "
                                           r"\(--device cpu\), or leave out --quantize$"):
        gptrain.interop.sources.resolve_model(tmp_path / "not-read", device="cuda", quantize="int8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_quantize_int8_on_cuda_runs_or_is_one_line(float_checkpoint, capsys):
    _, checkpoint = float_checkpoint
    capsys.readouterr()
    code = main(["generate", "--model", str(checkpoint), "--device", "cuda", "--quantize", "int8", "--no-stream",
                 "--max-new-tokens", "4"])
    err = capsys.readouterr().err
    if has_int8_kernel("cuda"):
        assert code == 0, err
    else:
        assert code == 2 and err.startswith("gptrain: error: PyTorch") and len(err.strip().splitlines()) == 1
