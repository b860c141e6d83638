"""Checkpoints: a directory that rebuilds its model with no other input.

    model.safetensors    the unwrapped model's weights (a tied output head is stored once)
    config.json          the model config, the run's settings, the tokenizer, step and tokens seen;
                         a classifier's class labels (in the order of its head's outputs) and the
                         length its inputs are padded to
    tokenizer.json       a trained tokenizer (gptrain tokenizer train) the model reads text with; GPT-2's
                         ships with gptrain and is only named in config.json
    training_state.pt    optional: optimizer and everything else needed to resume training
    optimizer/           instead of the optimizer in training_state.pt, under FSDP: its shards as
                         written by torch.distributed.checkpoint (see gptrain.training.parallel)
    manifest.json        size and sha256 of every other file, written last (see gptrain.store.integrity)

A checkpoint is written under a temporary name, fsynced, then renamed into place, so a
reader sees either the previous complete checkpoint or the new complete one.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch
from torch import nn
from torch.utils.serialization import config as serialization_config

from gptrain.core.errors import GptrainError
from gptrain.core.files import staged_dir, write_json_atomic
from gptrain.core.tensorfile import save_tensors
from gptrain.data.tokenizer import get_tokenizer
from gptrain.data.trained_tokenizer import (
    TOKENIZER_FILE,
    Tokenizer,
    TrainedTokenizer,
    describe_tokenizer,
    same_tokenizer,
    tokenizer_from_bytes,
    tokenizer_identity,
)
from gptrain.model.classifier import add_class_head
from gptrain.model.config import GPTConfig
from gptrain.model.gpt import GPTModel, meta_model, unwrap_model
from gptrain.model.lora import ADAPTER_FILE, has_lora, merged_state_dict, save_adapter
from gptrain.store.integrity import file_record, read_manifest, read_verified, write_manifest
from gptrain.store.layout import (
    CONFIG_FILE,
    FINAL_DIR,
    FORMAT,
    FORMAT_VERSION,
    OPTIMIZER_DIR,
    STATE_FILE,
    WEIGHTS_FILE,
)


def weights_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unwrapped model's tensors, without the output head when it is tied to the embedding (and
    with LoRA adapters merged into their weights)."""
    model = unwrap_model(model)
    state = {name: t.detach().contiguous() for name, t in merged_state_dict(model).items()}
    if model.cfg.tie_embeddings:
        state.pop("out_head.weight", None)
    return state


def save_checkpoint(model: nn.Module, path: str | Path, optimizer: torch.optim.Optimizer | None = None, *,
                    train_config: dict[str, Any] | None = None,
                    training_state: dict[str, Any] | None = None, optimizer_dir: Path | None = None,
                    template: str | None = None, tokenizer: Tokenizer | None = None,
                    weights_from: Path | None = None, classifier: dict[str, Any] | None = None) -> Path:
    """Save ``model`` (and the optimizer and training state, if given) as a checkpoint directory.

    ``optimizer_dir``, a folder of sharded optimizer states, is moved in as ``optimizer/``; ``template``,
    the prompt template an instruction-tuned model was taught with (see gptrain.data.templates), is
    recorded so that later commands format prompts the same way. ``tokenizer`` (GPT-2's by default)
    is recorded, and a trained one saved as ``tokenizer.json``.
    ``weights_from``, a checkpoint known to hold ``model``'s weights, lends its weights file (a hard
    link where the file system allows), so the same bytes are neither written nor hashed again.
    ``classifier``, a classifier's ``{"labels": [...], "max_length": N}`` (its classes in the order of its
    head's outputs and the length its inputs are padded to), so that it is rebuilt with that head and fed
    as it was trained.
    """
    path = Path(path)
    model = unwrap_model(model)
    tokenizer = tokenizer or get_tokenizer()
    try:
        with staged_dir(path) as tmp:
            if isinstance(tokenizer, TrainedTokenizer):
                (tmp / TOKENIZER_FILE).write_bytes(tokenizer.data)
            state = dict(training_state or {})
            config = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "model": model.cfg.to_dict(),
                "tokenizer": tokenizer_identity(tokenizer),
                "train": train_config,
                "step": state.get("step"),
                "tokens_seen": state.get("tokens_seen"),
            }
            if template is not None:
                config["template"] = template
            if classifier is not None:
                config["classifier"] = classifier
            write_json_atomic(tmp / CONFIG_FILE, config)
            if has_lora(model):  # the small file that --resume continues from; the weights are merged
                save_adapter(model, tmp / ADAPTER_FILE)
            if optimizer is not None:
                state["optimizer"] = optimizer.state_dict()
            known = {} if weights_from is None else share_weights(weights_from, tmp)
            # The two large files are written and hashed at once, each on a thread of its own: safetensors,
            # torch.save and hashlib all release the GIL (the lecture run's final/, 650 MB of weights and
            # 1.3 GB of optimizer state: 1.3 s instead of 3.9 s one after the other).
            with ThreadPoolExecutor(2) as pool:
                writing = {}
                if weights_from is None:
                    writing[WEIGHTS_FILE] = pool.submit(written_weights, weights_state_dict(model), tmp / WEIGHTS_FILE)
                if state:
                    writing[STATE_FILE] = pool.submit(written_state, state, tmp / STATE_FILE)
                known |= {name: job.result() for name, job in writing.items()}
            if optimizer_dir is not None:
                os.replace(optimizer_dir, tmp / OPTIMIZER_DIR)
            write_manifest(tmp, known)  # after every other file: it records what the folder holds
    except (OSError, safetensors.SafetensorError, RuntimeError) as exc:
        # A full disk or a refused write reaches us as OSError, or wrapped by safetensors or torch.save.
        if isinstance(exc, RuntimeError) and "writ" not in str(exc).lower():
            raise
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        raise GptrainError(f"cannot write checkpoint {path}: {reason}; the previous one is kept") from None
    return path


def written_weights(tensors: dict[str, torch.Tensor], path: Path) -> dict:
    """Write a checkpoint's weights file; returns its manifest record."""
    save_tensors(tensors, path, metadata={"format": "pt"})
    return file_record(path)


def written_state(state: dict[str, Any], path: Path) -> dict:
    """Write a checkpoint's training state (optimizer included); returns its manifest record."""
    # The manifest's sha256 already guards every byte, and torch.save's own CRC-32 of each record
    # costs as much again: 2 s for the lecture run's 1.3 GB of optimizer state.
    with serialization_config.patch({"save.compute_crc32": False}):
        torch.save(state, path)
    return file_record(path)


def share_weights(source: Path, folder: Path) -> dict[str, dict]:
    """Hard-link (else copy) ``source``'s weights file into ``folder``; returns its manifest record.

    Checkpoints are replaced whole by a rename, never rewritten in place, so a linked file cannot
    change under either checkpoint.
    """
    try:
        os.link(source / WEIGHTS_FILE, folder / WEIGHTS_FILE)
    except OSError:
        shutil.copyfile(source / WEIGHTS_FILE, folder / WEIGHTS_FILE)
    record = (read_manifest(source) or {}).get(WEIGHTS_FILE)
    return {} if record is None else {WEIGHTS_FILE: record}


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (meaning its ``final/`` checkpoint)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise GptrainError(f"checkpoint {path} does not exist: give a checkpoint or run directory")
    if path.is_dir() and not (path / WEIGHTS_FILE).exists() and (path / FINAL_DIR / CONFIG_FILE).exists():
        path = path / FINAL_DIR  # a run directory
    if not path.is_dir():
        raise GptrainError(f"{path} is not a checkpoint directory: give the directory that holds {WEIGHTS_FILE}")
    if not (path / CONFIG_FILE).is_file():
        raise GptrainError(f"{path} is not a gptrain checkpoint (no {CONFIG_FILE}): give a checkpoint or run directory")
    if not (path / WEIGHTS_FILE).is_file():
        raise GptrainError(f"checkpoint {path} has no {WEIGHTS_FILE}: it is incomplete, use another checkpoint")
    return path


def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint (after :func:`resolve_checkpoint`)."""
    path = resolve_checkpoint(path)
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GptrainError(f"{path / CONFIG_FILE} is damaged ({exc}): use another checkpoint") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT or "model" not in config:
        raise GptrainError(f"{path / CONFIG_FILE} is not a gptrain checkpoint config: use another checkpoint")
    return config


def checkpoint_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer a checkpoint's model reads text with: GPT-2's, or the trained one it holds."""
    path = resolve_checkpoint(path)
    recorded = read_checkpoint_config(path).get("tokenizer") or {}
    if same_tokenizer(recorded, get_tokenizer()):
        return get_tokenizer()
    file = path / TOKENIZER_FILE
    if not file.is_file():
        raise GptrainError(f"{path} was trained with the tokenizer {describe_tokenizer(recorded)} but holds no "
                           f"{TOKENIZER_FILE}: copy that tokenizer's {TOKENIZER_FILE} into it")
    tokenizer = tokenizer_from_bytes(read_verified(path, TOKENIZER_FILE, file.read_bytes),
                                     str(recorded.get("name")), file)
    if not same_tokenizer(recorded, tokenizer):
        raise GptrainError(f"{file} is not the tokenizer {path} was trained with ({describe_tokenizer(recorded)}): "
                           "restore that tokenizer's file")
    return tokenizer
def checkpoint_classifier(config: dict[str, Any], path: str | Path) -> dict[str, Any] | None:
    """A classifier checkpoint's ``{"labels": [...], "max_length": N}``, or None for a language model."""
    if "classifier" not in config:
        return None
    classifier = config["classifier"] if isinstance(config["classifier"], dict) else {}
    labels, length = classifier.get("labels"), classifier.get("max_length")
    if (not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(label, str) for label in labels)
            or not isinstance(length, int) or length < 1):
        raise GptrainError(f"{path}: its config.json describes no valid classifier: use another checkpoint")
    return classifier


def read_weights(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load_file(path, device=str(device))
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise GptrainError(f"{path} is damaged or not a safetensors file ({exc}): use another checkpoint") from None


def load_state_into(model: GPTModel, state: dict[str, torch.Tensor], source: Path | str) -> GPTModel:
    """Assign ``state`` to a model built on the meta device, checking every name and shape."""
    expected = weights_state_dict(model)
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
        if unexpected:
            parts.append(f"unexpected {unexpected[0]}" + (f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""))
        raise GptrainError(f"{source} does not match its config ({'; '.join(parts)}): the checkpoint is inconsistent")
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise GptrainError(
                f"{source}: tensor {name} has shape {tuple(state[name].shape)} but the config needs "
                f"{tuple(tensor.shape)}: the weights belong to another model size"
            )
    model.load_state_dict(state, strict=False, assign=True)
    if model.cfg.tie_embeddings:
        model.out_head.weight = model.tok_emb.weight
    return model


def load_checkpoint(path: str | Path, *, device: torch.device | str = "cpu", with_optimizer: bool = False):
    """Rebuild the model saved at ``path`` (a checkpoint or run directory), in eval mode.

    With ``with_optimizer=True`` returns ``(model, optimizer_state_dict)``; the state dict is
    ``None`` when the checkpoint holds none. Load it into an optimizer built over the returned
    model's parameters.
    """
    path = resolve_checkpoint(path)
    config = read_checkpoint_config(path)
    cfg = GPTConfig.from_dict(config["model"])
    classifier = checkpoint_classifier(config, path)
    model = meta_model(cfg)
    if classifier is not None:
        with torch.device("meta"):
            add_class_head(model, len(classifier["labels"]))
    weights = read_verified(path, WEIGHTS_FILE, lambda: read_weights(path / WEIGHTS_FILE, device))
    load_state_into(model, weights, path / WEIGHTS_FILE)
    model.eval()
    if not with_optimizer:
        return model
    state = load_training_state(path, map_location=device)
    return model, (state or {}).get("optimizer")


def load_training_state(path: str | Path, map_location: torch.device | str = "cpu") -> dict[str, Any] | None:
    """The checkpoint's ``training_state.pt`` (read with ``weights_only=True``), or None."""
    path = resolve_checkpoint(path)
    state_file = path / STATE_FILE
    if not state_file.exists():
        return None

    def read():
        try:
            return torch.load(state_file, map_location=map_location, weights_only=True)
        except Exception as exc:  # torch raises many types for a damaged pickle
            raise GptrainError(f"{state_file} is damaged ({type(exc).__name__}): resume from another checkpoint") from None

    return read_verified(path, STATE_FILE, read)


# --- Run directories: resumable checkpoints ---

CHECKPOINTS_DIR = "checkpoints"
STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(saved: dict[str, Any]) -> None:
    random.setstate((saved["python"][0], tuple(saved["python"][1]), saved["python"][2]))
    name, keys, *rest = saved["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(saved["torch"])
    if saved["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda"])


def complete_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in a run directory that has all its files, oldest first."""
    found = []
    candidates = [p for p in (out / CHECKPOINTS_DIR).glob("step-*") if STEP_DIR.match(p.name)] + [out / FINAL_DIR]
    for path in candidates:
        if all((path / name).is_file() for name in (WEIGHTS_FILE, CONFIG_FILE, STATE_FILE)):
            try:
                step = read_checkpoint_config(path).get("step")
            except GptrainError:
                continue
            if isinstance(step, int):
                found.append((step, path))
    return sorted(found)


def prune_checkpoints(out: Path, keep_last: int | None) -> None:
    if keep_last is None:
        return
    steps = sorted((int(m.group(1)), p) for p in (out / CHECKPOINTS_DIR).glob("step-*") if (m := STEP_DIR.match(p.name)))
    for _, path in steps[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)


def copy_weights_into(model: GPTModel, path: Path) -> None:
    """Copy a checkpoint's weights into a live model in place: the optimizer, DDP and torch.compile
    keep holding the same parameters."""
    weights = read_verified(path, WEIGHTS_FILE, lambda: read_weights(path / WEIGHTS_FILE, "cpu"))
    with torch.no_grad():
        for name, tensor in unwrap_model(model).state_dict().items():
            if name in weights:
                tensor.copy_(weights[name])
            elif not (name == "out_head.weight" and model.cfg.tie_embeddings):
                raise GptrainError(f"{path / WEIGHTS_FILE} lacks {name}: resume from another checkpoint")
