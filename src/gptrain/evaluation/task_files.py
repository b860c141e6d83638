"""Task files: HellaSwag, LAMBADA and generic multiple-choice jsonl lines read into :class:`Example` s.

Each line becomes a context and its continuations exactly as lm-evaluation-harness 0.4's
``hellaswag``, ``lambada_openai`` and ``multiple_choice`` tasks make them: the choice follows the
context after a space, HellaSwag's WikiHow markup is cleaned, LAMBADA's last word is the
continuation. A bad line is refused with its place.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptrain.core.errors import GptrainError

TASKS = ("hellaswag", "lambada", "mc")


@dataclass(frozen=True)
class Example:
    """A context and its continuations (each with the space that joins it); ``gold`` is the right
    one's index and ``choices`` the bare choice texts that acc_norm measures."""

    context: str
    continuations: tuple[str, ...]
    choices: tuple[str, ...]
    gold: int = 0


def _hellaswag_preprocess(text: str) -> str:
    # lm-evaluation-harness's cleaning: the WikiHow part of HellaSwag carries "[title]"-style markup.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _need(doc: dict, key: str, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    if key not in doc:
        raise GptrainError(f"{where}: no {key!r} field; {what}")
    value = doc[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = " or ".join(t.__name__ for t in (kind if isinstance(kind, tuple) else (kind,)))
        raise GptrainError(f"{where}: {key!r} must be a {names}, not {type(value).__name__}; {what}")
    return value


def _gold(value: Any, count: int, where: str, key: str) -> int:
    try:
        gold = int(value)
    except (TypeError, ValueError):
        raise GptrainError(f"{where}: {key} {value!r} is not an index: give the right choice's number, 0 to {count - 1}") from None
    if not 0 <= gold < count:
        raise GptrainError(f"{where}: {key} {gold} is out of range for {count} choices: use 0 to {count - 1}")
    return gold


def _strings(values: list, key: str, where: str, what: str) -> list[str]:
    if not values or not all(isinstance(v, str) for v in values):
        raise GptrainError(f"{where}: {key!r} must be a non-empty list of strings; {what}")
    return values


HELLASWAG_FIELDS = "a hellaswag line needs ctx (or ctx_a and ctx_b), endings and label"
LAMBADA_FIELDS = "a lambada line needs text"
MC_FIELDS = "an mc line needs context, choices and answer (the right choice's index)"


def hellaswag_example(doc: dict, where: str) -> Example:
    """lm-evaluation-harness's ``hellaswag``: "activity: ctx_a Ctx_b" and the cleaned endings."""
    if "ctx_a" in doc or "ctx" not in doc:
        ctx_a = _need(doc, "ctx_a", str, where, HELLASWAG_FIELDS)
        ctx = ctx_a + " " + _need(doc, "ctx_b", str, where, HELLASWAG_FIELDS).capitalize()
    else:
        ctx = _need(doc, "ctx", str, where, HELLASWAG_FIELDS)
    if "activity_label" in doc:
        ctx = str(doc["activity_label"]) + ": " + ctx
    endings = _strings(_need(doc, "endings", list, where, HELLASWAG_FIELDS), "endings", where, HELLASWAG_FIELDS)
    _need(doc, "label", (int, str), where, HELLASWAG_FIELDS)
    choices = tuple(_hellaswag_preprocess(ending) for ending in endings)
    return Example(_hellaswag_preprocess(ctx), tuple(" " + c for c in choices), choices,
                   _gold(doc["label"], len(choices), where, "label"))


def lambada_example(doc: dict, where: str) -> Example:
    """lm-evaluation-harness's ``lambada_openai``: every word but the last, then " last"."""
    text = _need(doc, "text", str, where, LAMBADA_FIELDS)
    words = text.split(" ")
    if len(words) < 2:
        raise GptrainError(f"{where}: the text has no space, so there is no last word to predict after a context")
    return Example(" ".join(words[:-1]), (" " + words[-1],), (words[-1],))


def mc_example(doc: dict, where: str) -> Example:
    """Generic multiple choice, as an lm-evaluation-harness ``multiple_choice`` task with the default
    target delimiter: the context, then " " and the choice."""
    context = _need(doc, "context", str, where, MC_FIELDS)
    choices = _strings(_need(doc, "choices", list, where, MC_FIELDS), "choices", where, MC_FIELDS)
    _need(doc, "answer", (int, str), where, MC_FIELDS)
    return Example(context, tuple(" " + c for c in choices), tuple(choices),
                   _gold(doc["answer"], len(choices), where, "answer"))


READERS = {"hellaswag": hellaswag_example, "lambada": lambada_example, "mc": mc_example}


def check_task_name(task: str) -> str:
    if task not in READERS:
        raise GptrainError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    return task


def read_task_file(task: str, path: str | Path, limit: int | None = None) -> list[Example]:
    """The first ``limit`` examples (all when None) of a jsonl task file; blank lines are skipped.

    A line that is not a JSON object, lacks a field or has a label out of range is refused with
    its line number.
    """
    reader = READERS[check_task_name(task)]
    if limit is not None and limit < 1:
        raise GptrainError(f"--limit must be at least 1, not {limit}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise GptrainError(f"task file {path} does not exist: give a jsonl file of {task} examples")
    examples = []
    with open(path, encoding="utf-8", errors="strict") as lines:
        try:
            for number, line in enumerate(lines, 1):
                if limit is not None and len(examples) >= limit:
                    break
                if not line.strip():
                    continue
                where = f"{path} line {number}"
                try:
                    doc = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise GptrainError(f"{where} is not JSON ({exc.msg}): give one JSON object per line") from None
                if not isinstance(doc, dict):
                    raise GptrainError(f"{where} is not a JSON object: give one object per line")
                examples.append(reader(doc, where))
        except UnicodeDecodeError:
            raise GptrainError(f"task file {path} is not UTF-8 text: convert it to UTF-8") from None
    if not examples:
        raise GptrainError(f"task file {path} holds no examples: give a jsonl file with one {task} example per line")
    return examples
