"""What ``gptrain eval`` runs: a model, named by any model reference, scored on a text
or on a benchmark's file. The data is read and checked first: a bad or empty file costs no waiting
for the model to load."""

from __future__ import annotations

from pathlib import Path

from gptrain.core.runtime import resolve_device, resolve_precision
from gptrain.evaluation.heldout import (
    Evaluation,
    check_eval_tokens,
    check_window_args,
    evaluate_tokens,
    load_eval_tokens,
)
from gptrain.evaluation.tasks import TaskResult, check_task_name, evaluate_task, read_task_file
from gptrain.interop.sources import resolve_model


def score_text(data: str | Path, *, model: str | Path, n_heads: int | None = None, split: str | None = None,
               train_ratio: float = 0.9, text_field: str = "text", context_length: int | None = None,
               stride: int | None = None, batch_size: int = 8, device: str = "auto",
               precision: str = "auto", quantize: str | None = None) -> tuple[str, Evaluation]:
    """The description of ``data`` (see :func:`load_eval_tokens`) and the loss on it of the model that
    ``model`` names (see :func:`gptrain.interop.sources.resolve_model`), in sliding windows of
    ``context_length`` tokens every ``stride`` (both the model's context by default); ``quantize="int8"``
    scores it with int8 weights (see :func:`gptrain.model.quantize.quantize`)."""
    tokens, num_bytes, label = load_eval_tokens(data, split, train_ratio, text_field)
    check_eval_tokens(len(tokens))
    resolved = resolve_device(device)
    loaded = resolve_model(model, device=resolved, n_heads=n_heads, quantize=quantize).model
    context = loaded.cfg.context_length if context_length is None else context_length
    check_window_args(context, context if stride is None else stride, loaded.cfg.context_length)
    result = evaluate_tokens(loaded, tokens, context_length=context_length, stride=stride, batch_size=batch_size,
                             precision=resolve_precision(precision, resolved), num_bytes=num_bytes)
    return label, result


def score_task(task: str, data: str | Path, *, model: str | Path, n_heads: int | None = None,
               limit: int | None = None, batch_size: int = 8, device: str = "auto",
               precision: str = "auto", quantize: str | None = None) -> TaskResult:
    """The score of the model that ``model`` names on the first ``limit`` examples of ``task``'s jsonl file
    ``data`` (with int8 weights for ``quantize="int8"``)."""
    examples = read_task_file(check_task_name(task), data, limit)
    resolved = resolve_device(device)
    loaded = resolve_model(model, device=resolved, n_heads=n_heads, quantize=quantize).model
    return evaluate_task(loaded, task, examples, batch_size=batch_size,
                         precision=resolve_precision(precision, resolved), source=str(data))

