"""Models larger than one device: FSDP2 sharding, activation checkpointing, sharded checkpoints.

``shard_model`` splits every parameter of a :class:`GPTModel` across the processes of a torchrun
group with PyTorch's FSDP2 (``fully_shard`` on each transformer block, then on the root): each
process keeps 1/N of the weights, gradients and AdamW states, and a block's full weights exist
only while it computes. ``checkpoint_activations`` makes each block recompute its activations in
backward instead of keeping them. Under FSDP a checkpoint holds the same ``model.safetensors`` as
any other (gathered one parameter at a time into rank 0's CPU memory) and the optimizer as
PyTorch's distributed checkpoint, one file per process, never gathered.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from gptrain.core.errors import GptrainError
from gptrain.core.runtime import AUTOCAST_DTYPES
from gptrain.model.gpt import GPTModel, meta_model
from gptrain.store.checkpoint import OPTIMIZER_DIR, WEIGHTS_FILE, load_state_into, read_weights

# FSDP, DTensor and the distributed checkpoint are imported where they are used: importing them
# takes 1.2 s on a 2-core CPU, which every gptrain command would pay without using them.


# --- Activation checkpointing ---

def _recompute_in_backward(forward, *args, **kwargs):
    if not torch.is_grad_enabled():  # evaluation and generation keep nothing for backward anyway
        return forward(*args, **kwargs)
    # Non-reentrant checkpointing replays the saved RNG state, so dropout draws the same masks again.
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def checkpoint_activations(model: GPTModel) -> GPTModel:
    """Keep only each block's input in forward and recompute the rest in backward.

    Activation memory falls from every intermediate of every block to one (batch, tokens,
    emb_dim) tensor per block, at the cost of a second forward pass through the blocks (about a
    third more compute). The module tree, parameter names and state dict stay as they are.
    """
    for block in model.trf_blocks:
        block.forward = functools.partial(_recompute_in_backward, block.forward)
    return model


# --- Sharding ---

def shard_model(model: GPTModel, precision: str) -> GPTModel:
    """Shard ``model`` in place across the process group with FSDP2; returns it.

    Each block is its own unit, so only one block's full weights are gathered at a time, and
    they are freed again after its forward pass (gathered a second time for backward). Under
    bf16 or fp16 the gathered weights are cast for compute while the shards, and the gradient
    reduction, stay in fp32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # The output head's padded rows (--pad-vocab) are cut off by a read-only slice, the view FSDP warns about.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    dtype = AUTOCAST_DTYPES.get(precision)
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32 if dtype else None)
    for block in model.trf_blocks:
        fully_shard(block, mp_policy=policy, reshard_after_forward=True)
    if not model.cfg.tie_embeddings:
        # The token embedding and the output head (50,257 rows each) are each as large as several
        # blocks: as units of their own they are gathered only while they compute, instead of for
        # the whole forward and backward pass as parts of the root. The head runs last in forward
        # and first in backward, so it keeps its weights in between instead of gathering them twice.
        fully_shard(model.tok_emb, mp_policy=policy, reshard_after_forward=True)
        fully_shard([model.final_norm, model.out_head], mp_policy=policy, reshard_after_forward=False)
    fully_shard(model, mp_policy=policy)
    return model


@contextlib.contextmanager
def accumulate_without_sync(model: nn.Module):
    """Keep this micro-batch's gradients local (no reduce-scatter) until the step's last one."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def local_value(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (such as the gradient norm of sharded gradients); a tensor itself."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


# --- Checkpoints ---

def _without_vocab_padding(model: GPTModel, name: str, tensor: torch.Tensor) -> torch.Tensor:
    if name in ("tok_emb.weight", "out_head.weight"):
        return tensor[:model.cfg.vocab_size]
    return tensor


def gather_weights(model: GPTModel, is_main: bool) -> GPTModel | None:
    """A plain CPU copy of a sharded model on rank 0 (None elsewhere); every process must call it.

    One parameter is gathered at a time, so a device never holds more than its shards plus one
    full tensor; rank 0's CPU memory receives the whole model (6.2 GB for 1558M in fp32).
    """
    state = {}
    for name, param in model.named_parameters():
        full = local_value(param.detach())
        if is_main:
            state[name] = _without_vocab_padding(model, name, full).to("cpu", copy=True)
        del full
    if not is_main:
        return None
    plain = meta_model(model.cfg)
    return load_state_into(plain, state, "the gathered FSDP model")


def load_weights(model: GPTModel, path: Path) -> None:
    """Copy a checkpoint's ``model.safetensors`` into a sharded model in place: each process reads
    the file and keeps its own shard of each tensor, so the optimizer keeps its parameters."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    weights = read_weights(path / WEIGHTS_FILE, "cpu")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name not in weights:
                raise GptrainError(f"{path / WEIGHTS_FILE} lacks {name}: resume from another checkpoint")
            full = weights.pop(name)
            if full.shape[0] < param.shape[0]:  # the output head padded by --pad-vocab
                full = torch.cat([full, full.new_zeros(param.shape[0] - full.shape[0], *full.shape[1:])])
            full = full.to(device=param.device, dtype=param.dtype)
            if isinstance(param, DTensor):
                # Every process holds the same full tensor, so each cuts its own shard without communication.
                full = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
            param.copy_(full)


def reshard(model: nn.Module) -> None:
    """Put every FSDP unit of ``model`` back in its shards, as a backward pass leaves them.

    A forward pass without gradients (evaluation, a sample, task scores) leaves the root's
    parameters, and the output head's, gathered: only backward would reshard them. The optimizer
    holds the sharded parameters, so its distributed checkpoint needs those registered again.
    """
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def staging_dir(path: Path) -> Path:
    """Where the processes write the optimizer shards of the checkpoint ``path`` before it is complete."""
    return path.with_name(f".{path.name}.optimizer-partial")


def save_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path, is_main: bool) -> Path:
    """Write the optimizer with torch.distributed.checkpoint: each process writes its own shard of
    the AdamW states; none is gathered. Returns the folder, to be moved into the checkpoint."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    folder = staging_dir(path)
    if is_main:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    dist.barrier()
    reshard(model)
    dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=folder)
    return folder


def load_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Read the optimizer shards of a checkpoint written under FSDP into ``optimizer``.

    Works for any number of processes, with or without FSDP: the distributed checkpoint
    re-shards the states to the current layout.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    folder = path / OPTIMIZER_DIR
    if not (folder / ".metadata").is_file():
        raise GptrainError(f"{folder} is incomplete (no .metadata): resume from another checkpoint")
    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
    single_process = not dist.is_initialized()
    with warnings.catch_warnings():
        # One process reading shards that several wrote is what we mean; torch warns about it anyway.
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=folder, no_dist=single_process)
    set_optimizer_state_dict(model, optimizer, state["optimizer"])


def check_launch(world_size: int, device: torch.device) -> None:
    if device.type not in ("cpu", "cuda"):
        raise GptrainError(f"--fsdp runs on CPUs (gloo) and CUDA GPUs (nccl), not on {device.type}: use --device cpu")
    if world_size < 2:
        raise GptrainError(
            "--fsdp shards the model across processes but this is a single process: launch it with "
            "torchrun --nproc_per_node=N (N >= 2), or train without --fsdp (--no-fsdp to resume such a run)"
        )

