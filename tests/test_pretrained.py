"""Importing GPT-2 weights: Hugging Face files and state dicts, the book's state dicts, the cache."""

import shutil

import pytest
import safetensors.torch
import torch

from gpt2_files import save_openai_layout, save_pickle_layout, serving_as_hub_gpt2, tiny_hf_model, write_config
from gptrain import GPTConfig, GPTModel, download_gpt2, generate, load_gpt2, load_weights_into_gpt, save_checkpoint
from gptrain.core.download import cache_dir
from gptrain.interop.export import hf_state_dict
from gptrain.core.errors import GptrainError

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_model():
    return tiny_hf_model(seed=1)


@pytest.fixture(scope="module")
def hf_dirs(hf_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    hf_model.save_pretrained(root / "save_pretrained")
    return {
        "save_pretrained": root / "save_pretrained",  # transformer. prefix, tied lm_head left out
        "openai_layout": save_openai_layout(hf_model, root / "openai"),
        "pytorch_model.bin": save_pickle_layout(hf_model, root / "pickle"),
    }


def hf_logits(hf_model, x):
    with torch.no_grad():
        return hf_model(x).logits


def our_logits(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("layout", ["save_pretrained", "openai_layout", "pytorch_model.bin"])
def test_logits_equal_hf(hf_model, hf_dirs, layout):
    model = load_gpt2(hf_dirs[layout])
    assert model.cfg == GPTConfig(vocab_size=50257, context_length=64, emb_dim=32, n_heads=4, n_layers=2,
                                  drop_rate=0.1, qkv_bias=True, tie_embeddings=True)
    assert not model.training and model.out_head.weight is model.tok_emb.weight
    assert all(p.is_contiguous() for p in model.parameters())
    x = torch.randint(0, 50257, (2, 64))
    torch.testing.assert_close(our_logits(model, x), hf_logits(hf_model, x), atol=1e-5, rtol=0)


def test_a_single_file_loads_like_its_folder(hf_model, hf_dirs):
    x = torch.randint(0, 50257, (1, 10))
    for file in (hf_dirs["save_pretrained"] / "model.safetensors", hf_dirs["pytorch_model.bin"] / "pytorch_model.bin"):
        torch.testing.assert_close(our_logits(load_gpt2(file), x), hf_logits(hf_model, x), atol=1e-5, rtol=0)


def test_twenty_greedy_tokens_equal_hf_generate(hf_model, hf_dirs):
    prompt = torch.tensor([[464, 1110, 286, 11666, 4430]])  # "The future of artificial intelligence"
    expected = hf_model.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=50256)
    ours = generate(load_gpt2(hf_dirs["save_pretrained"]), prompt, max_new_tokens=20, context_size=64)
    assert expected.shape == (1, 25)
    assert ours.tolist() == expected.tolist()


def test_untied_hf_model_keeps_its_own_head(tmp_path):
    hf_model = tiny_hf_model(seed=2, tie_word_embeddings=False)
    with torch.no_grad():
        hf_model.lm_head.weight.normal_()  # untied and different from wte
    hf_model.save_pretrained(tmp_path)
    model = load_gpt2(tmp_path)
    assert not model.cfg.tie_embeddings
    assert torch.equal(model.out_head.weight, hf_model.lm_head.weight)
    x = torch.randint(0, 50257, (1, 12))
    torch.testing.assert_close(our_logits(model, x), hf_logits(hf_model, x), atol=1e-5, rtol=0)


def test_load_weights_into_gpt_takes_torch_load_of_pytorch_model_bin(hf_model, hf_dirs):
    # The lecture's flow: build the model, torch.load the state dict, copy the weights in.
    state_dict = torch.load(hf_dirs["pytorch_model.bin"] / "pytorch_model.bin", weights_only=True)
    model = GPTModel(GPTConfig(vocab_size=50257, context_length=64, emb_dim=32, n_heads=4, n_layers=2, qkv_bias=True))
    assert load_weights_into_gpt(model, state_dict) is model
    # An untied model gets the head as a copy of wte, as OpenAI's GPT-2 ties them.
    assert torch.equal(model.out_head.weight, model.tok_emb.weight)
    assert model.out_head.weight.data_ptr() != model.tok_emb.weight.data_ptr()
    x = torch.randint(0, 50257, (1, 12))
    torch.testing.assert_close(our_logits(model.eval(), x), hf_logits(hf_model, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_book_state_dict_gives_the_book_models_logits(tmp_path, qkv_bias):
    book_ch04 = pytest.importorskip("llms_from_scratch.ch04")
    cfg = GPTConfig(vocab_size=50257, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0,
                    qkv_bias=qkv_bias)
    torch.manual_seed(5)
    book = book_ch04.GPTModel(cfg.to_dict()).eval()
    with torch.no_grad():
        for name, p in book.named_parameters():
            if name.endswith((".scale", ".shift")):
                p.normal_()  # norms away from 1 and 0, so a swapped scale/shift would show
    torch.save(book.state_dict(), tmp_path / "model.pth")
    x = torch.randint(0, 50257, (2, 16))

    with pytest.raises(GptrainError, match="number of attention heads is not stored.*--n-heads"):
        load_gpt2(tmp_path / "model.pth")
    model = load_gpt2(tmp_path / "model.pth", n_heads=4)
    assert model.cfg == cfg.replace(drop_rate=0.1)
    torch.testing.assert_close(our_logits(model, x), our_logits(book, x), atol=1e-5, rtol=0)

    fresh = GPTModel(cfg)
    load_weights_into_gpt(fresh, book.state_dict())
    torch.testing.assert_close(our_logits(fresh.eval(), x), our_logits(book, x), atol=1e-5, rtol=0)

    # The book's chapter 5 saves model and optimizer together.
    torch.save({"model_state_dict": book.state_dict(), "optimizer_state_dict": {}}, tmp_path / "both.pth")
    torch.testing.assert_close(our_logits(load_gpt2(tmp_path / "both.pth", n_heads=4), x), our_logits(book, x),
                               atol=1e-5, rtol=0)


def test_gptrain_checkpoints_load_from_folder_run_and_weights_file(tmp_path, tiny_cfg):
    model = GPTModel(tiny_cfg.replace(qkv_bias=True)).eval()
    save_checkpoint(model, tmp_path / "run" / "final")
    x = torch.randint(0, 50257, (1, 8))
    for source in (tmp_path / "run", tmp_path / "run" / "final", tmp_path / "run" / "final" / "model.safetensors"):
        loaded = load_gpt2(source)
        assert loaded.cfg == model.cfg
        assert torch.equal(our_logits(loaded, x), our_logits(model, x))


def test_a_355M_state_dict_into_a_124M_model_names_the_tensor_and_both_shapes():
    # Meta tensors have real shapes and no data: the check runs before anything is read.
    with torch.device("meta"):
        gpt2_124m = GPTModel(GPTConfig(qkv_bias=True, tie_embeddings=True))
        gpt2_355m = GPTModel(GPTConfig(emb_dim=1024, n_layers=24, n_heads=16, qkv_bias=True, tie_embeddings=True))
    exported = hf_state_dict(gpt2_355m)
    with pytest.raises(GptrainError, match=r"tensor transformer.wte.weight has shape \(50257, 1024\) but the model "
                                           r"needs \(50257, 768\)"):
        load_weights_into_gpt(gpt2_124m, exported)


def test_missing_and_unexpected_tensors_are_listed(hf_model):
    state = dict(hf_model.state_dict())
    for name in [n for n in state if n.startswith("transformer.h.1.")]:
        del state[name]
    state["transformer.h.0.extra.weight"] = torch.zeros(1)
    model = GPTModel(GPTConfig(vocab_size=50257, context_length=64, emb_dim=32, n_heads=4, n_layers=2, qkv_bias=True))
    with pytest.raises(GptrainError, match=r"missing h\.1\.ln_1\.weight, h\.1\.ln_1\.bias, h\.1\.attn\.c_attn\.weight "
                                           r"and 9 more; unexpected transformer\.h\.0\.extra\.weight"):
        load_weights_into_gpt(model, state)


def test_a_head_that_differs_from_the_embedding_is_refused_for_a_tied_model(hf_model, tmp_path):
    state = dict(hf_model.state_dict())
    state["lm_head.weight"] = state["lm_head.weight"] + 1
    hf_model.config.to_json_file(tmp_path / "config.json")
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(GptrainError, match="lm_head.weight differs from the token embedding"):
        load_gpt2(tmp_path)


@pytest.mark.parametrize("make,message", [
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:100_000]),
     "is truncated or damaged"),
    (lambda d: write_config(d, model_type="llama", hidden_size=32), "is not a GPT-2 config (model_type 'llama'"),
    (lambda d: write_config(d, model_type="gpt2", activation_function="relu"), "activation_function 'relu' is not"),
    (lambda d: (d / "model.safetensors").unlink(), "holds no weights: expected model.safetensors or pytorch_model.bin"),
    (lambda d: (d / "model.safetensors").write_text("hello, not weights"), "is not a checkpoint"),
    (lambda d: safetensors.torch.save_file({"foo": torch.zeros(2)}, d / "model.safetensors"),
     "is not a GPT-2 state dict: it has neither wte.weight"),
])
def test_bad_hf_folders_are_clear_errors(hf_dirs, tmp_path, make, message):
    folder = tmp_path / "hf"
    shutil.copytree(hf_dirs["save_pretrained"], folder)
    make(folder)
    with pytest.raises(GptrainError, match=message.replace("(", r"\(")):
        load_gpt2(folder)


def test_pickles_are_read_with_weights_only(tmp_path, hf_dirs):
    torch.save({"wte.weight": torch.zeros(2, 2), "callback": print}, tmp_path / "evil.pth")
    with pytest.raises(GptrainError, match="holds Python objects besides tensors"):
        load_gpt2(tmp_path / "evil.pth")
    truncated = (hf_dirs["pytorch_model.bin"] / "pytorch_model.bin").read_bytes()[:5000]
    (tmp_path / "pytorch_model.bin").write_bytes(truncated)
    with pytest.raises(GptrainError, match="is truncated or damaged"):
        load_gpt2(tmp_path / "pytorch_model.bin")


def test_unknown_names_and_offline_sizes_are_clear_errors(tmp_path):
    with pytest.raises(GptrainError, match="does not exist and is not a GPT-2 size"):
        load_gpt2(tmp_path / "nothing-here")
    with pytest.raises(GptrainError, match=r"GPTRAIN_OFFLINE is set.*put config.json and model.safetensors from "
                                           r"https://huggingface.co/openai-community/gpt2-medium in .*gpt2/355M"):
        load_gpt2("gpt2-medium")


# --- download against a local server ---

@pytest.fixture
def served_124m(hf_dirs, monkeypatch):
    """The tiny checkpoint served where the hub serves GPT-2 124M, with its true hash as the known one."""
    with serving_as_hub_gpt2(hf_dirs["openai_layout"], "124M", monkeypatch) as served:
        yield served


def test_download_then_load_from_the_cache(served_124m, hf_model, monkeypatch):
    server, weights = served_124m
    folder = download_gpt2("124M")
    assert folder == cache_dir() / "gpt2" / "124M"
    assert (folder / "model.safetensors").read_bytes() == weights
    monkeypatch.setenv("GPTRAIN_OFFLINE", "1")  # from now on the cache must do
    x = torch.randint(0, 50257, (1, 10))
    torch.testing.assert_close(our_logits(load_gpt2("gpt2"), x), hf_logits(hf_model, x), atol=1e-5, rtol=0)
    assert len(server.requests) == 2


def test_interrupted_download_resumes(served_124m):
    server, weights = served_124m
    server.cut_after = 3_000_000
    with pytest.raises(GptrainError, match="run the same command again to resume"):
        download_gpt2("124M")
    part = cache_dir() / "gpt2" / "124M" / "model.safetensors.part"
    assert part.stat().st_size == 3_000_000
    server.cut_after = None
    folder = download_gpt2("124M")
    assert server.requests[-1] == ("/openai-community/gpt2/resolve/main/model.safetensors", "bytes=3000000-")
    assert (folder / "model.safetensors").read_bytes() == weights and not part.exists()


def test_corrupt_download_is_rejected(served_124m):
    server, weights = served_124m
    corrupt = bytearray(weights)
    corrupt[-10] ^= 0xFF
    server.files["/openai-community/gpt2/resolve/main/model.safetensors"] = bytes(corrupt)
    with pytest.raises(GptrainError, match="is corrupt .*the file was removed"):
        download_gpt2("124M")
    folder = cache_dir() / "gpt2" / "124M"
    assert not (folder / "model.safetensors").exists() and not (folder / "model.safetensors.part").exists()
