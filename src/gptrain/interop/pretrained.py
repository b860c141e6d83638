"""OpenAI's GPT-2 weights in and out of GPTModel: download, import, export, inspect, compare.

The same tensors go by three sets of names:

    Hugging Face  wte.weight, h.0.attn.c_attn.weight, ...  (optionally under ``transformer.``)
                  Conv1D layers store (in, out); query, key and value are one fused c_attn;
                  lm_head is tied to wte and usually left out of the file
    the book      tok_emb.weight, trf_blocks.0.att.W_query.weight, ..., norm1.scale/.shift
    gptrain       the book's names, with norms as .weight/.bias (nn.LayerNorm)

Loading builds the model on the meta device and assigns each tensor once it has been renamed,
shape-checked and rearranged, so the weights are held once. A safetensors file is read
through a memory map: tensors used as stored stay views of the file; a tensor that must be
transposed or split is read through a short-lived map of its own and copied, so its file
pages and its copy are not resident together (benchmarks/bench_load_memory.py measures it).
Pickled files (``pytorch_model.bin``, ``.pth``) are read with ``weights_only=True`` only.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, TextIO

import safetensors
import torch
from torch import nn

from gptrain.core.download import cache_dir, download_file
from gptrain.core.errors import GptrainError
from gptrain.core.files import staged_dir, write_json_atomic
from gptrain.core.oserrors import check_output_dir, reason_and_fix, wrapped_os_error
from gptrain.core.tensorfile import save_tensors
from gptrain.data.tokenizer import (
    END_OF_TEXT,
    END_OF_TEXT_ID,
    VOCAB_SIZE,
    gpt2_vocab_and_merges,
)
from gptrain.model.config import PRESET_ALIASES, GPTConfig
from gptrain.model.gpt import GPTModel, count_parameters, unwrap_model
from gptrain.store.checkpoint import (
    CONFIG_FILE,
    FORMAT,
    WEIGHTS_FILE,
    load_checkpoint,
    load_state_into,
    resolve_checkpoint,
    weights_state_dict,
)

GPT2_REPOS = {"124M": "gpt2", "355M": "gpt2-medium", "774M": "gpt2-large", "1558M": "gpt2-xl"}
# sha256 and byte size of each model.safetensors, as the hub's Git LFS pointers give them
# (gpt2-xl's size was not at hand; the server's Content-Length is checked instead).
KNOWN_WEIGHTS = {
    "124M": ("248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707", 548_105_171),
    "355M": ("fc5a354a19255ad494f3d71549390baca1ccf61d1d822b9408971705c687c9cd", 1_519_984_962),
    "774M": ("5f47f3e12f91cd33b662ce7e433b6150ad5512b5884a2cee961b50e9c3bbebce", 3_247_159_078),
    "1558M": ("0f8b28eb05a8075f48b61b6f35332978c74fc7763fa9fb4051a1c30511736a6a", None),
}
# The weights do not record the head count; OpenAI's models all use 64-wide heads.
GPT2_HEADS = {768: 12, 1024: 16, 1280: 20, 1600: 25}
HF_CONFIG = "config.json"
HF_SAFETENSORS = "model.safetensors"
HF_PICKLE = "pytorch_model.bin"
# Causal-mask buffers that older checkpoints store beside the weights; the model needs none.
MASK_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)|trf_blocks\.\d+\.att\.mask")
HF, BOOK, GPTRAIN = "Hugging Face", "book", "gptrain"
BOOK_NORM_NAMES = {"weight": "scale", "bias": "shift"}


# --- download ---------------------------------------------------------------------------------

def gpt2_size(name: str) -> str | None:
    """``124M`` for ``124M`` or ``gpt2`` (and so on for the other sizes); None for anything else."""
    size = PRESET_ALIASES.get(name, name)
    return size if size in GPT2_REPOS else None


def hf_endpoint() -> str:
    return os.environ.get("GPTRAIN_HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def download_gpt2(size: str = "124M") -> Path:
    """Fetch OpenAI's ``config.json`` and ``model.safetensors`` for ``size`` into the cache.

    Returns the folder (``cache_dir()/gpt2/<size>``). Files already there are used as they are:
    a file only gets its final name once its size and sha256 have been checked.
    """
    key = gpt2_size(size)
    if key is None:
        raise GptrainError(f"unknown GPT-2 size {size!r}: choose one of {', '.join([*GPT2_REPOS, *PRESET_ALIASES])}")
    folder = cache_dir() / "gpt2" / key
    repo = f"{hf_endpoint()}/openai-community/{GPT2_REPOS[key]}"
    hint = f"put {HF_CONFIG} and {HF_SAFETENSORS} from {repo} in {folder}"
    sha256, size_bytes = KNOWN_WEIGHTS[key]
    if not (folder / HF_CONFIG).is_file():
        download_file(f"{repo}/resolve/main/{HF_CONFIG}", folder / HF_CONFIG, where_to_put_it=hint)
    if not (folder / HF_SAFETENSORS).is_file():
        download_file(f"{repo}/resolve/main/{HF_SAFETENSORS}", folder / HF_SAFETENSORS, sha256=sha256,
                      size=size_bytes, where_to_put_it=hint)
    return folder


# --- reading weights --------------------------------------------------------------------------

class _Weights:
    """A file's (or a dict's) tensors by name, without the ``transformer.`` prefix."""

    def __init__(self, source: str, names):
        self.source = source
        self.file_names = {name.removeprefix("transformer."): name for name in names}
        if not self.file_names:
            raise GptrainError(f"{source} holds no tensors: give a GPT-2 checkpoint")
        if "wte.weight" in self.file_names:
            self.naming = HF
        elif "final_norm.scale" in self.file_names:
            self.naming = BOOK
        elif "tok_emb.weight" in self.file_names:
            self.naming = GPTRAIN
        else:
            raise GptrainError(
                f"{source} is not a GPT-2 state dict: it has neither wte.weight (Hugging Face naming) nor "
                f"tok_emb.weight (the book's); its first tensor is {next(iter(self.file_names.values()))}"
            )

    def __contains__(self, name: str) -> bool:
        return name in self.file_names

    def shape(self, name: str) -> tuple[int, ...]:
        raise NotImplementedError

    def tensor(self, name: str, *, to_copy: bool = False) -> torch.Tensor:
        """The tensor; ``to_copy`` says the caller copies it and drops it right away."""
        raise NotImplementedError

    def release(self, name: str) -> None:
        """The tensor has been converted and will not be asked for again."""


class _SafetensorsWeights(_Weights):
    def __init__(self, path: Path):
        self.path = path
        try:
            self.file = safetensors.safe_open(path, "pt", device="cpu")
        except (safetensors.SafetensorError, OSError) as exc:
            raise GptrainError(f"{path} is truncated or damaged ({exc}): download or export it again") from None
        super().__init__(str(path), self.file.keys())

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.file.get_slice(self.file_names[name]).get_shape())

    def tensor(self, name: str, *, to_copy: bool = False) -> torch.Tensor:
        if not to_copy:
            return self.file.get_tensor(self.file_names[name])
        # Pages read through a map stay resident until it is closed; a map of its own is
        # closed as soon as the copy is made.
        with safetensors.safe_open(self.path, "pt", device="cpu") as f:
            return f.get_tensor(self.file_names[name])


class _DictWeights(_Weights):
    def __init__(self, state: Mapping[str, Any], source: str, *, consume: bool = False):
        for name, value in state.items():
            if not isinstance(value, torch.Tensor):
                raise GptrainError(f"{source} is not a state dict: {name} is a {type(value).__name__}, not a tensor")
        self.state = dict(state) if consume else state
        self.consume = consume  # drop each tensor once converted, so that it is freed
        super().__init__(source, state.keys())

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.state[self.file_names[name]].shape)

    def tensor(self, name: str, *, to_copy: bool = False) -> torch.Tensor:
        return self.state[self.file_names[name]]

    def release(self, name: str) -> None:
        if self.consume:
            del self.state[self.file_names[name]]


def _read_pickle(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged pickle
        if "Weights only load failed" in str(exc):
            raise GptrainError(
                f"{path} holds Python objects besides tensors, and unpickling them could run any code, so it "
                "is not read: save model.state_dict() instead, or use safetensors"
            ) from None
        raise GptrainError(f"{path} is truncated or damaged ({type(exc).__name__}): save or download it again") from None
    if isinstance(state, dict) and isinstance(state.get("model_state_dict"), dict):
        state = state["model_state_dict"]  # the book's chapter 5 saves model and optimizer together
    if not isinstance(state, dict):
        raise GptrainError(f"{path} holds a {type(state).__name__}, not a state dict: save model.state_dict()")
    return state


def _open_weights(path: Path) -> _Weights:
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as exc:
        raise GptrainError(f"cannot read {path}: {exc.strerror or exc}") from None
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch.save's zip, or its legacy pickle
        return _DictWeights(_read_pickle(path), str(path), consume=True)
    if len(head) == 9 and head[8:9] == b"{":  # an 8-byte header length, then the JSON header
        return _SafetensorsWeights(path)
    raise GptrainError(f"{path} is not a checkpoint: it is neither a safetensors file nor a PyTorch state dict")


# --- name mapping -----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Rule:
    """One tensor of the file and the GPTModel tensor(s) it becomes."""

    source: str
    targets: tuple[str, ...]  # several: the source is split evenly along its last dimension
    transpose: bool = False  # Conv1D stores (in, out), nn.Linear (out, in)
    copy: bool = False  # the file's tensor may also be another one (wte and lm_head often are)

    @property
    def copies(self) -> bool:
        return self.transpose or self.copy or len(self.targets) > 1

    def source_shape(self, target_shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
        shapes = [tuple(reversed(s)) if self.transpose else tuple(s) for s in target_shapes]
        return (*shapes[0][:-1], sum(s[-1] for s in shapes))


def _hf_rules(n_layers: int, qkv_bias: bool = True) -> list[_Rule]:
    rules = [_Rule("wte.weight", ("tok_emb.weight",)), _Rule("wpe.weight", ("pos_emb.weight",))]
    for i in range(n_layers):
        h, b = f"h.{i}.", f"trf_blocks.{i}."
        qkv = [f"{b}att.W_{part}" for part in ("query", "key", "value")]
        rules += [
            _Rule(f"{h}ln_1.weight", (f"{b}norm1.weight",)),
            _Rule(f"{h}ln_1.bias", (f"{b}norm1.bias",)),
            _Rule(f"{h}attn.c_attn.weight", tuple(f"{name}.weight" for name in qkv), transpose=True),
            *([_Rule(f"{h}attn.c_attn.bias", tuple(f"{name}.bias" for name in qkv))] if qkv_bias else []),
            _Rule(f"{h}attn.c_proj.weight", (f"{b}att.out_proj.weight",), transpose=True),
            _Rule(f"{h}attn.c_proj.bias", (f"{b}att.out_proj.bias",)),
            _Rule(f"{h}ln_2.weight", (f"{b}norm2.weight",)),
            _Rule(f"{h}ln_2.bias", (f"{b}norm2.bias",)),
            _Rule(f"{h}mlp.c_fc.weight", (f"{b}ff.layers.0.weight",), transpose=True),
            _Rule(f"{h}mlp.c_fc.bias", (f"{b}ff.layers.0.bias",)),
            _Rule(f"{h}mlp.c_proj.weight", (f"{b}ff.layers.2.weight",), transpose=True),
            _Rule(f"{h}mlp.c_proj.bias", (f"{b}ff.layers.2.bias",)),
        ]
    return rules + [_Rule("ln_f.weight", ("final_norm.weight",)), _Rule("ln_f.bias", ("final_norm.bias",))]


def _book_name(name: str) -> str:
    module, _, kind = name.rpartition(".")
    if module.rpartition(".")[2] in {"norm1", "norm2", "final_norm"}:
        return f"{module}.{BOOK_NORM_NAMES[kind]}"
    return name


def _rules_for(model: GPTModel, weights: _Weights) -> tuple[list[_Rule], str]:
    """The rules that fill ``model`` from ``weights``, and the file's name for the output head."""
    if weights.naming == HF:
        rules = _hf_rules(model.cfg.n_layers, model.cfg.qkv_bias)
        if not model.cfg.tie_embeddings:
            # GPT-2 ties lm_head to wte, so files leave it out or store the same tensor twice:
            # an untied head starts as a copy.
            source = "lm_head.weight" if "lm_head.weight" in weights else "wte.weight"
            rules.append(_Rule(source, ("out_head.weight",), copy=True))
        return rules, "lm_head.weight"
    rename = _book_name if weights.naming == BOOK else str
    return [_Rule(rename(name), (name,)) for name in weights_state_dict(model)], "out_head.weight"


def _first_few(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _assign(model: GPTModel, weights: _Weights, device: torch.device | str | None) -> None:
    """Check every name and shape of ``weights`` against ``model``, then convert and assign them."""
    rules, head = _rules_for(model, weights)
    expected = weights_state_dict(model)
    for rule in rules:
        if rule.source in weights:
            want = rule.source_shape([tuple(expected[name].shape) for name in rule.targets])
            got = weights.shape(rule.source)
            if got != want:
                raise GptrainError(
                    f"{weights.source}: tensor {weights.file_names[rule.source]} has shape {got} but the model "
                    f"needs {want}: the weights belong to another model size or config"
                )
    wanted = {rule.source for rule in rules}
    tied_head = model.cfg.tie_embeddings and head in weights
    missing = [rule.source for rule in rules if rule.source not in weights]
    unexpected = [weights.file_names[name] for name in weights.file_names
                  if name not in wanted and not MASK_BUFFER.fullmatch(name) and not (tied_head and name == head)]
    if missing or unexpected:
        problems = ([f"missing {_first_few(missing)}"] if missing else []) + (
            [f"unexpected {_first_few(unexpected)}"] if unexpected else [])
        raise GptrainError(f"{weights.source} does not fit the model ({'; '.join(problems)}): "
                           "check that the model's config matches the weights")

    for name in weights.file_names:
        if MASK_BUFFER.fullmatch(name):
            weights.release(name)
    state = {}
    last_use = {rule.source: i for i, rule in enumerate(rules)}
    for i, rule in enumerate(rules):
        tensor = weights.tensor(rule.source, to_copy=rule.copies)
        parts = tensor.chunk(len(rule.targets), dim=-1) if len(rule.targets) > 1 else (tensor,)
        for name, part in zip(rule.targets, parts):
            target = expected[name]
            to = device or ("cpu" if target.is_meta else target.device)
            part = part.t() if rule.transpose else part
            # A built model gets copies: sharing memory with the caller's dict would tie them.
            state[name] = part.to(device=to, dtype=target.dtype, copy=rule.copies or not target.is_meta,
                                  memory_format=torch.contiguous_format)
        del tensor, parts, part
        if last_use[rule.source] == i:
            weights.release(rule.source)
    if tied_head:
        emb = state["tok_emb.weight"]
        stored = weights.tensor(head, to_copy=True)
        if stored.shape != emb.shape or not torch.equal(stored.to(emb.device, emb.dtype), emb):
            raise GptrainError(
                f"{weights.source}: {weights.file_names[head]} differs from the token embedding, but the model ties "
                "its output head to it: build the model with tie_embeddings=False"
            )
    load_state_into(model, state, weights.source)


def load_weights_into_gpt(model: GPTModel, state_dict: Mapping[str, torch.Tensor]) -> GPTModel:
    """The lecture's step: put a state dict's tensors into ``model`` and return it.

    ``state_dict`` may use Hugging Face's names (as ``torch.load("pytorch_model.bin")`` returns
    them; Conv1D weights are transposed and c_attn is split into query, key and value) or the
    book's (``trf_blocks.0.att.W_query.weight``, norms ``.scale``/``.shift``); the keys tell them
    apart. Every tensor's shape is checked, and missing or unexpected tensors are reported by
    name (causal-mask buffers are ignored). A model on the meta device gets the tensors
    themselves; any other keeps its device and dtype. Without ``lm_head.weight``, an untied
    output head starts as a copy of ``wte``, as OpenAI's GPT-2 ties them.
    """
    _assign(unwrap_model(model), _DictWeights(state_dict, "state dict"), device=None)
    return model


# --- configs ----------------------------------------------------------------------------------

def config_from_hf(hf: Mapping[str, Any], source: str | Path = HF_CONFIG) -> GPTConfig:
    """The GPTConfig of a Hugging Face GPT-2 ``config.json`` (qkv bias on, head tied unless it says not)."""
    if not isinstance(hf, Mapping) or hf.get("model_type") != "gpt2":
        model_type = hf.get("model_type") if isinstance(hf, Mapping) else None
        raise GptrainError(f"{source} is not a GPT-2 config (model_type {model_type!r}, not 'gpt2'): "
                           "give a GPT-2 checkpoint")
    emb_dim = hf.get("n_embd", 768)
    supported = {
        "activation_function": (hf.get("activation_function", "gelu_new"), ("gelu_new", "gelu_pytorch_tanh")),
        "layer_norm_epsilon": (hf.get("layer_norm_epsilon", 1e-5), (1e-5,)),
        "n_inner": (hf.get("n_inner"), (None, 4 * emb_dim)),
        "scale_attn_weights": (hf.get("scale_attn_weights", True), (True,)),
        "scale_attn_by_inverse_layer_idx": (hf.get("scale_attn_by_inverse_layer_idx", False), (False,)),
        "add_cross_attention": (hf.get("add_cross_attention", False), (False,)),
    }
    for key, (value, allowed) in supported.items():
        if value not in allowed:
            raise GptrainError(f"{source}: {key} {value!r} is not supported (GPTModel has {allowed[-1]!r}): "
                               "this GPT-2 variant cannot be loaded")
    try:
        return GPTConfig(
            vocab_size=hf.get("vocab_size", VOCAB_SIZE), context_length=hf.get("n_positions", 1024), emb_dim=emb_dim,
            n_heads=hf.get("n_head", 12), n_layers=hf.get("n_layer", 12), drop_rate=hf.get("resid_pdrop", 0.1),
            qkv_bias=True, tie_embeddings=hf.get("tie_word_embeddings", True),
        )
    except GptrainError as exc:
        raise GptrainError(f"{source}: {exc}") from None


def read_hf_config(path: Path) -> GPTConfig:
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GptrainError(f"{path} is not a readable JSON config ({exc}): give a GPT-2 checkpoint") from None
    return config_from_hf(hf, path)


def hf_config_dict(cfg: GPTConfig, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The ``config.json`` with which transformers builds ``cfg`` as a ``GPT2LMHeadModel``."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.context_length,
        "n_embd": cfg.emb_dim,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": None,
        "activation_function": "gelu_new",  # the tanh approximation, as GPTModel's GELU
        "resid_pdrop": cfg.drop_rate,
        "embd_pdrop": cfg.drop_rate,
        "attn_pdrop": cfg.drop_rate,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "use_cache": True,
        "bos_token_id": END_OF_TEXT_ID,
        "eos_token_id": END_OF_TEXT_ID,
        "tie_word_embeddings": cfg.tie_embeddings,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def _infer_config(weights: _Weights, n_heads: int | None) -> GPTConfig:
    """A config read off the tensors' shapes, for files that come without one."""
    hf = weights.naming == HF
    emb, pos, head = ("wte.weight", "wpe.weight", "lm_head.weight") if hf else (
        "tok_emb.weight", "pos_emb.weight", "out_head.weight")
    block = re.compile(r"h\.(\d+)\." if hf else r"trf_blocks\.(\d+)\.")
    layers = {int(m.group(1)) for name in weights.file_names if (m := block.match(name))}
    if pos not in weights or not layers or len(weights.shape(emb)) != 2:
        raise GptrainError(f"{weights.source} is not a whole GPT model: it lacks {pos}, blocks, or a 2-d {emb}")
    vocab_size, emb_dim = weights.shape(emb)
    heads = n_heads or GPT2_HEADS.get(emb_dim)
    if heads is None:
        raise GptrainError(f"{weights.source}: the number of attention heads is not stored with the weights, and "
                           f"width {emb_dim} is not a GPT-2 size: give it (n_heads=..., or --n-heads)")
    tied = head not in weights or (
        weights.shape(head) == weights.shape(emb)
        and torch.equal(weights.tensor(head, to_copy=True), weights.tensor(emb, to_copy=True)))
    try:
        return GPTConfig(vocab_size=vocab_size, context_length=weights.shape(pos)[0], emb_dim=emb_dim, n_heads=heads,
                         n_layers=max(layers) + 1, qkv_bias=hf or "trf_blocks.0.att.W_query.bias" in weights,
                         tie_embeddings=tied)
    except GptrainError as exc:
        raise GptrainError(f"{weights.source}: {exc}") from None


# --- import -----------------------------------------------------------------------------------

def _gptrain_checkpoint(path: Path) -> Path | None:
    """The gptrain checkpoint (or run) directory that ``path`` is, or whose weights file it is."""
    folder = path.parent if path.is_file() and path.name == WEIGHTS_FILE else path
    for config_file in (folder / CONFIG_FILE, folder / "final" / CONFIG_FILE):
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(config, dict) and config.get("format") == FORMAT:
            return folder
    return None


def _weights_file(folder: Path) -> Path:
    for name in (HF_SAFETENSORS, HF_PICKLE):
        if (folder / name).is_file():
            return folder / name
    raise GptrainError(f"{folder} holds no weights: expected {HF_SAFETENSORS} or {HF_PICKLE} in it")


def load_gpt2(source: str | Path = "124M", *, device: torch.device | str = "cpu",
              n_heads: int | None = None) -> GPTModel:
    """A ready GPTModel (eval mode) from OpenAI's GPT-2 weights or any other GPT-2 checkpoint.

    ``source`` is one of
      * a size: ``124M``, ``355M``, ``774M``, ``1558M`` (or ``gpt2``, ``gpt2-medium``, ``gpt2-large``,
        ``gpt2-xl``): OpenAI's weights from the cache, downloaded first if need be;
      * a Hugging Face folder or file (``model.safetensors`` or ``pytorch_model.bin`` with its
        ``config.json``): GPT-2 proper has qkv bias, context 1024 and its head tied to the embedding;
      * a state dict file in the book's naming (``torch.save(model.state_dict(), "model.pth")``),
        whose config is read off the tensor shapes;
      * a gptrain checkpoint or run directory (as :func:`gptrain.load_checkpoint`).

    The head count is not stored in weights files without a config: GPT-2's widths imply it,
    for other widths give ``n_heads``.
    """
    path = _source_path(source)
    checkpoint = _gptrain_checkpoint(path)
    if checkpoint is not None:
        return load_checkpoint(checkpoint, device=device)
    weights_file = _weights_file(path) if path.is_dir() else path
    config_file = weights_file.parent / HF_CONFIG
    # A folder's config.json says what the folder is: check it before reading any weights.
    cfg = read_hf_config(config_file) if path.is_dir() and config_file.is_file() else None
    weights = _open_weights(weights_file)
    if weights.naming == HF and cfg is None and config_file.is_file():
        cfg = read_hf_config(config_file)
    if weights.naming != HF or cfg is None:
        cfg = _infer_config(weights, n_heads)
    with torch.device("meta"):
        model = GPTModel(cfg)
    _assign(model, weights, device)
    return model.eval()


def _source_path(source: str | Path) -> Path:
    """The file or folder ``source`` names; a GPT-2 size means its cached download."""
    path = Path(source).expanduser()
    if not path.exists():
        size = gpt2_size(str(source))
        if size is None:
            raise GptrainError(f"{source} does not exist and is not a GPT-2 size: give a file, a folder, or one of "
                               f"{', '.join([*GPT2_REPOS, *PRESET_ALIASES])}")
        path = download_gpt2(size)
    return path


def source_weights_file(source: str | Path) -> Path:
    """The file :func:`load_gpt2` reads ``source``'s weights from (a size means its cached file)."""
    path = _source_path(source)
    checkpoint = _gptrain_checkpoint(path)
    if checkpoint is not None:
        return resolve_checkpoint(checkpoint) / WEIGHTS_FILE
    return _weights_file(path) if path.is_dir() else path


# --- export -----------------------------------------------------------------------------------

def hf_state_dict(model: GPTModel) -> dict[str, torch.Tensor]:
    """``model``'s tensors under GPT2LMHeadModel's names and layouts (contiguous, on the model's device).

    A model without qkv bias gets zero biases (the same function); an untied head is written
    as ``lm_head.weight``, a tied one is left out, as transformers writes it.
    """
    model = unwrap_model(model)
    cfg = model.cfg
    ours = weights_state_dict(model)  # a LoRA model's adapters merged into their weights
    rules = _hf_rules(cfg.n_layers)
    if not cfg.tie_embeddings:
        rules.append(_Rule("lm_head.weight", ("out_head.weight",)))
    embedding = ours["tok_emb.weight"]
    zero_bias = torch.zeros(cfg.emb_dim, dtype=embedding.dtype, device=embedding.device)  # for a model without qkv bias
    out = {}
    for rule in rules:
        parts = [ours.get(name, zero_bias) for name in rule.targets]
        parts = [part.t() for part in parts] if rule.transpose else parts
        tensor = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
        name = rule.source if rule.source == "lm_head.weight" else f"transformer.{rule.source}"
        out[name] = tensor.contiguous()
    return out


def write_tokenizer_files(folder: Path, model_max_length: int = 1024) -> None:
    """GPT-2's ``vocab.json``, ``merges.txt`` and tokenizer config, derived from the bundled table."""
    vocab, merges = gpt2_vocab_and_merges()
    files = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "".join(f"{first} {second}\n" for first, second in merges),
        "tokenizer_config.json": json.dumps({
            "tokenizer_class": "GPT2Tokenizer", "model_max_length": model_max_length, "add_prefix_space": False,
            "bos_token": END_OF_TEXT, "eos_token": END_OF_TEXT, "unk_token": END_OF_TEXT, "errors": "replace",
        }, indent=2),
        "special_tokens_map.json": json.dumps(
            {"bos_token": END_OF_TEXT, "eos_token": END_OF_TEXT, "unk_token": END_OF_TEXT}, indent=2),
    }
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")


def export_hf(source: GPTModel | str | Path, out: str | Path, *, overwrite: bool = False,
              n_heads: int | None = None) -> Path:
    """Write a model as a Hugging Face GPT-2 folder that ``GPT2LMHeadModel.from_pretrained`` and
    ``AutoTokenizer.from_pretrained`` read: ``config.json``, ``model.safetensors`` and the
    GPT-2 tokenizer files.

    ``source`` is a GPTModel or anything :func:`load_gpt2` takes. The folder is written under a
    temporary name and renamed into place; an existing non-empty ``out`` is only replaced
    with ``overwrite=True``.
    """
    model = unwrap_model(source) if isinstance(source, nn.Module) else load_gpt2(source, n_heads=n_heads)
    if model.cfg.vocab_size < VOCAB_SIZE:
        raise GptrainError(f"the model has {model.cfg.vocab_size} token embeddings, fewer than GPT-2's tokenizer "
                           f"needs ({VOCAB_SIZE}): it cannot be exported with GPT-2's tokenizer")
    out = check_output_dir(Path(out).expanduser())
    if not isinstance(source, nn.Module):
        target, model_path = out.resolve(), Path(source).expanduser().resolve()
        if target == model_path or target in model_path.parents or model_path in target.parents:
            raise GptrainError(f"{out} would replace the model being exported ({source}) or lie inside it: "
                               "choose another --out")
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise GptrainError(f"{out} already exists: choose another --out, or pass --overwrite to replace it")
    tensors = {name: tensor.cpu() for name, tensor in hf_state_dict(model).items()}
    try:
        with staged_dir(out) as tmp:
            save_tensors(tensors, tmp / HF_SAFETENSORS, metadata={"format": "pt"})
            write_json_atomic(tmp / HF_CONFIG, hf_config_dict(model.cfg, tensors["transformer.wte.weight"].dtype))
            write_tokenizer_files(tmp, model.cfg.context_length)
    except (OSError, safetensors.SafetensorError) as exc:
        os_error = wrapped_os_error(exc)
        if os_error is None:
            raise
        raise GptrainError(f"cannot write {out}: {reason_and_fix(os_error)}") from None
    return out


# --- inspect and compare ----------------------------------------------------------------------

def inspect_loaded_model(model: nn.Module, file: TextIO | None = None) -> int:
    """Print the lecture's summary of a loaded model and return its parameter count (each tensor once)."""
    model = unwrap_model(model)
    out = file or sys.stdout
    cfg = model.cfg
    vocab_size, emb_dim = model.tok_emb.weight.shape
    block = model.trf_blocks[0]
    total = count_parameters(model)
    head = model.out_head.weight.numel()
    lines = [
        "Model parameter summary:",
        f"Token embeddings: {tuple(model.tok_emb.weight.shape)}",
        f"  Vocabulary size: {vocab_size:,}",
        f"  Embedding dimension: {emb_dim}",
        f"Position embeddings: {tuple(model.pos_emb.weight.shape)}",
        f"  Context length: {model.pos_emb.weight.shape[0]:,}",
        f"Number of transformer blocks: {len(model.trf_blocks)}",
        f"  Block 0: attention params: {sum(p.numel() for p in block.att.parameters()):,}, "
        f"feed-forward params: {sum(p.numel() for p in block.ff.parameters()):,}",
    ]
    if cfg.tie_embeddings:
        lines += [f"Output head: {tuple(model.out_head.weight.shape)}, tied to the token embedding",
                  f"Total parameters: {total:,} (the tied head counted once)",
                  f"  with the head counted as a matrix of its own: {total + head:,}"]
    else:
        lines += [f"Output head: {tuple(model.out_head.weight.shape)}, separate from the token embedding",
                  f"Total parameters: {total:,}",
                  f"  without the output head: {total - head:,}"]
    lines.append(f"Config: {json.dumps(cfg.to_dict())}")
    print("\n".join(lines), file=out)
    return total


