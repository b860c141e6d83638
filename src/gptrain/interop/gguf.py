"""A model as one GGUF file, the format llama.cpp (and Ollama, LM Studio, ...) runs.

The file is written with ``gguf``, the format's own Python writer from the llama.cpp project,
in the layout llama.cpp's ``convert_hf_to_gguf.py`` gives GPT-2: architecture ``gpt2``, the
tensor names of gguf's tensor table (``token_embd``, ``position_embd``, ``blk.N.attn_qkv``,
...), weights in PyTorch's (out, in) order, query, key and value fused in that order, and
GPT-2's byte-level BPE, or the model's trained one with GPT-2's split (tokens, merges,
``<|endoftext|>`` as BOS and EOS, pre-tokenizer ``gpt-2``). As in the converter, norms, biases and the position embedding stay float32 in
every dtype, a head tied to the embedding is written as a tensor of its own, and a q8_0
matrix whose rows are not a multiple of 32 wide is written as f16.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gptrain.core.errors import GptrainError
from gptrain.core.files import atomic_path
from gptrain.core.oserrors import file_above, reason_and_fix
from gptrain.data.bpe_training import pattern_name
from gptrain.data.tokenizer import get_tokenizer, gpt2_vocab_and_merges
from gptrain.data.trained_tokenizer import Tokenizer, TrainedTokenizer
from gptrain.interop.sources import resolve_model
from gptrain.model.gpt import GPTModel, unwrap_model
from gptrain.store.checkpoint import weights_state_dict

GGUF_DTYPES = ("f32", "f16", "q8_0")
ARCH = "gpt2"
Q8_BLOCK = 32  # q8_0 stores rows in blocks of 32 weights with one f16 scale each
F16_MAX = 65504.0


def _gguf() -> Any:
    """The ``gguf`` package, imported only when a file is written (it is an optional dependency)."""
    try:
        import gguf
    except ImportError:
        raise GptrainError("writing GGUF needs the gguf package: pip install 'gptrain[gguf]' (or pip install gguf)") from None
    return gguf


def check_gguf_model(model: nn.Module, tokenizer: Tokenizer | None = None) -> GPTModel:
    """The plain GPTModel inside ``model``, refusing what llama.cpp's GPT-2 graph and tokenizer cannot run."""
    tokenizer = tokenizer or get_tokenizer()
    model = unwrap_model(model)
    if not isinstance(model, GPTModel):
        raise GptrainError(f"GGUF export takes a GPTModel, not {type(model).__name__}")
    cfg = model.cfg
    if not isinstance(model.tok_emb, nn.Embedding) or not isinstance(model.out_head, nn.Linear):
        raise GptrainError("the model's weights are not plain float tensors (quantized with gptrain.quantize?): "
                           "export the float model; GGUF has its own q8_0")
    rows = model.out_head.weight.shape[0]
    if rows != cfg.vocab_size or model.out_head.weight.shape[1] != cfg.emb_dim:
        raise GptrainError(f"the model's output head has {rows} outputs, not one per token of its {cfg.vocab_size}-token "
                           "vocabulary (a classifier?): llama.cpp runs language models only; export the model "
                           "before its head was replaced")
    if cfg.vocab_size < tokenizer.n_vocab:
        raise GptrainError(f"the model has {cfg.vocab_size} token embeddings, fewer than its tokenizer "
                           f"{tokenizer.name} needs ({tokenizer.n_vocab}): llama.cpp would look up tokens the model lacks")
    if isinstance(tokenizer, TrainedTokenizer):
        pattern = pattern_name(tokenizer.spec().get("pre_tokenizer") or {})
        if pattern != "gpt2":
            # llama.cpp names each split it knows; none is known to split exactly as this one.
            raise GptrainError(f"the model's tokenizer {tokenizer.name} splits text with the {pattern} pattern, which "
                               "llama.cpp's GPT-2 reads differently: export --format hf instead, or train the tokenizer "
                               "with --pattern gpt2")
    return model


def gguf_tensors(model: GPTModel) -> dict[str, torch.Tensor]:
    """``model``'s tensors under GGUF's GPT-2 names, in PyTorch's (out, in) order, on the CPU."""
    gguf = _gguf()
    names = gguf.TENSOR_NAMES
    tensor = gguf.MODEL_TENSOR
    cfg = model.cfg
    ours = {name: t.detach().cpu() for name, t in weights_state_dict(model).items()}  # LoRA merged
    zero_bias = torch.zeros(cfg.emb_dim, dtype=ours["tok_emb.weight"].dtype)
    out = {
        f"{names[tensor.TOKEN_EMBD]}.weight": ours["tok_emb.weight"],
        f"{names[tensor.POS_EMBD]}.weight": ours["pos_emb.weight"],
        f"{names[tensor.OUTPUT_NORM]}.weight": ours["final_norm.weight"],
        f"{names[tensor.OUTPUT_NORM]}.bias": ours["final_norm.bias"],
        f"{names[tensor.OUTPUT]}.weight": ours.get("out_head.weight", ours["tok_emb.weight"]),
    }
    for i in range(cfg.n_layers):
        ours_block = f"trf_blocks.{i}."
        parts = {
            tensor.ATTN_NORM: "norm1", tensor.ATTN_OUT: "att.out_proj", tensor.FFN_NORM: "norm2",
            tensor.FFN_UP: "ff.layers.0", tensor.FFN_DOWN: "ff.layers.2",
        }
        for kind, module in parts.items():
            for field in ("weight", "bias"):
                out[f"{names[kind].format(bid=i)}.{field}"] = ours[f"{ours_block}{module}.{field}"]
        qkv = names[tensor.ATTN_QKV].format(bid=i)
        projections = [f"{ours_block}att.W_{part}" for part in ("query", "key", "value")]
        out[f"{qkv}.weight"] = torch.cat([ours[f"{p}.weight"] for p in projections])
        # llama.cpp's GPT-2 always adds a qkv bias: zeros compute the same function as none.
        out[f"{qkv}.bias"] = torch.cat([ours.get(f"{p}.bias", zero_bias) for p in projections])
    return out


def _stored(gguf: Any, name: str, tensor: torch.Tensor, dtype: str) -> tuple[np.ndarray, Any]:
    """The array to write for one tensor and its GGML type, as convert_hf_to_gguf.py chooses them."""
    kinds = gguf.GGMLQuantizationType
    data = tensor.float().numpy()
    if data.ndim == 1 or name.startswith(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.POS_EMBD]) or dtype == "f32":
        return data, kinds.F32
    if dtype == "q8_0" and data.shape[-1] % Q8_BLOCK == 0:
        return gguf.quants.quantize(data, kinds.Q8_0), kinds.Q8_0
    if not np.isfinite(data).all() or np.abs(data).max() > F16_MAX:
        raise GptrainError(f"tensor {name} holds values beyond float16's range (±{F16_MAX:g}) or not finite: "
                           "export with dtype f32")
    return data.astype(np.float16), kinds.F16


def _add_metadata(writer: Any, gguf: Any, cfg: Any, dtype: str, name: str, tokenizer: Tokenizer) -> None:
    file_types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                  "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    writer.add_name(name)
    writer.add_block_count(cfg.n_layers)
    writer.add_context_length(cfg.context_length)
    writer.add_embedding_length(cfg.emb_dim)
    writer.add_feed_forward_length(4 * cfg.emb_dim)
    writer.add_head_count(cfg.n_heads)
    writer.add_layer_norm_eps(1e-5)  # nn.LayerNorm's eps in model.gpt
    writer.add_file_type(file_types[dtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    vocab, merges = (tokenizer.vocab_and_merges() if isinstance(tokenizer, TrainedTokenizer)
                     else gpt2_vocab_and_merges())
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    types = [gguf.TokenType.NORMAL] * len(tokens)
    types[tokenizer.eot_token] = gguf.TokenType.CONTROL
    # A vocabulary wider than the tokenizer's (rounded up for speed) gets placeholder tokens, as the converter gives it.
    for i in range(len(tokens), cfg.vocab_size):
        tokens.append(f"[PAD{i}]")
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([f"{first} {second}" for first, second in merges])
    writer.add_bos_token_id(tokenizer.eot_token)
    writer.add_eos_token_id(tokenizer.eot_token)
    writer.add_unk_token_id(tokenizer.eot_token)
    writer.add_add_bos_token(False)  # gptrain feeds a prompt as it is: no token before it
    writer.add_add_eos_token(False)


def _check_target(out_file: Path, source: Any, overwrite: bool) -> None:
    if out_file.is_dir():
        raise GptrainError(f"{out_file} is a folder: give a file path such as {out_file / 'model.gguf'}")
    if (blocker := file_above(out_file)) is not None:
        raise GptrainError(f"{out_file} lies under {blocker}, which is a file: choose another output path")
    if not isinstance(source, nn.Module) and out_file.resolve() == Path(source).expanduser().resolve():
        raise GptrainError(f"{out_file} is the model being exported: choose another output path")
    if out_file.exists() and not overwrite:
        raise GptrainError(f"{out_file} already exists: choose another output path, or overwrite it "
                           "(overwrite=True, --overwrite)")


def export_gguf(source: nn.Module | str | Path, out_file: str | Path, *, dtype: str = "f32",
                overwrite: bool = False, n_heads: int | None = None, name: str | None = None,
                tokenizer: Tokenizer | None = None) -> Path:
    """Write a model as a GGUF file that llama.cpp runs as GPT-2; returns the file's path.

    ``source`` is a GPTModel or anything :func:`gptrain.load_gpt2` takes (a gptrain checkpoint
    or run directory, a Hugging Face folder, a state dict file, a GPT-2 size). ``dtype`` is
    ``f32``, ``f16`` or ``q8_0`` (8-bit blocks with one scale per 32 weights, llama.cpp's own
    format). ``name`` goes into ``general.name`` (default: the source's file name). The tokenizer is
    the source's own (a GPTModel's: ``tokenizer``, GPT-2's by default). The file is
    written under a temporary name beside ``out_file`` and renamed into place, so an existing
    file (replaced only with ``overwrite=True``) is never left half-written.
    """
    if dtype not in GGUF_DTYPES:
        raise GptrainError(f"unknown GGUF dtype {dtype!r}: choose {', '.join(GGUF_DTYPES)}")
    gguf = _gguf()
    out_file = Path(out_file).expanduser()
    _check_target(out_file, source, overwrite)
    if not isinstance(source, nn.Module):
        resolved = resolve_model(source, n_heads=n_heads)
        model, tokenizer = resolved.model, resolved.tokenizer
    else:
        model = source
    tokenizer = tokenizer or get_tokenizer()
    model = check_gguf_model(model, tokenizer)
    tensors = gguf_tensors(model)
    name = name or (Path(source).expanduser().resolve().name if not isinstance(source, nn.Module) else "gptrain")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(out_file) as tmp:
            writer = gguf.GGUFWriter(tmp, ARCH)
            try:
                _add_metadata(writer, gguf, model.cfg, dtype, name, tokenizer)
                for tensor_name, tensor in tensors.items():
                    data, kind = _stored(gguf, tensor_name, tensor, dtype)
                    writer.add_tensor(tensor_name, data, raw_dtype=kind)
                writer.write_header_to_file()
                writer.write_kv_data_to_file()
                writer.write_tensors_to_file()
            finally:
                writer.close()
    except OSError as exc:
        raise GptrainError(f"cannot write {out_file}: {reason_and_fix(exc)}") from None
    return out_file
