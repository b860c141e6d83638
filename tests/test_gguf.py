"""GGUF export, checked against the format's reader and llama.cpp itself (llama-cpp-python)."""

import subprocess
import sys

import pytest
import torch

from gptrain import GPTConfig, GPTModel, GptrainError, generate, quantize, save_checkpoint
from gptrain.cli import main
from gptrain.interop.gguf import export_gguf

gguf = pytest.importorskip("gguf", reason="GGUF export needs the gguf package: pip install 'gptrain[gguf]'")

TEXT = ("I had always thought Jack Gisburn rather a cheap genius--though a good fellow enough. It's 1899;\n"
        "  he'd said   \"we'll see\" -- naïve café, 3.14159 and 42 résumés!\t<|endoftext|>The end.")


@pytest.fixture(scope="module")
def model() -> GPTModel:
    torch.manual_seed(7)
    cfg = GPTConfig(vocab_size=50257, context_length=64, emb_dim=64, n_heads=4, n_layers=2, drop_rate=0.0)
    return GPTModel(cfg).eval()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("gguf")
    return {dtype: export_gguf(model, folder / f"tiny-{dtype}.gguf", dtype=dtype) for dtype in ("f32", "f16", "q8_0")}


@pytest.fixture(scope="module")
def llama_cpp():
    module = pytest.importorskip("llama_cpp", reason="llama.cpp's Python binding is not installed: "
                                                     "CMAKE_ARGS=-DGGML_NATIVE=OFF pip install llama-cpp-python")
    # llama.cpp's --no-repack: on CPUs with AMX (Sapphire Rapids and later) llama.cpp repacks q8_0
    # weights for its AMX kernels, which crash the process on any prompt longer than one token
    # (llama.cpp#20824, still open); the plain q8_0 kernels read the same file.
    defaults = module.llama_cpp.llama_model_default_params

    def without_repacking():
        params = defaults()
        params.use_extra_bufts = False
        return params

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module.llama_cpp, "llama_model_default_params", without_repacking)
        yield module


def llama(llama_cpp, path, **kwargs):
    return llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=2, seed=0, verbose=False, **kwargs)


def llama_greedy(llm, prompt: list[int], n: int) -> list[int]:
    tokens = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        tokens.append(token)
        if len(tokens) == n:
            return tokens


def test_llama_cpp_tokenizes_text_as_gptrain_does(llama_cpp, exported, tokenizer):
    llm = llama(llama_cpp, exported["f32"], vocab_only=True)
    ours = tokenizer.encode(TEXT, allowed_special={"<|endoftext|>"})
    assert llm.tokenize(TEXT.encode(), add_bos=False, special=True) == ours
    assert 50256 in ours and llm.token_bos() == llm.token_eos() == 50256
    assert llm.detokenize(ours, special=True).decode() == TEXT


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_llama_cpp_generates_gptrains_greedy_tokens(llama_cpp, exported, model, tokenizer, dtype):
    prompt = tokenizer.encode("I had always thought Jack")
    ours = generate(model, torch.tensor([prompt]), 40, 64)[0, len(prompt):].tolist()
    assert llama_greedy(llama(llama_cpp, exported[dtype]), prompt, 40) == ours


def teacher_forced(llama_cpp, path, ids: list[int]) -> torch.Tensor:
    llm = llama(llama_cpp, path, logits_all=True)
    llm.eval(ids)
    return torch.from_numpy(llm.scores[:len(ids)].copy())


def test_llama_cpp_logits_match_gptrains(llama_cpp, exported, model, tokenizer):
    ids = tokenizer.encode(TEXT, allowed_special={"<|endoftext|>"})[:64]
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0]
    scale = ours.abs().max().item()
    f32 = teacher_forced(llama_cpp, exported["f32"], ids)
    assert (f32 - ours).abs().max().item() < 1e-3 * scale
    # q8_0 rounds every matrix to 8 bits: close logits, and the same next token almost everywhere.
    q8 = teacher_forced(llama_cpp, exported["q8_0"], ids)
    assert ((q8 - ours).norm() / ours.norm()).item() < 0.05
    assert (q8.argmax(-1) == ours.argmax(-1)).float().mean().item() >= 0.9
    prompt = ids[:8]
    mostly = generate(model, torch.tensor([prompt]), 20, 64)[0, 8:].tolist()
    q8_tokens = llama_greedy(llama(llama_cpp, exported["q8_0"]), prompt, 20)
    assert sum(a == b for a, b in zip(q8_tokens, mostly)) >= 10


def test_the_file_holds_gpt2s_layout_metadata_and_tokenizer(exported, model):
    reader = gguf.GGUFReader(exported["q8_0"])
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("general.architecture") == "gpt2"
    assert (field("gpt2.block_count"), field("gpt2.context_length"), field("gpt2.embedding_length"),
            field("gpt2.feed_forward_length"), field("gpt2.attention.head_count")) == (2, 64, 64, 256, 4)
    assert field("general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0
    assert (field("tokenizer.ggml.model"), field("tokenizer.ggml.pre")) == ("gpt2", "gpt-2")
    tokens = field("tokenizer.ggml.tokens")
    assert len(tokens) == 50257 and tokens[50256] == "<|endoftext|>" and tokens[262] == "Ġthe"
    assert field("tokenizer.ggml.token_type")[50256] == gguf.TokenType.CONTROL
    assert field("tokenizer.ggml.merges")[:2] == ["Ġ t", "Ġ a"] and len(field("tokenizer.ggml.merges")) == 50000
    assert field("tokenizer.ggml.bos_token_id") == field("tokenizer.ggml.eos_token_id") == 50256
    kinds = {t.name: (t.tensor_type.name, tuple(int(n) for n in t.shape)) for t in reader.tensors}
    assert kinds["blk.1.attn_qkv.weight"] == ("Q8_0", (64, 192))  # ggml lists the row length first
    assert kinds["blk.0.ffn_up.weight"] == ("Q8_0", (64, 256)) and kinds["blk.0.ffn_down.weight"][1] == (256, 64)
    assert kinds["position_embd.weight"] == ("F32", (64, 64)) and kinds["output_norm.bias"] == ("F32", (64,))
    assert kinds["output.weight"][0] == "Q8_0" and len(kinds) == 5 + 12 * 2
    # Query, key and value rows in that order, as llama.cpp splits them.
    f32 = {t.name: t for t in gguf.GGUFReader(exported["f32"]).tensors}
    qkv = torch.from_numpy(f32["blk.1.attn_qkv.weight"].data.copy())
    att = model.trf_blocks[1].att
    assert torch.equal(qkv, torch.cat([att.W_query.weight, att.W_key.weight, att.W_value.weight]).detach())


def test_tied_padded_and_odd_width_models(tmp_path, tokenizer):
    cfg = GPTConfig(vocab_size=50304, context_length=16, emb_dim=48, n_heads=4, n_layers=1, tie_embeddings=True)
    path = export_gguf(GPTModel(cfg), tmp_path / "tied.gguf", dtype="q8_0")
    reader = gguf.GGUFReader(path)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == 50304 and tokens[50257] == "[PAD50257]"
    assert reader.fields["tokenizer.ggml.token_type"].contents()[50300] == gguf.TokenType.UNUSED
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    # 48-wide rows are not whole q8_0 blocks of 32: f16, as llama.cpp's converter falls back.
    assert kinds["token_embd.weight"] == kinds["output.weight"] == "F16"


def test_a_checkpoint_folder_is_exported_under_its_name(tmp_path, model):
    checkpoint = save_checkpoint(model, tmp_path / "my-run")
    path = export_gguf(checkpoint, tmp_path / "out" / "model.gguf", dtype="f16")
    assert gguf.GGUFReader(path).fields["general.name"].contents() == "my-run"
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.gguf"]


def test_what_llama_cpp_cannot_run_is_refused_in_one_line(tmp_path, tiny_cfg):
    classifier = GPTModel(tiny_cfg)
    classifier.out_head = torch.nn.Linear(tiny_cfg.emb_dim, 2)  # the book's chapter 6
    with pytest.raises(GptrainError, match=r"output head has 2 outputs, not one per token .*a classifier"):
        export_gguf(classifier, tmp_path / "a.gguf")
    torch.save(classifier.state_dict(), tmp_path / "classifier.pth")
    with pytest.raises(GptrainError, match=r"out_head.weight has shape \(2, 32\)"):
        export_gguf(tmp_path / "classifier.pth", tmp_path / "a.gguf", n_heads=4)
    with pytest.raises(GptrainError, match="1000 token embeddings, fewer than its tokenizer gpt2 needs"):
        export_gguf(GPTModel(tiny_cfg.replace(vocab_size=1000)), tmp_path / "a.gguf")
    with pytest.raises(GptrainError, match="quantized with gptrain.quantize"):
        export_gguf(quantize(GPTModel(tiny_cfg)), tmp_path / "a.gguf")
    with pytest.raises(GptrainError, match="unknown GGUF dtype 'q4_0': choose f32, f16, q8_0"):
        export_gguf(GPTModel(tiny_cfg), tmp_path / "a.gguf", dtype="q4_0")
    with pytest.raises(GptrainError, match="is a folder: give a file path"):
        export_gguf(GPTModel(tiny_cfg), tmp_path)
    assert not (tmp_path / "a.gguf").exists()


def test_an_existing_file_is_kept_until_a_complete_one_replaces_it(tmp_path, tiny_cfg):
    out = tmp_path / "model.gguf"
    out.write_bytes(b"previous")
    with pytest.raises(GptrainError, match="already exists: choose another output path, or overwrite it"):
        export_gguf(GPTModel(tiny_cfg), out)
    huge = GPTModel(tiny_cfg)
    with torch.no_grad():
        huge.trf_blocks[0].ff.layers[0].weight[0, 0] = 1e6
    with pytest.raises(GptrainError, match=r"blk.0.ffn_up.weight holds values beyond float16's range"):
        export_gguf(huge, out, dtype="f16", overwrite=True)
    assert out.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]
    export_gguf(huge, out, dtype="f32", overwrite=True)
    assert gguf.GGUFReader(out).fields["general.file_type"].contents() == gguf.LlamaFileType.ALL_F32


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gptrain", *args], capture_output=True, text=True)


def test_gptrain_export_format_gguf_writes_what_export_gguf_writes(tmp_path, model, exported):
    checkpoint = save_checkpoint(model, tmp_path / "run")
    result = run_cli("export", "--model", str(checkpoint), "--format", "gguf", "--dtype", "f16",
                     "--out", str(tmp_path / "cli.gguf"))
    assert result.returncode == 0, result.stderr
    written = gguf.GGUFReader(tmp_path / "cli.gguf")
    reference = gguf.GGUFReader(exported["f16"])
    assert [(t.name, t.tensor_type) for t in written.tensors] == [(t.name, t.tensor_type) for t in reference.tensors]
    assert all((a.data == b.data).all() for a, b in zip(written.tensors, reference.tensors))


@pytest.mark.parametrize("args, message", [
    (["--dtype", "f16"], "--dtype chooses the weights of a GGUF file: add --format gguf, or drop --dtype"),
    (["--format", "onnx"], "invalid choice: 'onnx'"),
    (["--format", "gguf", "--dtype", "q4_k"], "invalid choice: 'q4_k'"),
])
def test_bad_export_formats_are_one_line(tmp_path, model, args, message):
    checkpoint = save_checkpoint(model, tmp_path / "run")
    result = run_cli("export", "--model", str(checkpoint), "--out", str(tmp_path / "out"), *args)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_gptrain_export_gguf_refuses_a_classifier_in_one_line(tmp_path, tiny_cfg, capsys):
    classifier = GPTModel(tiny_cfg)
    classifier.out_head = torch.nn.Linear(tiny_cfg.emb_dim, 2)  # the book's chapter 6 head: 2 classes
    torch.save(classifier.state_dict(), tmp_path / "classifier.pth")
    capsys.readouterr()
    assert main(["export", "--model", str(tmp_path / "classifier.pth"), "--n-heads", "4", "--format", "gguf",
                 "--out", str(tmp_path / "new" / "model.gguf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "out_head.weight has shape (2, 32)" in err[0], err
    assert not (tmp_path / "new").exists()  # nothing written, not even the folder
