"""A run of ``gptrain train`` set up: its model, optimizer, data, device and process group.

``train(cfg)`` is a few plain functions over two objects: :class:`Run` (what does not change while
training: model, optimizer, data, device, process group) and ``state`` (what does: step, data
position, tokens seen, losses). A checkpoint is ``state`` plus the weights and optimizer, so a
resumed run continues bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from gptrain.core.errors import GptrainError
from gptrain.core.launch import is_main_process
from gptrain.core.runtime import (
    PAD_VOCAB_MULTIPLE,
    Processes,
    autocast_context,
    pads_vocab,
    prepare_device,
    resolve_precision,
    start_processes,
)
from gptrain.core.version import package_version
from gptrain.data.corpus import TokenWindows
from gptrain.data.instructions import InstructionExamples
from gptrain.data.splits import data_tokenizer
from gptrain.data.tokenizer import get_tokenizer
from gptrain.data.trained_tokenizer import Tokenizer
from gptrain.model.counts import parameter_counts
from gptrain.model.gpt import GPTModel, meta_model
from gptrain.model.lora import add_lora
from gptrain.model.vocab_padding import pad_vocab
from gptrain.reporting.metrics import MetricsLog
from gptrain.store.checkpoint import (
    load_state_into,
    save_checkpoint,
    weights_state_dict,
)
from gptrain.training.clock import TimeSplit
from gptrain.training.config import DEFAULT_EPOCHS, TrainConfig
from gptrain.training.instruct import load_instructions, read_instructions
from gptrain.training.optim import make_optimizer
from gptrain.training.pace import Pace
from gptrain.training.parallel import check_launch, checkpoint_activations, shard_model
from gptrain.training.ranks import Agreement, RankRecord, node_name, ranks_agree, shared_store_warning
from gptrain.training.resume import data_fingerprint
from gptrain.training.step import load_windows, rank_offsets
from gptrain.training.transfer import load_init_model


class PendingBest:
    """The weights with the lowest validation loss so far, held in memory until the next checkpoint.

    A short run improves at most evaluations, and writing best/ each time wrote and fsynced the
    whole model (650 MB for 124M) every few steps. best/ is now written with each resumable
    checkpoint and at the end, so it never gets ahead of the checkpoint a resume starts from.
    """

    def __init__(self):
        self.cfg = None
        self.weights: dict[str, torch.Tensor] | None = None  # one CPU copy, reused
        self.training_state: dict[str, Any] | None = None

    def keep(self, model: GPTModel | None, training_state: dict[str, Any]) -> None:
        """``model`` is what a checkpoint saves (``model_to_save``): None on processes that do not write."""
        if model is None:
            return
        state = weights_state_dict(model)  # LoRA merged, a tied head left out
        if self.weights is None:
            self.weights = {name: torch.empty_like(tensor, device="cpu") for name, tensor in state.items()}
        for name, tensor in state.items():
            self.weights[name].copy_(tensor)
        self.cfg, self.training_state = model.cfg, training_state

    def write(self, path: Path, train_config: dict[str, Any], template: str | None, tokenizer: Tokenizer,
              current: tuple[int, Path] | None = None) -> None:
        """Write best/ if it changed; ``current``, (step, checkpoint) just saved, lends its weights
        file when the best weights are that step's."""
        if self.training_state is None:
            return
        plain = meta_model(self.cfg)
        same_step = current is not None and current[0] == self.training_state["step"]
        if not same_step:
            load_state_into(plain, dict(self.weights), "the best weights")
        save_checkpoint(plain, path, train_config=train_config, training_state=self.training_state,
                        template=template, tokenizer=tokenizer, weights_from=current[1] if same_step else None)
        self.training_state = None


@dataclass
class Run:
    cfg: TrainConfig
    procs: Processes
    device: torch.device
    model: nn.Module  # what is trained: possibly compiled and wrapped in DistributedDataParallel
    raw_model: GPTModel  # the plain model: evaluated, sampled and saved
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    train_windows: TokenWindows | InstructionExamples
    val_windows: TokenWindows | InstructionExamples
    tokenizer: Tokenizer  # the model's: --init's, else the prepared data's, else GPT-2's; saved with each checkpoint
    out: Path
    steps_per_epoch: int
    total_steps: int
    echo: Callable[[str], None]
    log: MetricsLog | None = None
    data_sha256: str | None = None  # of the train and val tokens: a resumed run must see the same
    best: PendingBest = dataclasses.field(default_factory=PendingBest)
    pace: Pace | None = None  # speed and ETA on the evaluation lines, when no progress bar shows them
    test_records: list[Any] | None = None  # an instruction run's held-out records, written to RUN/test.jsonl
    timing: TimeSplit = dataclasses.field(default_factory=TimeSplit)

    @property
    def global_batch(self) -> int:
        return self.cfg.batch_size * self.cfg.grad_accum * self.procs.world_size

    @property
    def tokens_per_step(self) -> int:
        """Tokens of a step's sequences; instruction examples vary in length, and count at their mean."""
        if isinstance(self.train_windows, InstructionExamples):
            return self.global_batch * self.train_windows.mean_length
        return self.global_batch * self.raw_model.cfg.context_length

    def autocast(self):
        return autocast_context(self.device.type, self.cfg.precision)


def grad_accum_for(global_batch_tokens: int, batch_size: int, context_length: int, processes: int) -> int:
    """The micro-batches per step that make up ``--global-batch-tokens``: for a run and for its estimate."""
    per_micro_step = batch_size * context_length * processes
    if global_batch_tokens < 1 or global_batch_tokens % per_micro_step:
        raise GptrainError(
            f"--global-batch-tokens {global_batch_tokens:,} is not a multiple of batch size x context x "
            f"processes = {batch_size} x {context_length} x {processes} = {per_micro_step:,}: change one of them"
        )
    return global_batch_tokens // per_micro_step


def plan_steps(cfg: TrainConfig, steps_per_epoch: int, tokens_per_step: int) -> int:
    """Optimizer steps in the budget: the first of --epochs, --max-steps, --max-tokens to run out."""
    limits = []
    if cfg.epochs is not None:
        limits.append(cfg.epochs * steps_per_epoch)
    if cfg.max_steps is not None:
        limits.append(cfg.max_steps)
    if cfg.max_tokens is not None:
        limits.append(math.ceil(cfg.max_tokens / tokens_per_step))
    return min(limits) if limits else DEFAULT_EPOCHS * steps_per_epoch


@dataclass
class Setup:
    """A rank's run before its model exists: settings resolved, data read, every rank agreeing."""

    cfg: TrainConfig
    procs: Processes
    device: torch.device
    init_model: GPTModel | None
    train_windows: TokenWindows
    val_windows: TokenWindows
    data_sha256: str
    steps_per_epoch: int
    ranks: list[RankRecord]  # every rank's record, in rank order (for --dry-run)
    test_records: list[dict] | None = None  # an instruction run's held-out records
    tokenizer: Tokenizer | None = None  # the model's: --init's, else the prepared data's, else GPT-2's


def rank_view(cfg: TrainConfig, procs: Processes, device: torch.device, train_windows: TokenWindows) -> str:
    """One line: where this rank runs and which sequences of each global batch it trains on."""
    b = cfg.batch_size
    global_batch = b * cfg.grad_accum * procs.world_size
    shard = ", ".join(f"{o}-{o + b - 1}" for o in rank_offsets(procs.rank, procs.world_size, b, cfg.grad_accum))
    return (f"rank {procs.rank} of {procs.world_size}: node {node_name()}, local rank {procs.local_rank}, {device}; "
            f"sequences {shard} of each global batch of {global_batch} ({len(train_windows):,} training windows); "
            f"per-rank batch {b} x {cfg.grad_accum} micro-batch(es)")


def _set_up(cfg: TrainConfig, procs: Processes, device: torch.device, echo: Callable[[str], None],
            agreement: Agreement) -> Setup:
    if cfg.fsdp:
        check_launch(procs.world_size, device)
    prepare_device(device, sharded=cfg.fsdp)
    init_model = None
    # Before --init's model loads, which can take seconds, so that a bad --data is reported at once.
    records = None
    if cfg.finetune is not None:
        cfg, records = read_instructions(cfg)
    tokenizer = data_tokenizer(cfg.data) or get_tokenizer()
    if cfg.init is not None:  # transfer learning: SOURCE's architecture, weights and tokenizer
        init_model, init_sha256, tokenizer = load_init_model(cfg, device)
        cfg = dataclasses.replace(cfg, init_sha256=init_sha256)
    model_cfg = cfg.model_config(tokenizer) if init_model is None else init_model.cfg
    cfg = cfg.resolved_shape(model_cfg)
    echo(f"Model: {model_cfg.describe()}; {parameter_counts(model_cfg).total:,} parameters")
    # Settings are saved resolved: the precision chosen, the grad accum that a token budget stands for.
    cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, device),
                              pad_vocab=pads_vocab(device) if cfg.pad_vocab is None else cfg.pad_vocab)
    if cfg.global_batch_tokens is not None:
        grad_accum = grad_accum_for(cfg.global_batch_tokens, cfg.batch_size, model_cfg.context_length,
                                    procs.world_size)
        cfg = dataclasses.replace(cfg, grad_accum=grad_accum, global_batch_tokens=None)
    test_records = None
    if records is None:
        train_windows, val_windows = load_windows(cfg, model_cfg.context_length, tokenizer)
    else:
        train_windows, val_windows = load_instructions(cfg, records, model_cfg.context_length, tokenizer, echo)
        test_records = records.test
    global_batch = cfg.batch_size * cfg.grad_accum * procs.world_size
    steps_per_epoch = len(train_windows) // global_batch
    if steps_per_epoch == 0:
        raise GptrainError(
            f"the training split has {len(train_windows)} {'window' if cfg.finetune is None else 'record'}(s), fewer "
            f"than one batch of {global_batch} (batch size {cfg.batch_size} x grad accum {cfg.grad_accum} x "
            f"{procs.world_size} process(es)): use a smaller --batch-size"
            + (" or --context-length, or more text" if cfg.finetune is None else ", or more records")
        )
    data_sha256 = data_fingerprint(train_windows.tokens, val_windows.tokens)
    agreement.settle(cfg.to_dict(), data_sha256, rank_view(cfg, procs, device, train_windows))
    return Setup(cfg, procs, device, init_model, train_windows, val_windows, data_sha256, steps_per_epoch, [],
                 test_records, tokenizer)


def set_up(cfg: TrainConfig, echo: Callable[[str], None]) -> Setup:
    """Join the process group, resolve the settings and read the data; every rank checks that all the
    others did the same before any of them goes on (:func:`ranks_agree`)."""
    procs, device = start_processes(cfg.device)
    if warning := shared_store_warning():
        echo(warning)
    with ranks_agree(procs) as agreement:
        setup = _set_up(cfg, procs, device, echo, agreement)
    setup.ranks = agreement.records
    return setup


def build_run(cfg: TrainConfig, echo: Callable[[str], None]) -> Run:
    setup = set_up(cfg, echo)
    cfg, procs, device, init_model = setup.cfg, setup.procs, setup.device, setup.init_model
    model_cfg = cfg.model_config(setup.tokenizer) if init_model is None else init_model.cfg
    # Seeded right before the model, as the book does: same seed, same initial weights as its GPTModel.
    torch.manual_seed(cfg.seed)
    raw_model = GPTModel(model_cfg).to(device) if init_model is None else init_model
    if cfg.pad_vocab:
        pad_vocab(raw_model, PAD_VOCAB_MULTIPLE)
    if cfg.lora_rank is not None:
        add_lora(raw_model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
    if cfg.activation_checkpointing:
        checkpoint_activations(raw_model)
    if cfg.fsdp:
        shard_model(raw_model, cfg.precision)
    if procs.rank:
        torch.manual_seed(cfg.seed + procs.rank)  # different dropout masks on each process
    model: nn.Module = torch.compile(raw_model) if cfg.compile else raw_model
    if procs.distributed and not cfg.fsdp:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(raw_model, cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    run = Run(cfg, procs, device, model, raw_model, optimizer, scaler, setup.train_windows, setup.val_windows,
              setup.tokenizer, Path(cfg.out), setup.steps_per_epoch, 0, echo, test_records=setup.test_records,
              data_sha256=setup.data_sha256)
    run.total_steps = plan_steps(cfg, setup.steps_per_epoch, run.tokens_per_step)
    return run


def dry_run(cfg: TrainConfig, echo: Callable[[str], None]) -> list[str]:
    """Set up as ``train`` would, without the model: rank 0 prints every rank's view; returns the views."""
    echo = echo if is_main_process() else (lambda line: None)
    setup = set_up(cfg, echo)
    cfg, procs = setup.cfg, setup.procs
    nodes = len({record.node for record in setup.ranks})
    global_batch = cfg.batch_size * cfg.grad_accum * procs.world_size
    echo(f"Dry run: {procs.world_size} process(es) on {nodes} node(s) agree on gptrain {package_version()}, "
         f"the settings and the data; global batch {global_batch} sequences, {setup.steps_per_epoch} steps per "
         "epoch; nothing trained")
    views = [record.view for record in setup.ranks]
    for view in views:
        echo(f"  {view}")
    if procs.distributed:
        dist.destroy_process_group()
    return views


def new_state() -> dict[str, Any]:
    return {"step": 0, "epoch": 0, "step_in_epoch": 0, "tokens_seen": 0, "best_val_loss": math.inf,
            "best_step": None, "evals_since_best": 0, "overfitting_warned": False,
            "train_losses": [], "val_losses": [], "track_tokens_seen": []}
