"""``gptrain estimate``: its flags to a checked plan (:mod:`gptrain.planning.plan`), and the plan's table."""

from __future__ import annotations

import json
import math
from pathlib import Path

from gptrain.core.accelerators import find_accelerator
from gptrain.core.errors import GptrainError
from gptrain.core.formatting import duration, human
from gptrain.core.runtime import planned_precision
from gptrain.data.splits import data_tokenizer
from gptrain.interop.hf_config import config_from_hf
from gptrain.model.config import GPTConfig, get_preset
from gptrain.model.counts import parameter_counts
from gptrain.planning.plan import CHINCHILLA_TOKENS_PER_PARAM, Estimate, Plan, check_fits, estimate
from gptrain.interop.sources import resolve_shape
from gptrain.training.config import DEFAULT_EPOCHS, TrainConfig, read_config_file
from gptrain.training.transfer import init_config
from gptrain.training.run import grad_accum_for
from gptrain.training.step import load_windows


def format_estimate(result: Estimate) -> str:
    plan, params, flops, memory = result.plan, result.parameters, result.flops, result.memory
    cfg = plan["model"]
    hardware = f"{plan['gpus']} x {plan['gpu']}" if plan["gpu"] != "cpu" else "this machine's CPU"
    gb = lambda b: f"{b / 1e9:.2f} GB"  # noqa: E731
    head = "tied to the token embedding" if params["tied"] else "separate"
    rows = [
        ("model", f"{cfg['n_layers']} layers, width {cfg['emb_dim']}, {cfg['n_heads']} heads, "
                  f"context {cfg['context_length']}, vocabulary {cfg['vocab_size']:,}"),
        ("parameters", f"{params['total']:,} (output head {head})"),
        ("  without embeddings", f"{params['non_embedding']:,}"),
        ("  in matrix products", f"{params['matrix']:,}"),
        ("plan", f"{plan['batch_size']} x {cfg['context_length']} tokens per micro-batch, {plan['grad_accum']} "
                 f"micro-batch(es), {plan['gpus']} device(s), {plan['distribution']}: "
                 f"{plan['tokens_per_step']:,} tokens per step"),
        ("budget", f"{result.tokens:,} tokens ({plan['budget']}) in {result.steps:,} steps"),
        ("compute-optimal", f"{result.compute_optimal_tokens:,} tokens (20 per parameter); the budget is "
                            f"{result.budget_vs_compute_optimal:.3g}x that"),
        ("FLOPs per token", f"{human(flops['per_token'])} (6N alone: {human(flops['six_n'])})"),
        ("FLOPs per step", human(flops["per_step"])),
        ("FLOPs in total", f"{flops['total']:.3g}"),
        ("hardware", f"{hardware}, {plan['precision']} peak {human(result.peak_flops_per_device, 'FLOP/s')} each"),
        ("utilisation (MFU)", f"{result.mfu:.1%} ({result.throughput_source})"),
        ("throughput", f"{result.tokens_per_s:,.0f} tokens/s"),
        ("wall time", duration(result.wall_time_s)),
        ("device-hours", f"{result.device_hours:,.1f}" if result.device_hours >= 10 else f"{result.device_hours:.3g}"),
        ("cost", "-" if result.cost is None else f"{result.cost:,.2f} at {plan['price_per_hour']:g} per device-hour"),
        ("energy", f"{result.energy_kwh:,.3g} kWh"),
        ("memory per device", ""),
        ("  weights (fp32)", gb(memory["weights"])),
        ("  gradients (fp32)", gb(memory["gradients"])),
        ("  AdamW moments (fp32)", gb(memory["optimizer"])),
        ("  low-precision weights", gb(memory["low_precision_weights"])),
        ("  activations", f"{gb(memory['activations'])} per micro-batch; "
                          f"{gb(memory['activations_checkpointed'])} with activation checkpointing"),
        ("  runtime overhead", gb(memory["overhead"])),
        *([("  freed memory the process keeps", gb(memory["retained_heap"]))] if memory["retained_heap"] else []),
        *([("  best weights kept for best/", gb(memory["best_weights"]))] if memory["best_weights"] else []),
        ("  peak", f"{gb(memory['peak'])}; {gb(memory['peak_checkpointed'])} with activation checkpointing"),
    ]
    if memory["capacity"] is not None:
        rows += [("  fits", f"{'yes' if memory['fits'] else 'no'} ({gb(memory['capacity'])} per device)"),
                 ("  largest micro-batch", f"{memory['max_batch_size']}; "
                                           f"{memory['max_batch_size_checkpointed']} with activation checkpointing")]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}".rstrip() for label, value in rows)


def model_config_from(source: str, n_heads: int | None = None) -> GPTConfig:
    """The shape of any model reference (see :func:`gptrain.interop.sources.resolve_shape`); a Hugging Face
    folder, or its config.json alone, needs no weights."""
    path = Path(source).expanduser()
    config_file = path / "config.json" if path.is_dir() else path
    try:
        values = json.loads(config_file.read_text(encoding="utf-8")) if config_file.name == "config.json" else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        values = {}
    if isinstance(values, dict) and "model_type" in values:
        return config_from_hf(values, config_file)
    return resolve_shape(source, n_heads=n_heads)


def recipe_model(recipe: TrainConfig) -> GPTConfig:
    """The shape of the model a gptrain train config trains: its own, or its --init SOURCE's."""
    return recipe.model_config(data_tokenizer(recipe.data)) if recipe.init is None else init_config(recipe, model_config_from(recipe.init))


def recipe_budget(recipe: TrainConfig, cfg: GPTConfig, tokens_per_step: int) -> tuple[int, str]:
    """The tokens a gptrain train config trains on, as gptrain train counts them: the first of its budgets
    to run out, in whole steps."""
    limits = []
    if recipe.max_tokens is not None:
        limits.append((math.ceil(recipe.max_tokens / tokens_per_step) * tokens_per_step, "its max_tokens"))
    if recipe.max_steps is not None:
        limits.append((recipe.max_steps * tokens_per_step, f"its {recipe.max_steps:,} steps"))
    if recipe.epochs is not None or not limits:
        epochs = recipe.epochs or DEFAULT_EPOCHS
        limits.append((tokens_of_epochs(cfg, recipe.data, epochs, tokens_per_step), f"{epochs} epoch(s) of {recipe.data}"))
    return min(limits)


def tokens_of_epochs(cfg: GPTConfig, data: str, epochs: int, tokens_per_step: int) -> int:
    """Tokens in ``epochs`` passes over the training split of ``data``, counted as gptrain train does:
    whole steps of windows at the model's context."""

    train_windows, _ = load_windows(TrainConfig(data=data), cfg.context_length)
    sequences_per_step = tokens_per_step // cfg.context_length
    steps_per_epoch = len(train_windows) // sequences_per_step
    if steps_per_epoch == 0:
        raise GptrainError(f"{data} has {len(train_windows)} training window(s), fewer than one step's "
                           f"{sequences_per_step}: use a smaller batch or context, or more text")
    return epochs * steps_per_epoch * tokens_per_step


def estimate_from_args(args) -> Estimate:
    """``gptrain estimate``'s flags to a checked plan, estimated (and refused if it cannot fit)."""

    recipe = TrainConfig.from_dict(read_config_file(args.config), source=args.config) if args.config else None
    if recipe is not None:
        cfg = recipe_model(recipe)
        # The recipe's settings, where no flag names them.
        for name in ("batch_size", "precision", "price_per_hour", "eval_iter"):
            if getattr(args, name) is None:
                setattr(args, name, getattr(recipe, name))
        if args.grad_accum is None and args.global_batch_tokens is None:
            if recipe.global_batch_tokens is None:
                args.grad_accum = recipe.grad_accum
            args.global_batch_tokens = recipe.global_batch_tokens
        args.eval_freq = args.eval_freq if args.eval_freq is not None else (recipe.eval_freq or None)
        args.distribution = args.distribution or ("fsdp" if recipe.fsdp else None)
    else:
        cfg = model_config_from(args.model, args.n_heads) if args.model else get_preset(args.preset or "124M")
    for name, default in (("batch_size", 8), ("eval_iter", 5), ("precision", "auto")):
        if getattr(args, name) is None:
            setattr(args, name, default)
    overrides = {"emb_dim": args.emb_dim, "n_layers": args.n_layers, "n_heads": args.n_heads,
                 "vocab_size": args.vocab_size, "context_length": args.context_length, "drop_rate": args.dropout,
                 "tie_embeddings": args.tie_embeddings, "qkv_bias": args.qkv_bias}
    cfg = cfg.replace(**{k: v for k, v in overrides.items() if v is not None})
    on_cpu = args.gpu.lower() == "cpu"
    accelerator = None if on_cpu else find_accelerator(args.gpu)
    precision = planned_precision(accelerator) if args.precision == "auto" else args.precision
    if args.batch_size < 1 or args.gpus < 1:
        raise GptrainError("--batch-size and --gpus must be positive integers")
    grad_accum = args.grad_accum or 1
    if args.global_batch_tokens is not None:
        if args.grad_accum is not None:
            raise GptrainError("give --grad-accum or --global-batch-tokens, not both")
        grad_accum = grad_accum_for(args.global_batch_tokens, args.batch_size, cfg.context_length, args.gpus)
    if args.grad_accum is not None and args.grad_accum < 1:
        raise GptrainError(f"--grad-accum must be a positive integer, not {args.grad_accum}")
    tokens_per_step = args.batch_size * grad_accum * args.gpus * cfg.context_length
    if args.chinchilla:
        tokens, budget = CHINCHILLA_TOKENS_PER_PARAM * parameter_counts(cfg).total, "compute-optimal, 20 per parameter"
    elif args.epochs is not None:
        if args.data is None or args.epochs < 1:
            raise GptrainError("--epochs needs --data (the corpus to count) and a positive number of epochs")
        tokens = tokens_of_epochs(cfg, args.data, args.epochs, tokens_per_step)
        budget = f"{args.epochs} epoch(s) of {args.data}"
    elif args.tokens is not None:
        if not (math.isfinite(args.tokens) and args.tokens >= 1):
            raise GptrainError(f"--tokens must be at least 1, not {args.tokens:g}: give the run's training tokens")
        tokens, budget = int(args.tokens), "--tokens"
    elif recipe is not None:
        tokens, budget = recipe_budget(recipe, cfg, tokens_per_step)
        budget += f" (from {args.config})"
    else:
        raise GptrainError("give a budget: --tokens N, --epochs N with --data, or --chinchilla (or a --config)")
    if args.measure and args.mfu is not None:
        raise GptrainError("give --mfu or --measure, not both")
    plan = Plan(model=cfg, tokens=tokens, batch_size=args.batch_size, grad_accum=grad_accum, gpu=args.gpu,
                gpus=args.gpus, precision=precision, mfu=args.mfu, price_per_hour=args.price_per_hour,
                watts=args.watts, distribution=args.distribution or ("ddp" if args.gpus > 1 else "single"),
                eval_freq=args.eval_freq, eval_iter=args.eval_iter, budget=budget)
    result = estimate(plan, measure=args.measure)
    check_fits(result)
    return result
