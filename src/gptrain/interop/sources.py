"""The one resolver of a model reference: what every command's ``--model SOURCE`` names.

A reference is one of
  * a GPT-2 size: ``124M``, ``355M``, ``774M``, ``1558M`` (or ``gpt2``, ``gpt2-medium``, ``gpt2-large``,
    ``gpt2-xl``): OpenAI's weights from the cache, downloaded first if need be;
  * a Hugging Face GPT-2 folder (``config.json`` with ``model.safetensors`` or ``pytorch_model.bin``)
    or one of its weights files;
  * a state dict file in Hugging Face's or the book's naming (``.pth``, ``.pt``, ``.bin``,
    ``.safetensors``), whose shape is read off the tensors; the head count, which no tensor
    records, comes from a ``config.json`` beside it, from ``n_heads`` or from GPT-2's known widths;
  * a gptrain checkpoint, or a run directory (its ``final/``; ``RUN/best`` is a checkpoint too);
    a LoRA run's checkpoints hold the adapters merged into the weights.

Each is resolved once, by :func:`resolve_model` (or, for the shape alone, :func:`resolve_shape`), with the
tokenizer the model reads text with (:func:`resolve_tokenizer` alone): GPT-2's, or the trained one a
gptrain checkpoint holds or a gptrain export names in its ``config.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from gptrain.core.errors import GptrainError
from gptrain.data.tokenizer import get_tokenizer
from gptrain.data.trained_tokenizer import (
    TOKENIZER_FILE,
    Tokenizer,
    describe_tokenizer,
    same_tokenizer,
    tokenizer_from_bytes,
)
from gptrain.interop.hf_config import HF_CONFIG, HF_PICKLE, HF_SAFETENSORS, TOKENIZER_KEY, read_hf_config
from gptrain.interop.hub import gpt2_size, source_path
from gptrain.interop.weights import HF, Weights, assign_weights, infer_config, open_weights
from gptrain.model.config import GPTConfig, get_preset
from gptrain.model.gpt import GPTModel, meta_model
from gptrain.model.quantize import check_quantization
from gptrain.model.quantize import quantize as quantize_model
from gptrain.store.checkpoint import (
    checkpoint_classifier,
    checkpoint_tokenizer,
    load_checkpoint,
    read_checkpoint_config,
    resolve_checkpoint,
)
from gptrain.store.layout import WEIGHTS_FILE, checkpoint_at

# The kinds of reference, as ModelSource.kind names them.
GPT2_SIZE, HF_FOLDER, STATE_DICT, CHECKPOINT = "gpt2-size", "hf-folder", "state-dict", "checkpoint"


@dataclass(frozen=True)
class ModelSource:
    """A resolved model reference: the model (eval mode), its shape, its tokenizer and where it came from."""

    model: GPTModel
    config: GPTConfig
    kind: str  # GPT2_SIZE, HF_FOLDER, STATE_DICT or CHECKPOINT
    origin: str  # the reference as given, and what it resolved to
    weights_file: Path  # the file the weights were read from (its sha256 identifies them)
    tokenizer: Tokenizer  # what the model reads and writes text with (name, sha256, encode, decode ...)
    template: str | None = None  # the prompt template of an instruction-tuned checkpoint
    labels: list[str] | None = None  # a classifier's classes, in the order of its head's outputs
    max_length: int | None = None  # the length a classifier's inputs are cut and padded to


@dataclass(frozen=True)
class _Located:
    path: Path
    kind: str
    weights_file: Path
    checkpoint: Path | None = None


def _weights_file(folder: Path) -> Path:
    for name in (HF_SAFETENSORS, HF_PICKLE):
        if (folder / name).is_file():
            return folder / name
    raise GptrainError(f"{folder} holds no weights: expected {HF_SAFETENSORS} or {HF_PICKLE} (a Hugging Face "
                       f"folder), or {WEIGHTS_FILE} with a gptrain config.json (a checkpoint), or a run's final/")


def _locate(source: str | Path) -> _Located:
    if not str(source).strip():
        raise GptrainError("the model reference is empty: give --model a GPT-2 size (124M, gpt2, ...), a Hugging "
                           "Face folder, a state dict file, or a gptrain checkpoint or run directory")
    path = source_path(source)
    checkpoint = checkpoint_at(path)
    if checkpoint is not None:
        checkpoint = resolve_checkpoint(checkpoint)
        return _Located(path, CHECKPOINT, checkpoint / WEIGHTS_FILE, checkpoint)
    if path.is_dir():
        kind = GPT2_SIZE if gpt2_size(str(source)) and not Path(source).expanduser().exists() else HF_FOLDER
        return _Located(path, kind, _weights_file(path))
    return _Located(path, STATE_DICT, path)


def _exported_tokenizer(folder: Path) -> Tokenizer:
    """The tokenizer of a Hugging Face folder: the trained one a gptrain export names, else GPT-2's."""
    try:
        recorded = json.loads((folder / HF_CONFIG).read_text(encoding="utf-8")).get(TOKENIZER_KEY)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        recorded = None
    if not isinstance(recorded, dict):
        return get_tokenizer()
    file = folder / TOKENIZER_FILE
    if not file.is_file():
        raise GptrainError(f"{folder} names the tokenizer {describe_tokenizer(recorded)} but holds no "
                           f"{TOKENIZER_FILE}: export the model again")
    tokenizer = tokenizer_from_bytes(file.read_bytes(), str(recorded.get("name")), file)
    if not same_tokenizer(recorded, tokenizer):
        raise GptrainError(f"{file} is not the tokenizer {folder / HF_CONFIG} names ({describe_tokenizer(recorded)}): "
                           "export the model again")
    return tokenizer


def _tokenizer(located: _Located) -> Tokenizer:
    if located.checkpoint is not None:
        return checkpoint_tokenizer(located.checkpoint)
    return _exported_tokenizer(located.weights_file.parent)


def resolve_tokenizer(source: str | Path) -> Tokenizer:
    """The tokenizer of the model ``source`` names, without loading its weights (a GPT-2 size: GPT-2's,
    not downloaded for it)."""
    if gpt2_size(str(source)) is not None and not Path(source).expanduser().exists():
        return get_tokenizer()
    return _tokenizer(_locate(source))


def _heads_beside(weights_file: Path) -> int | None:
    """The head count a ``config.json`` beside a state dict gives (Hugging Face's ``n_head`` or the book's
    ``n_heads``), if there is one."""
    try:
        values = json.loads((weights_file.parent / HF_CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    heads = values.get("n_heads", values.get("n_head")) if isinstance(values, dict) else None
    return heads if isinstance(heads, int) and not isinstance(heads, bool) else None


def _read(located: _Located, n_heads: int | None) -> tuple[Weights, GPTConfig]:
    config_file = located.weights_file.parent / HF_CONFIG
    cfg = None
    if located.path.is_dir():
        # A folder's config.json says what the folder is: checked before any weights are read.
        cfg = read_hf_config(config_file) if config_file.is_file() else None
        weights = open_weights(located.weights_file)
    elif located.path.is_file():
        weights = open_weights(located.path)
        if weights.naming == HF and config_file.is_file():
            cfg = read_hf_config(config_file)
    else:
        raise GptrainError(f"{located.path} is neither a file nor a folder: give a model's weights or folder")
    if cfg is None or weights.naming != HF:
        cfg = infer_config(weights, n_heads or _heads_beside(located.weights_file))
    return weights, cfg


def resolve_model(source: str | Path, *, device: torch.device | str = "cpu", n_heads: int | None = None,
                  quantize: str | None = None, allow_classifier: bool = False) -> ModelSource:
    """Load the model ``source`` names (see the module's docstring), in eval mode on ``device``; with
    ``quantize="int8"``, with int8 weights (:func:`gptrain.model.quantize.quantize`); a classifier only
    with ``allow_classifier``."""
    if quantize is not None:  # before the weights are read: a device without int8 kernels costs no waiting
        check_quantization(quantize, torch.device(device))
    located = _locate(source)
    tokenizer = _tokenizer(located)
    template, classifier = None, {}
    if located.checkpoint is not None:
        config = read_checkpoint_config(located.checkpoint)
        template = config.get("template")
        classifier = checkpoint_classifier(config, located.checkpoint) or {}
        if classifier and not allow_classifier:
            raise GptrainError(f"{source} is a classifier (labels {', '.join(classifier['labels'])}), not a language "
                               "model: use it with gptrain classify, or give a language model here")
        model = load_checkpoint(located.checkpoint, device=device)
        origin = f"{source} (gptrain checkpoint {located.checkpoint})"
    else:
        weights, cfg = _read(located, n_heads)
        model = meta_model(cfg)
        assign_weights(model, weights, device)
        model.eval()
        origin = f"{source} ({located.kind.replace('-', ' ')} {located.weights_file})"
    if not same_tokenizer(tokenizer, get_tokenizer()) and model.cfg.vocab_size < tokenizer.n_vocab:
        raise GptrainError(f"{source} has {model.cfg.vocab_size:,} token embeddings, fewer than the "
                           f"{tokenizer.n_vocab:,} tokens of its tokenizer {tokenizer.name}: it is not that "
                           "tokenizer's model; give --model the folder it was exported or trained in")
    if quantize is not None:
        model = quantize_model(model, quantize)
    return ModelSource(model=model, config=model.cfg, kind=located.kind, origin=origin,
                       weights_file=located.weights_file, tokenizer=tokenizer, template=template,
                       labels=classifier.get("labels"), max_length=classifier.get("max_length"))


def resolve_shape(source: str | Path, *, n_heads: int | None = None) -> GPTConfig:
    """The shape of the model ``source`` names, without loading its weights where a config says it
    (a GPT-2 size is not downloaded for it)."""
    size = gpt2_size(str(source))
    if size is not None and not Path(source).expanduser().exists():
        return get_preset(size).replace(qkv_bias=True, tie_embeddings=True)  # OpenAI's GPT-2
    located = _locate(source)
    if located.checkpoint is not None:
        return GPTConfig.from_dict(read_checkpoint_config(located.checkpoint)["model"])
    return _read(located, n_heads)[1]


def load_gpt2(source: str | Path = "124M", *, device: torch.device | str = "cpu",
              n_heads: int | None = None, quantize: str | None = None) -> GPTModel:
    """A ready GPTModel (eval mode) from OpenAI's GPT-2 weights or any other reference
    :func:`resolve_model` takes. The head count is not stored in weights files without a config:
    GPT-2's widths imply it, for other widths give ``n_heads``."""
    return resolve_model(source, device=device, n_heads=n_heads, quantize=quantize).model


__all__ = ["ModelSource", "load_gpt2", "resolve_model", "resolve_shape", "resolve_tokenizer"]
