"""gptrain: pre-train GPT-2 style language models from scratch.

The lecture's functions are importable from here under the names the lecture uses::

    from gptrain import GPTModel, GPT_CONFIG_124M, get_tokenizer, text_to_token_ids, ...
"""

from gptrain.core.errors import GptrainError
from gptrain.data.corpus import GPTDatasetV1, create_dataloader_v1, load_corpus, split_text
from gptrain.data.instructions import InstructionDataset, custom_collate_fn
from gptrain.data.labeled import SpamDataset
from gptrain.data.templates import format_input
from gptrain.data.tokenizer import get_tokenizer, text_to_token_ids, token_ids_to_text
from gptrain.evaluation.heldout import evaluate_text, evaluate_tokens
from gptrain.inference.classify import classify_review
from gptrain.inference.cpu import store_weights_transposed
from gptrain.inference.generate import (
    generate,
    generate_and_print_sample,
    generate_batch,
    generate_text_advanced,
    generate_text_simple,
    stream_text,
    stream_tokens,
)
from gptrain.interop.gguf import export_gguf
from gptrain.interop.hub import download_gpt2
from gptrain.interop.pretrained import export_hf, inspect_loaded_model
from gptrain.interop.sources import ModelSource, load_gpt2, resolve_model
from gptrain.interop.weights import load_weights_into_gpt
from gptrain.model.classifier import add_class_head
from gptrain.model.config import GPT_CONFIG_124M, PRESETS, GPTConfig, get_preset
from gptrain.model.gpt import (
    FeedForward,
    GPTModel,
    KVCache,
    MultiHeadAttention,
    TransformerBlock,
    count_parameters,
)
from gptrain.model.lora import add_lora, export_peft_adapter, load_adapter, merge_lora, save_adapter
from gptrain.model.loss import (
    calc_accuracy_loader,
    calc_loss_batch,
    calc_loss_batch_classifier,
    calc_loss_loader,
    calc_loss_loader_classifier,
    calc_loss_manual,
    calc_loss_pytorch,
    perplexity,
)
from gptrain.model.quantize import quantize
from gptrain.reporting.report import write_report
from gptrain.store.checkpoint import load_checkpoint, save_checkpoint
from gptrain.training.book import (
    evaluate_model,
    evaluate_model_classifier,
    plot_losses,
    train_classifier_simple,
    train_model_simple,
)
from gptrain.training.classify import ClassifyConfig, finetune_classifier
from gptrain.training.config import TrainConfig
from gptrain.training.loop import train

__version__ = "0.1.0"

__all__ = [
    "ClassifyConfig",
    "FeedForward",
    "GPTConfig",
    "GPTDatasetV1",
    "GPTModel",
    "GPT_CONFIG_124M",
    "GptrainError",
    "InstructionDataset",
    "KVCache",
    "ModelSource",
    "MultiHeadAttention",
    "PRESETS",
    "SpamDataset",
    "TrainConfig",
    "TransformerBlock",
    "add_class_head",
    "add_lora",
    "calc_accuracy_loader",
    "calc_loss_batch",
    "calc_loss_batch_classifier",
    "calc_loss_loader",
    "calc_loss_loader_classifier",
    "calc_loss_manual",
    "calc_loss_pytorch",
    "classify_review",
    "count_parameters",
    "create_dataloader_v1",
    "custom_collate_fn",
    "download_gpt2",
    "evaluate_model",
    "evaluate_model_classifier",
    "evaluate_text",
    "evaluate_tokens",
    "export_gguf",
    "export_hf",
    "export_peft_adapter",
    "format_input",
    "evaluate_text",
    "evaluate_tokens",
    "finetune_classifier",
    "generate",
    "generate_and_print_sample",
    "generate_batch",
    "generate_text_advanced",
    "generate_text_simple",
    "get_preset",
    "get_tokenizer",
    "inspect_loaded_model",
    "load_adapter",
    "load_checkpoint",
    "load_corpus",
    "load_gpt2",
    "load_weights_into_gpt",
    "merge_lora",
    "perplexity",
    "plot_losses",
    "quantize",
    "resolve_model",
    "save_adapter",
    "save_checkpoint",
    "split_text",
    "store_weights_transposed",
    "stream_text",
    "stream_tokens",
    "text_to_token_ids",
    "token_ids_to_text",
    "train",
    "train_classifier_simple",
    "train_model_simple",
    "write_report",
]
