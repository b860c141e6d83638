"""LoRA: exact start, frozen base, merge, resume, and peft's reading of the exported adapter."""

import json

import pytest
import safetensors.torch
import torch

from gpt2_files import save_openai_layout, tiny_hf_model
from gptrain import GPTModel, TrainConfig, create_dataloader_v1, export_hf, load_checkpoint, train, train_model_simple

from gptrain.model.lora import LoRALinear, add_lora, adapter_state_dict, export_peft_adapter, load_adapter, lora_layers, merge_lora
from gptrain.training.optim import make_optimizer
from gptrain.interop.sources import load_gpt2

quiet = lambda line: None


@pytest.fixture
def hf_source(tmp_path):
    return save_openai_layout(tiny_hf_model(seed=11), tmp_path / "hf")


def tokens(batch=2, length=24, seed=0):
    return torch.randint(0, 50257, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_adapters_start_at_zero_so_logits_equal_the_base(hf_source):
    model = load_gpt2(hf_source)
    x = tokens()
    with torch.no_grad():
        before = model(x)
        add_lora(model, rank=4)
        after = model(x)
    assert torch.equal(before, after)
    layers = lora_layers(model)
    assert len(layers) == 6 * model.cfg.n_layers
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{name}.{part}" for name in layers for part in ("lora_A", "lora_B")}
    assert sum(model.get_parameter(n).numel() for n in trainable) == model.cfg.n_layers * 4 * (
        3 * (32 + 32) + (32 + 32) + (32 + 128) + (128 + 32))


def test_book_loop_trains_only_the_adapters_and_merge_is_base_plus_scaled_product(hf_source, verdict_text, tokenizer):
    model = load_gpt2(hf_source)
    base = {name: t.clone() for name, t in model.state_dict().items()}
    add_lora(model, rank=2, alpha=8, targets=["attn", "fc"])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    loader = create_dataloader_v1(verdict_text[:4000], batch_size=2, max_length=32, stride=32, shuffle=False)
    train_model_simple(model, loader, loader, optimizer, "cpu", num_epochs=1, eval_freq=100, eval_iter=1,
                       start_context="Every effort", tokenizer=tokenizer)
    for name, tensor in model.state_dict().items():
        if "lora_" not in name:
            assert torch.equal(tensor, base[name]), name  # bit for bit: the base never changes
    layers = lora_layers(model)
    assert {name.split(".", 2)[2] for name in layers} == {"att.W_query", "att.W_key", "att.W_value",
                                                         "att.out_proj", "ff.layers.0"}
    assert all(bool(layer.lora_B.abs().gt(0).all()) for layer in layers.values())

    model.eval()
    x = tokens()
    with torch.no_grad():
        adapted = model(x)
        adapters = {name: (layer.lora_A.clone(), layer.lora_B.clone()) for name, layer in layers.items()}
        merge_lora(model)
        merged = model(x)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    for name, (a, b) in adapters.items():
        expected = base[f"{name}.weight"] + (8 / 2) * (b @ a)
        torch.testing.assert_close(model.get_parameter(f"{name}.weight"), expected, atol=1e-7, rtol=0)
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=0)


@pytest.mark.parametrize("targets,qkv_bias", [(("q", "k", "v", "o", "fc", "proj"), True), (("q", "v"), False),
                                              (("k", "o", "proj"), True)])
def test_peft_loads_the_exported_adapter_with_the_same_logits(tmp_path, targets, qkv_bias):
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    source = GPTModel(dict(vocab_size=50257, context_length=32, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0,
                           qkv_bias=qkv_bias))
    base_folder = export_hf(source, tmp_path / "base")
    model = add_lora(source, rank=3, alpha=5, targets=targets)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(std=0.5)  # a trained adapter: not zero
    export_peft_adapter(model, tmp_path / "adapter", base_model=str(base_folder))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 3

    hf = transformers.GPT2LMHeadModel.from_pretrained(base_folder)
    peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    x = tokens(length=20)
    with torch.no_grad():
        theirs = peft_model(x).logits
        ours = model.eval()(x)
        plain = transformers.GPT2LMHeadModel.from_pretrained(base_folder).eval()(x).logits
    assert (theirs - plain).abs().max() > 1e-2  # the adapter does change the output
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


def lora_run(tmp_path, text, source, name="run", **overrides) -> TrainConfig:
    settings = dict(data=str(text), out=str(tmp_path / name), init=str(source), preset=None, context_length=32,
                    batch_size=4, max_steps=4, eval_freq=2, eval_iter=1, device="cpu", sample_tokens=0,
                    precision="fp32", lr=5e-3, lora_rank=2, lora_dropout=0.1)
    return TrainConfig(**(settings | overrides))


def records(run, event):
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    timings = {"elapsed_s", "tokens_per_s", "mfu"}
    return [{k: v for k, v in r.items() if k not in timings} for r in lines if r["event"] == event]


def test_lora_run_saves_merged_weights_adapter_and_peft_folder_and_resumes_bit_exact(tmp_path, hf_source, story_page):
    straight = tmp_path / "straight"
    train(lora_run(tmp_path, story_page, hf_source, "straight"), echo=quiet)
    final = straight / "final"
    assert {p.name for p in final.iterdir()} >= {"model.safetensors", "adapter.safetensors", "config.json",
                                                 "training_state.pt", "peft"}
    adapter = safetensors.torch.load_file(final / "adapter.safetensors")
    merged = safetensors.torch.load_file(final / "model.safetensors")
    base = load_gpt2(hf_source).state_dict()
    alpha = json.loads((final / "config.json").read_text())["train"]["lora_alpha"]
    assert alpha == 4.0  # 2 x rank by default
    for name, tensor in merged.items():
        layer = name.removesuffix(".weight")
        if f"{layer}.lora_A" in adapter:
            expected = base[name] + (alpha / 2) * (adapter[f"{layer}.lora_B"] @ adapter[f"{layer}.lora_A"])
            torch.testing.assert_close(tensor, expected, atol=1e-6, rtol=0)
            assert not torch.equal(tensor, base[name[:-7] + ".weight"])
        elif name == "pos_emb.weight":
            assert torch.equal(tensor, base[name][:32])
        else:
            assert torch.equal(tensor, base[name]), name  # norms, embeddings, biases: untouched
    optimizer_state = torch.load(final / "training_state.pt", weights_only=True)["optimizer"]["state"]
    assert len(optimizer_state) == len(adapter)  # the optimizer holds the adapters alone

    # Every other command reads final/ as a plain model: the adapted model's logits.
    adapted = load_adapter(load_gpt2(hf_source), final / "adapter.safetensors").eval()
    x = tokens(length=32)
    with torch.no_grad():
        torch.testing.assert_close(load_checkpoint(straight)(x), adapted(x)[..., :], atol=1e-5, rtol=0)

    parted = tmp_path / "parted"
    train(lora_run(tmp_path, story_page, hf_source, "parted", max_steps=2, save_every=1), echo=quiet)
    resumed = train(lora_run(tmp_path, story_page, hf_source, "parted"), resume=True, echo=quiet)
    assert resumed["steps"] == 4
    resumed_adapter = safetensors.torch.load_file(parted / "final" / "adapter.safetensors")
    for name, tensor in adapter.items():
        assert torch.equal(resumed_adapter[name], tensor), name
    assert records(parted, "train") == records(straight, "train")
    # The first part ended at step 1 and evaluated it, as every run evaluates its last step.
    assert [r for r in records(parted, "eval") if r["step"] != 1] == records(straight, "eval")


def test_resume_refuses_other_lora_settings(tmp_path, hf_source, story_page):
    train(lora_run(tmp_path, story_page, hf_source, max_steps=1, save_every=1), echo=quiet)
    from gptrain.core.errors import GptrainError

    with pytest.raises(GptrainError, match="cannot resume .* with --lora-rank 4: it was trained with 2"):
        train(lora_run(tmp_path, story_page, hf_source, max_steps=2, lora_rank=4), resume=True, echo=quiet)


def test_adapter_state_dict_holds_only_adapters(hf_source):
    model = add_lora(load_gpt2(hf_source), rank=2, targets=["v"])
    assert sorted(adapter_state_dict(model)) == [f"trf_blocks.{i}.att.W_value.lora_{p}" for i in (0, 1) for p in "AB"]


def test_muon_leaves_the_adapters_to_adamw(tmp_path, hf_source, story_page):
    """Adapters are low-rank factors, not the hidden matrices Muon orthogonalises: a LoRA run trains
    them with AdamW under --optimizer muon too, to the same weights as under adamw."""
    model = add_lora(load_gpt2(hf_source), rank=2)
    optimizer = make_optimizer(model, TrainConfig(optimizer="muon", lr=1e-3, muon_lr=2e-2))
    assert type(optimizer) is torch.optim.AdamW
    adapters = {id(p) for layer in lora_layers(model).values() for p in (layer.lora_A, layer.lora_B)}
    assert {id(p) for group in optimizer.param_groups for p in group["params"]} == adapters
    for name in ("muon", "adamw"):
        train(lora_run(tmp_path, story_page, hf_source, name, max_steps=2, optimizer=name,
                       muon_lr=2e-2 if name == "muon" else None), echo=quiet)
    expected = safetensors.torch.load_file(tmp_path / "adamw" / "final" / "adapter.safetensors")
    for name, tensor in safetensors.torch.load_file(tmp_path / "muon" / "final" / "adapter.safetensors").items():
        assert torch.equal(tensor, expected[name]), name
