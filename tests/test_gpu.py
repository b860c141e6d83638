"""Real checks on a CUDA GPU (marker ``gpu``): bf16 training, fused AdamW, torch.compile, DDP and FSDP2
over NCCL, exact resume with the CUDA random state, generation, serving and ``estimate --measure``.

On a machine without CUDA they skip; ``pytest -m gpu`` runs only them, and benchmarks/gpu_check.py
reports their outcome with its measurements.
"""

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import openai
import pytest
import torch
import torch.nn.functional as F

from gptrain import GPTConfig, GPTModel, TrainConfig, generate, get_tokenizer, load_checkpoint, save_checkpoint, train
from gptrain.store.checkpoint import load_training_state
from gptrain.cli import main
from gptrain.planning.plan import Plan, estimate
from gptrain.core.accelerators import accelerator_of_device
from gptrain.training.optim import make_optimizer

from test_serve import running_server

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() "
                                                                       "is False here)")]

CUDA = torch.device("cuda")


def quiet(line):
    pass


def run_cfg(data, out, **overrides) -> TrainConfig:
    settings = dict(data=str(data), out=str(out), preset="tiny", context_length=32, batch_size=4, max_steps=6,
                    eval_freq=3, eval_iter=1, device="cuda", sample_tokens=0, lr=2e-3, dropout=0.0, precision="fp32")
    return TrainConfig(**(settings | overrides))


def records(run_dir, event):
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    drop = {"elapsed_s", "tokens_per_s", "mfu", "wall_time_s", "peak_memory_mb"}
    return [{k: v for k, v in r.items() if k not in drop} for r in rows if r["event"] == event]


@pytest.fixture
def full_fp32_matmuls():
    """gptrain train turns TF32 on for the whole process; comparisons with CPU references need it off."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def run_script(script: str, folder: Path, *args, launcher=()) -> dict:
    """Runs a Python script in a fresh process (its own CUDA context) and returns the JSON of its last line."""
    path = folder / "script.py"
    path.write_text(textwrap.dedent(script))
    # The fixed cuBLAS workspace is what torch's deterministic mode asks for on CUDA.
    result = subprocess.run([sys.executable, *launcher, str(path), *map(str, args)], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"})
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- Training ---

def test_bf16_training_on_cuda_tracks_fp32(story_page, tmp_path):
    fp32 = train(run_cfg(story_page, tmp_path / "fp32"), echo=quiet)
    bf16 = train(run_cfg(story_page, tmp_path / "bf16", precision="bf16"), echo=quiet)
    assert bf16["steps"] == fp32["steps"] == 6
    assert bf16["train_losses"] == pytest.approx(fp32["train_losses"], abs=0.02)
    assert bf16["val_losses"] == pytest.approx(fp32["val_losses"], abs=0.02)
    assert bf16["train_losses"][-1] < bf16["train_losses"][0]  # it learns
    assert load_checkpoint(tmp_path / "bf16").tok_emb.weight.dtype == torch.float32  # the master weights


def test_fused_adamw_on_cuda_equals_the_per_tensor_loop(tiny_cfg, full_fp32_matmuls):
    torch.manual_seed(0)
    model = GPTModel(tiny_cfg).to(CUDA)
    reference = copy.deepcopy(model)
    initial = model.tok_emb.weight.detach().clone()
    fused = make_optimizer(model, TrainConfig(lr=1e-3, weight_decay=0.1), CUDA)
    assert fused.defaults["fused"] is True
    decayed = [p for p in reference.parameters() if p.dim() >= 2]
    loop = torch.optim.AdamW([{"params": decayed, "weight_decay": 0.1},
                              {"params": [p for p in reference.parameters() if p.dim() < 2], "weight_decay": 0.0}],
                             lr=1e-3, foreach=False, fused=False)
    batch = torch.randint(0, tiny_cfg.vocab_size, (4, 33), generator=torch.Generator().manual_seed(1)).to(CUDA)
    for _ in range(3):
        for net, optimizer in ((model, fused), (reference, loop)):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(net(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten()).backward()
            optimizer.step()
    for (name, ours), theirs in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4, msg=name)
    assert not torch.equal(model.tok_emb.weight, initial)  # the steps did move the weights


def test_compiled_training_on_cuda_tracks_eager(story_page, tmp_path):
    eager = train(run_cfg(story_page, tmp_path / "eager", max_steps=4), echo=quiet)
    compiled = train(run_cfg(story_page, tmp_path / "compiled", max_steps=4, compile=True), echo=quiet)
    assert compiled["train_losses"] == pytest.approx(eager["train_losses"], abs=1e-3)
    from safetensors import safe_open
    with safe_open(tmp_path / "compiled" / "final" / "model.safetensors", "pt") as f:
        assert not any(key.startswith("_orig_mod") for key in f.keys())


DDP_AND_FSDP = """
    import copy, json, os, sys
    import torch, torch.distributed as dist, torch.nn.functional as F
    from gptrain import GPTConfig, GPTModel
    from gptrain.training.parallel import local_value, shard_model

    dist.init_process_group("nccl")
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(device)
    cfg = GPTConfig(vocab_size=50257, context_length=32, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
    torch.manual_seed(0)
    plain = GPTModel(cfg).to(device)
    ddp_model, sharded = copy.deepcopy(plain), copy.deepcopy(plain)
    ddp = torch.nn.parallel.DistributedDataParallel(ddp_model, device_ids=[device.index])
    shard_model(sharded, "fp32")
    batch = torch.randint(0, cfg.vocab_size, (4, 33), generator=torch.Generator().manual_seed(1)).to(device)
    losses = {}
    for name, net, params in [("plain", plain, plain), ("ddp", ddp, ddp_model), ("fsdp", sharded, sharded)]:
        optimizer = torch.optim.AdamW(params.parameters(), lr=1e-3)
        losses[name] = []
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
            loss.backward()
            optimizer.step()
            losses[name].append(loss.item())
    reference = dict(plain.named_parameters())
    differences = {
        kind: max((local_value(p.detach()) - reference[n]).abs().max().item() for n, p in net.named_parameters())
        for kind, net in [("ddp", ddp_model), ("fsdp", sharded)]}
    print(json.dumps({"backend": dist.get_backend(), "world_size": dist.get_world_size(), "losses": losses,
                      "differences": differences}))
    dist.destroy_process_group()
"""


def test_ddp_and_fsdp2_over_nccl_in_one_process_equal_plain_training(tmp_path):
    result = run_script(DDP_AND_FSDP, tmp_path, launcher=("-m", "torch.distributed.run", "--standalone",
                                                          "--nproc_per_node=1"))
    assert result["backend"] == "nccl" and result["world_size"] == 1
    losses = result["losses"]
    assert losses["plain"][-1] < losses["plain"][0]
    for kind in ("ddp", "fsdp"):
        assert losses[kind] == pytest.approx(losses["plain"], abs=1e-5), kind
        assert result["differences"][kind] < 1e-5, kind


RESUME = """
    import json, sys
    import torch
    # Deterministic kernels (memory-efficient attention's backward among them: only strict mode, not
    # warn_only, makes it so), so that any difference comes from the state that resume restores.
    torch.use_deterministic_algorithms(True)
    from gptrain import TrainConfig, train

    data, root = sys.argv[1], sys.argv[2]
    settings = dict(data=data, preset="tiny", context_length=32, batch_size=4, eval_freq=4, eval_iter=1,
                    device="cuda", sample_tokens=0, lr=2e-3, warmup_steps=2, cosine=True, min_lr=1e-4,
                    lr_decay_steps=8, dropout=0.1, precision="fp32", save_every=4)
    quiet = lambda line: None
    train(TrainConfig(out=root + "/straight", max_steps=8, **settings), echo=quiet)
    train(TrainConfig(out=root + "/parted", max_steps=4, **settings), echo=quiet)
    train(TrainConfig(out=root + "/parted", max_steps=8, **settings), resume=True, echo=quiet)
    print(json.dumps({"ok": True}))
"""


def test_resume_on_cuda_is_exact_with_dropout_drawn_from_the_cuda_generator(story_page, tmp_path):
    """Dropout masks come from the CUDA generator: unless resume restores its state, steps 5-8 differ."""
    run_script(RESUME, tmp_path, story_page, tmp_path)
    straight, parted = tmp_path / "straight", tmp_path / "parted"
    assert len(load_training_state(parted / "checkpoints" / "step-0000004")["rng"][0]["cuda"]) >= 1
    for event in ("train", "eval"):
        assert records(parted, event) == records(straight, event)
    expected = load_checkpoint(straight / "final").state_dict()
    for name, tensor in load_checkpoint(parted / "final").state_dict().items():
        assert torch.equal(tensor, expected[name]), name


# --- Generation and serving ---

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50257, context_length=128, emb_dim=64, n_heads=4, n_layers=2, drop_rate=0.0)
    return save_checkpoint(GPTModel(cfg), tmp_path_factory.mktemp("gpu") / "ckpt")


def test_generate_on_cuda_equals_the_cpu(checkpoint, full_fp32_matmuls, capsys):
    prompt = torch.tensor([get_tokenizer().encode("Every effort moves you")])
    on_cpu = generate(load_checkpoint(checkpoint), prompt, 30, 128, eos_id=50256)
    on_cuda = load_checkpoint(checkpoint, device=CUDA)
    cached = generate(on_cuda, prompt.to(CUDA), 30, 128, eos_id=50256)
    assert cached.device == on_cuda.tok_emb.weight.device == torch.device("cuda", 0)
    assert torch.equal(cached.cpu(), on_cpu)
    assert torch.equal(generate(on_cuda, prompt.to(CUDA), 30, 128, eos_id=50256, use_cache=False).cpu(), on_cpu)
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(checkpoint), "--prompt", "Every effort moves you",
                 "--max-new-tokens", "30", "--temperature", "0", "--device", "cuda", "--no-stream"]) == 0
    assert capsys.readouterr().out[:-1] == get_tokenizer().decode(on_cpu[0].tolist())


def test_serve_on_cuda_batches_requests_and_answers_what_generate_gives(checkpoint, full_fp32_matmuls):
    model = load_checkpoint(checkpoint, device=CUDA)
    reference = load_checkpoint(checkpoint, device=CUDA)
    tokenizer = get_tokenizer()
    prompts = ["Every effort moves you", "I had always thought", "Hello", "The sketch of the donkey"]
    with running_server(checkpoint, model=model, max_batch=4) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        streams = [client.completions.create(model="tiny", prompt=prompt, max_tokens=24, temperature=0, stream=True)
                   for prompt in prompts]
        texts = ["".join(chunk.choices[0].text for chunk in stream) for stream in streams]
        seeded = [client.completions.create(model="tiny", prompt=prompts[0], max_tokens=12, temperature=1.0,
                                            seed=5).choices[0].text for _ in range(2)]
    for prompt, text in zip(prompts, texts):
        ids = torch.tensor([tokenizer.encode(prompt)], device=CUDA)
        expected = generate(reference, ids, 24, 128, eos_id=50256)
        assert text == tokenizer.decode(expected[0, ids.shape[1]:].tolist()), prompt
    assert seeded[0] == seeded[1]  # a seeded request draws the same on the GPU too


# --- Estimates ---

def test_estimate_measures_real_steps_on_this_gpu(tiny_cfg, capsys):
    accelerator = accelerator_of_device(torch.cuda.get_device_name())
    if accelerator is None:
        pytest.skip(f"{torch.cuda.get_device_name()} is not in the estimate's table of GPUs")
    plan = Plan(tiny_cfg, tokens=1_000_000, batch_size=8, gpu=accelerator.name, precision="bf16")
    result = estimate(plan, measure=True, measure_seconds=1.0)
    assert result.throughput_source == "measured here" and 0 < result.mfu <= 1
    assert result.measured["tokens_per_s"] > 0 and result.measured["eval_tokens_per_s"] > 0
    assert main(["estimate", "--preset", "tiny", "--tokens", "1e6", "--gpu", accelerator.name, "--measure",
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["throughput_source"] == "measured here" and 0 < printed["mfu"] <= 1
