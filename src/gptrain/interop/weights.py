"""GPT-2 state dicts into GPTModel: the three namings, name and layout rules, checked assignment.

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

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import safetensors
import torch

from gptrain.core.errors import GptrainError
from gptrain.model.config import GPTConfig
from gptrain.model.gpt import GPTModel, unwrap_model
from gptrain.store.checkpoint import load_state_into, weights_state_dict

# The weights do not record the head count; OpenAI's models all use 64-wide heads.
GPT2_HEADS = {768: 12, 1024: 16, 1280: 20, 1600: 25}
# Causal-mask buffers that older checkpoints store beside the weights; the model needs none.
MASK_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)|trf_blocks\.\d+\.att\.mask")
QKV_BIAS = re.compile(r"h\.\d+\.attn\.c_attn\.bias")
HF, BOOK, GPTRAIN = "Hugging Face", "book", "gptrain"
BOOK_NORM_NAMES = {"weight": "scale", "bias": "shift"}


class Weights:
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


class SafetensorsWeights(Weights):
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


class DictWeights(Weights):
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


def open_weights(path: Path) -> Weights:
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as exc:
        raise GptrainError(f"cannot read {path}: {exc.strerror or exc}") from None
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch.save's zip, or its legacy pickle
        return DictWeights(_read_pickle(path), str(path), consume=True)
    if len(head) == 9 and head[8:9] == b"{":  # an 8-byte header length, then the JSON header
        return SafetensorsWeights(path)
    raise GptrainError(f"{path} is not a checkpoint: it is neither a safetensors file nor a PyTorch state dict")


# --- name mapping -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
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


def hf_rules(n_layers: int, qkv_bias: bool = True) -> list[Rule]:
    rules = [Rule("wte.weight", ("tok_emb.weight",)), Rule("wpe.weight", ("pos_emb.weight",))]
    for i in range(n_layers):
        h, b = f"h.{i}.", f"trf_blocks.{i}."
        qkv = [f"{b}att.W_{part}" for part in ("query", "key", "value")]
        rules += [
            Rule(f"{h}ln_1.weight", (f"{b}norm1.weight",)),
            Rule(f"{h}ln_1.bias", (f"{b}norm1.bias",)),
            Rule(f"{h}attn.c_attn.weight", tuple(f"{name}.weight" for name in qkv), transpose=True),
            *([Rule(f"{h}attn.c_attn.bias", tuple(f"{name}.bias" for name in qkv))] if qkv_bias else []),
            Rule(f"{h}attn.c_proj.weight", (f"{b}att.out_proj.weight",), transpose=True),
            Rule(f"{h}attn.c_proj.bias", (f"{b}att.out_proj.bias",)),
            Rule(f"{h}ln_2.weight", (f"{b}norm2.weight",)),
            Rule(f"{h}ln_2.bias", (f"{b}norm2.bias",)),
            Rule(f"{h}mlp.c_fc.weight", (f"{b}ff.layers.0.weight",), transpose=True),
            Rule(f"{h}mlp.c_fc.bias", (f"{b}ff.layers.0.bias",)),
            Rule(f"{h}mlp.c_proj.weight", (f"{b}ff.layers.2.weight",), transpose=True),
            Rule(f"{h}mlp.c_proj.bias", (f"{b}ff.layers.2.bias",)),
        ]
    return rules + [Rule("ln_f.weight", ("final_norm.weight",)), Rule("ln_f.bias", ("final_norm.bias",))]


def _book_name(name: str) -> str:
    module, _, kind = name.rpartition(".")
    if module.rpartition(".")[2] in {"norm1", "norm2", "final_norm"}:
        return f"{module}.{BOOK_NORM_NAMES[kind]}"
    return name


def _rules_for(model: GPTModel, weights: Weights) -> tuple[list[Rule], str]:
    """The rules that fill ``model`` from ``weights``, and the file's name for the output head."""
    if weights.naming == HF:
        rules = hf_rules(model.cfg.n_layers, model.cfg.qkv_bias)
        if not model.cfg.tie_embeddings:
            # GPT-2 ties lm_head to wte, so files leave it out or store the same tensor twice:
            # an untied head starts as a copy.
            source = "lm_head.weight" if "lm_head.weight" in weights else "wte.weight"
            rules.append(Rule(source, ("out_head.weight",), copy=True))
        return rules, "lm_head.weight"
    rename = _book_name if weights.naming == BOOK else str
    return [Rule(rename(name), (name,)) for name in weights_state_dict(model)], "out_head.weight"


def has_zero_qkv_bias(weights: Weights) -> bool:
    """Whether a Hugging Face file's query/key/value biases are all zero, as gptrain exports a model
    without them (GPT-2's format has no place for their absence, see hf_config.QKV_BIAS_KEY)."""
    names = [name for name in weights.file_names if QKV_BIAS.fullmatch(name)]
    return bool(names) and not any(weights.tensor(name, to_copy=True).any() for name in names)


def _first_few(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def assign_weights(model: GPTModel, weights: Weights, device: torch.device | str | None) -> None:
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
    # A model without qkv bias leaves a file's zero biases out (see has_zero_qkv_bias); other biases it cannot.
    zero_bias = not model.cfg.qkv_bias and weights.naming == HF and has_zero_qkv_bias(weights)
    left_out = (MASK_BUFFER, QKV_BIAS) if zero_bias else (MASK_BUFFER,)
    unexpected = [weights.file_names[name] for name in weights.file_names if name not in wanted
                  and not any(kind.fullmatch(name) for kind in left_out) and not (tied_head and name == head)]
    if missing or unexpected:
        problems = ([f"missing {_first_few(missing)}"] if missing else []) + (
            [f"unexpected {_first_few(unexpected)}"] if unexpected else [])
        raise GptrainError(f"{weights.source} does not fit the model ({'; '.join(problems)}): "
                           "check that the model's config matches the weights")

    for name in weights.file_names:
        if any(kind.fullmatch(name) for kind in left_out):
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
    assign_weights(unwrap_model(model), DictWeights(state_dict, "state dict"), device=None)
    return model


def infer_config(weights: Weights, n_heads: int | None) -> GPTConfig:
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
