"""GPTModel out to a Hugging Face GPT-2 folder: weights, config.json and the tokenizer's files (GPT-2's,
or the ``tokenizer.json`` of a trained one, which ``AutoTokenizer`` reads alike)."""

from __future__ import annotations

import json
from pathlib import Path

import safetensors
import torch

from gptrain.core.errors import GptrainError
from gptrain.core.files import staged_dir, write_json_atomic
from gptrain.core.oserrors import reason_and_fix, wrapped_os_error
from gptrain.core.tensorfile import save_tensors
from gptrain.data.bpe_training import SPECIAL_TOKENS_MAP, TOKENIZER_CONFIG
from gptrain.data.tokenizer import END_OF_TEXT, gpt2_vocab_and_merges
from gptrain.data.trained_tokenizer import TOKENIZER_FILE, Tokenizer, TrainedTokenizer
from gptrain.interop.hf_config import HF_CONFIG, HF_SAFETENSORS, hf_config_dict
from gptrain.interop.weights import Rule, hf_rules
from gptrain.model.gpt import GPTModel, unwrap_model
from gptrain.store.checkpoint import weights_state_dict

def hf_state_dict(model: GPTModel) -> dict[str, torch.Tensor]:
    """``model``'s tensors under GPT2LMHeadModel's names and layouts (contiguous, on the model's device).

    A model without qkv bias gets zero biases (the same function); an untied head is written
    as ``lm_head.weight``, a tied one is left out, as transformers writes it.
    """
    model = unwrap_model(model)
    cfg = model.cfg
    ours = weights_state_dict(model)  # a LoRA model's adapters merged into their weights
    rules = hf_rules(cfg.n_layers)
    if not cfg.tie_embeddings:
        rules.append(Rule("lm_head.weight", ("out_head.weight",)))
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


def write_trained_tokenizer_files(folder: Path, tokenizer: TrainedTokenizer, model_max_length: int) -> None:
    """A trained tokenizer's ``tokenizer.json`` as it was trained (the same sha256), and transformers' config."""
    (folder / TOKENIZER_FILE).write_bytes(tokenizer.data)
    write_json_atomic(folder / "tokenizer_config.json", TOKENIZER_CONFIG | {"model_max_length": model_max_length})
    write_json_atomic(folder / "special_tokens_map.json", SPECIAL_TOKENS_MAP)


def write_hf_folder(model: GPTModel, out: Path, tokenizer: Tokenizer | None = None) -> Path:
    """Write ``model`` to ``out`` as a Hugging Face GPT-2 folder with its tokenizer (GPT-2's by default),
    under a temporary name renamed into place."""
    tensors = {name: tensor.cpu() for name, tensor in hf_state_dict(model).items()}
    try:
        with staged_dir(out) as tmp:
            save_tensors(tensors, tmp / HF_SAFETENSORS, metadata={"format": "pt"})
            write_json_atomic(tmp / HF_CONFIG,
                              hf_config_dict(model.cfg, tensors["transformer.wte.weight"].dtype, tokenizer))
            if isinstance(tokenizer, TrainedTokenizer):
                write_trained_tokenizer_files(tmp, tokenizer, model.cfg.context_length)
            else:
                write_tokenizer_files(tmp, model.cfg.context_length)
    except (OSError, safetensors.SafetensorError) as exc:
        os_error = wrapped_os_error(exc)
        if os_error is None:
            raise
        raise GptrainError(f"cannot write {out}: {reason_and_fix(os_error)}") from None
    return out
