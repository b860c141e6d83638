import json
import time

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from gptrain import GPTConfig, GPTModel
from gptrain.cli import main
from gptrain.model.config import PRESETS
from gptrain.planning.memory import activation_bytes, memory_per_device
from gptrain.planning.plan import Plan, estimate
from gptrain.core.accelerators import accelerator_of_device, find_accelerator
from gptrain.model.counts import flops_per_token, parameter_counts
from gptrain.model.gpt import count_parameters


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_parameter_counts_equal_the_instantiated_model(preset, tied, qkv_bias):
    cfg = PRESETS[preset].replace(tie_embeddings=tied, qkv_bias=qkv_bias)
    with torch.device("meta"):  # shapes only: 1558M without 6 GB
        model = GPTModel(cfg)
    counts = parameter_counts(cfg)
    assert counts.total == count_parameters(model) == sum(p.numel() for p in model.parameters())
    embeddings = model.tok_emb.weight.numel() + model.pos_emb.weight.numel()
    assert counts.non_embedding == counts.total - embeddings
    matrices = sum(p.numel() for p in model.trf_blocks.parameters() if p.dim() == 2) + model.out_head.weight.numel()
    assert counts.matrix == matrices


def test_openai_gpt2_124m_has_its_published_parameter_count():
    assert parameter_counts(PRESETS["124M"].replace(tie_embeddings=True, qkv_bias=True)).total == 124_439_808
    assert parameter_counts(PRESETS["124M"]).total == 163_009_536  # the book's untied head


def counted_training_flops(cfg: GPTConfig, batch: int) -> int:
    torch.manual_seed(0)
    model = GPTModel(cfg)
    tokens = torch.randint(0, cfg.vocab_size, (batch, cfg.context_length))
    # The reference attention, whose products the counter sees (the CPU's fused kernel is not counted).
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        F.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten()).backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("tied", [False, True])
def test_flops_per_step_match_a_counted_forward_and_backward(tied):
    cfg = GPTConfig(vocab_size=1000, context_length=64, emb_dim=96, n_heads=4, n_layers=3, drop_rate=0.0,
                    tie_embeddings=tied)
    counted = counted_training_flops(cfg, batch=2)
    assert flops_per_token(cfg) * 2 * 64 == pytest.approx(counted, rel=0.05)
    # The attention term matters at long contexts: without it the estimate misses by more than 5%.
    assert 6 * parameter_counts(cfg).matrix * 2 * 64 < 0.95 * counted


def saved_activation_bytes(cfg: GPTConfig, batch: int, precision: str) -> int:
    """What autograd keeps for the backward pass, less the parameters and their autocast copies."""
    torch.manual_seed(0)
    model = GPTModel(cfg)
    tokens = torch.randint(0, cfg.vocab_size, (batch, cfg.context_length))
    saved = {}
    shapes = {tuple(p.shape) for p in model.parameters()} | {tuple(p.shape)[::-1] for p in model.parameters()}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        if not (t.dtype == torch.bfloat16 and tuple(t.shape) in shapes):  # not a weight's autocast copy
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    dtype = torch.bfloat16 if precision == "bf16" else None
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            F.cross_entropy(model(tokens).flatten(0, 1).float(), tokens.flatten())
    return sum(size for ptr, size in saved.items() if ptr not in params)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_activation_bytes_are_what_autograd_saves(precision, dropout):
    cfg = GPTConfig(vocab_size=1000, context_length=48, emb_dim=96, n_heads=4, n_layers=2, drop_rate=dropout)
    predicted = sum(activation_bytes(cfg, 3, precision, math_attention=True).values())
    # The formula leaves out only the token ids and positions (int64) and cross-entropy's scalar weight.
    left_out = 8 * 3 * 48 + 8 * 48 + 4
    assert predicted + left_out == saved_activation_bytes(cfg, 3, precision)


def test_memory_adds_up_and_the_largest_batch_is_the_largest_that_fits():
    cfg = PRESETS["124M"]
    small = memory_per_device(cfg, 1, "bf16")
    params = parameter_counts(cfg).total
    assert (small.weights, small.gradients, small.optimizer) == (4 * params, 4 * params, 8 * params)
    capacity = 24 * 10 ** 9
    memory = memory_per_device(cfg, 4, "bf16", capacity=capacity)
    largest = memory.max_batch_size
    assert memory_per_device(cfg, largest, "bf16").peak <= capacity < memory_per_device(cfg, largest + 1, "bf16").peak
    assert memory.max_batch_size_checkpointed > largest
    # FSDP over 8 devices shards weights, gradients and moments.
    sharded = memory_per_device(cfg, 4, "bf16", distribution="fsdp", devices=8)
    assert sharded.optimizer == 8 * params // 8 and sharded.peak < memory.peak
    # gptrain train keeps a copy of the best weights (for best/) beside the training state.
    kept = memory_per_device(cfg, 4, "bf16", best_copy=True)
    assert kept.best_weights == 4 * params and kept.peak == memory.peak + 4 * params


def test_gpt2_124m_on_8_a100s():
    cfg = PRESETS["124M"].replace(tie_embeddings=True)
    result = estimate(Plan(cfg, tokens=10 * 10 ** 9, batch_size=16, gpu="A100", gpus=8, mfu=0.5,
                           price_per_hour=2.0))
    expected_s = flops_per_token(cfg) * result.tokens / (8 * 312e12 * 0.5)
    assert result.wall_time_s == pytest.approx(expected_s)
    assert result.device_hours == pytest.approx(8 * expected_s / 3600)
    assert result.cost == pytest.approx(2.0 * result.device_hours)
    assert result.energy_kwh == pytest.approx(0.4 * result.device_hours)
    assert result.compute_optimal_tokens == 20 * 124_412_160


def test_gpu_names_from_cuda_devices():
    assert accelerator_of_device("NVIDIA A100-SXM4-40GB").name == "A100-40GB"
    assert accelerator_of_device("NVIDIA A100 80GB PCIe").name == "A100-80GB"
    assert accelerator_of_device("NVIDIA H100 80GB HBM3").name == "H100"
    assert accelerator_of_device("NVIDIA GeForce RTX 4090").name == "RTX-4090"
    assert accelerator_of_device("NVIDIA L4").name == "L4"
    assert accelerator_of_device("Tesla T4").name == "T4"
    assert accelerator_of_device("NVIDIA B200") is None
    assert find_accelerator("rtx 3090").name == "RTX-3090"


def test_estimate_command_prints_a_table_and_json(capsys):
    assert main(["estimate", "--preset", "124M", "--gpu", "H100", "--gpus", "8", "--chinchilla",
                 "--price-per-hour", "3"]) == 0
    table = capsys.readouterr().out
    assert "163,009,536" in table and "wall time" in table and "largest micro-batch" in table
    assert main(["estimate", "--preset", "tiny", "--gpu", "L4", "--tokens", "1e6", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["plan"]["gpu"] == "L4" and result["steps"] == 977  # 1e6 / (8 x 128 tokens), rounded up


@pytest.mark.parametrize("args, message", [
    (["--gpu", "B200", "--tokens", "1e9"], "unknown --gpu 'B200'"),
    (["--mfu", "0", "--tokens", "1e9"], "--mfu is a fraction of the peak in (0, 1]"),
    (["--mfu", "1.5", "--tokens", "1e9"], "--mfu is a fraction of the peak in (0, 1]"),
    (["--tokens", "0"], "--tokens must be at least 1"),
    ([], "give a budget"),
    (["--preset", "1558M", "--gpu", "T4", "--chinchilla"], "does not fit on a T4"),
    (["--epochs", "1"], "--epochs needs --data"),
])
def test_bad_inputs_print_one_line_and_exit_2(args, message, capsys):
    assert main(["estimate", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_run_states_its_plan_and_reports_its_cost_and_flops(tmp_path, story_page):
    from gptrain.training.config import TrainConfig
    from gptrain.reporting.runs import read_run, summarize
    from gptrain.training.loop import train

    lines = []
    cfg = TrainConfig(data=str(story_page), out=str(tmp_path / "run"), preset="tiny", context_length=32, batch_size=4,
                      max_steps=6, eval_freq=5, eval_iter=1, device="cpu", sample_tokens=0, precision="fp32",
                      price_per_hour=3.6)
    result = train(cfg, echo=lines.append)
    per_token = flops_per_token(cfg.model_config())
    tokens = 6 * 4 * 32
    assert f"Plan: {tokens:,} tokens, {tokens * per_token:.3g} FLOPs" in "\n".join(lines)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    plan = next(r for r in records if r["event"] == "plan")
    assert (plan["tokens"], plan["flops_per_token"], plan["price_per_hour"]) == (tokens, per_token, 3.6)
    end = next(r for r in records if r["event"] == "end")
    assert end["cost"] == pytest.approx(end["wall_time_s"] / 3600 * 3.6, rel=1e-3)
    assert f"cost {end['cost']:,.2f}" in lines[-1]
    summary = summarize(read_run(tmp_path / "run"))
    assert summary["cost"] == end["cost"]
    assert summary["achieved_flops_per_s"] == pytest.approx(summary["median_tokens_per_s"] * per_token)
    assert 0 < summary["median_mfu"] <= 1  # against this CPU's measured matmul rate
    assert "achieved FLOP/s" in (tmp_path / "run" / "report.html").read_text()
    assert result["steps"] == 6


def test_the_clock_predicts_from_the_steps_after_the_first():
    from gptrain.training.clock import RunClock

    clock = RunClock(total_steps=10)
    before_first = time.perf_counter()
    assert clock.remaining(1) is None  # the warm-up step: nothing measured yet
    after_first = time.perf_counter()
    time.sleep(0.01)
    before_third = time.perf_counter()
    remaining = clock.remaining(3)
    after_third = time.perf_counter()
    # 2 steps measured, 7 to go: whatever the machine's speed, the time the clock saw lies between these.
    assert (before_third - after_first) / 2 * 7 <= remaining <= (after_third - before_first) / 2 * 7
    assert clock.remaining(10) == 0


def test_price_per_hour_must_be_a_price():
    from gptrain.training.config import TrainConfig
    from gptrain.core.errors import GptrainError

    with pytest.raises(GptrainError, match="--price-per-hour must be a non-negative number"):
        TrainConfig(price_per_hour=-1.0)


def test_measure_times_real_steps_on_this_machine(tiny_cfg):
    plan = Plan(tiny_cfg, tokens=100_000, batch_size=4, gpu="cpu", precision="fp32", eval_freq=10, eval_iter=1)
    result = estimate(plan, measure=True, measure_seconds=0.5)
    assert result.throughput_source == "measured here" and 0 < result.mfu <= 1
    measured = result.measured
    training_s = result.tokens / measured["tokens_per_s"]
    evaluations_s = 79 * 2 * 1 * 4 * 32 / measured["eval_tokens_per_s"]  # ceil(782 steps / 10) evaluations
    assert result.steps == 782
    # Plus the start-up a run pays: this process's age and building the model.
    assert result.wall_time_s > training_s + evaluations_s + measured["build_s"]
    assert result.memory["overhead"] > 0  # the CPU runtime's own memory


def test_measure_needs_the_gpu_it_measures(tiny_cfg):
    from gptrain.core.errors import GptrainError

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(GptrainError, match="--measure runs steps on this machine, which has no H100"):
        estimate(Plan(tiny_cfg, tokens=1000, gpu="H100"), measure=True)


def test_the_model_comes_from_a_checkpoint_or_a_hugging_face_folder(tmp_path, tiny_cfg, capsys):
    from gptrain.store.checkpoint import save_checkpoint

    save_checkpoint(GPTModel(tiny_cfg), tmp_path / "ckpt")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 64, "n_layer": 3, "n_head": 4,
                                                "n_positions": 256, "vocab_size": 50257}))
    for source, cfg in [(tmp_path / "ckpt", tiny_cfg),
                        (hf, GPTConfig(context_length=256, emb_dim=64, n_heads=4, n_layers=3, qkv_bias=True,
                                       tie_embeddings=True))]:
        assert main(["estimate", "--checkpoint", str(source), "--tokens", "1e6", "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["parameters"]["total"] == parameter_counts(cfg).total
        assert result["plan"]["model"]["context_length"] == cfg.context_length
