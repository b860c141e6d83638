"""Prompt templates of instruction and chat models: how a record becomes text, and which text is learned.

Two templates, saved with a fine-tuned checkpoint so that every later command formats prompts the
way the model was taught:

  * ``alpaca``, the book's (chapter 7): the instruction, an optional input, then ``### Response:``;
  * ``chat``, for conversations: ``### User:`` and ``### Assistant:`` turns after an optional system text.

A record is the book's ``{"instruction", "input", "output"}`` or ``{"messages": [{"role", "content"}, ...]}``;
either renders in either template. Each assistant reply is followed by end-of-text, which the model learns
so that generation stops there; the book's collate adds that token as the first padding token, which
gives the same token sequence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gptrain.core.errors import GptrainError
from gptrain.data.tokenizer import END_OF_TEXT

ALPACA = "alpaca"
CHAT = "chat"
TEMPLATES = (ALPACA, CHAT)

ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")
RESPONSE_HEADER = "\n\n### Response:\n"
USER_HEADER = "### User:\n"
ASSISTANT_HEADER = "### Assistant:\n"
ROLES = ("system", "user", "assistant")


def format_input(entry: Mapping[str, Any]) -> str:
    """The book's Alpaca prompt of an ``{"instruction", "input"}`` entry (chapter 7), without the response."""
    instruction_text = f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{entry['instruction']}"
    input_text = f"\n\n### Input:\n{entry['input']}" if entry["input"] else ""
    return instruction_text + input_text


@dataclass(frozen=True)
class Segment:
    """A piece of a rendered record; ``learned`` marks a reply (with its end-of-text), the part a masked
    loss counts."""

    text: str
    learned: bool


def check_template(template: str) -> str:
    """``template`` if gptrain knows it, else one line naming the known ones."""
    if template not in TEMPLATES:
        raise GptrainError(f"unknown prompt template {template!r}: use one of {', '.join(TEMPLATES)}")
    return template


def _text_field(record: Mapping[str, Any], key: str, *, required: bool) -> str:
    value = record.get(key, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise GptrainError(f"field {key!r} is {type(value).__name__}, not text: give it as a JSON string")
    if required and not value.strip():
        raise GptrainError(f"field {key!r} is missing or empty: every record needs a non-empty {key!r}")
    return value


def record_messages(record: Mapping[str, Any]) -> list[dict[str, str]]:
    """A record's conversation: its ``messages``, or the book's entry as one user turn and one reply."""
    if not isinstance(record, Mapping):
        raise GptrainError(f"a record is {type(record).__name__}, not an object: give "
                           '{"instruction", "input", "output"} or {"messages": [...]}')
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise GptrainError('"messages" is not a non-empty list: give [{"role": ..., "content": ...}, ...]')
        return [_message(m) for m in messages]
    if "instruction" not in record:
        raise GptrainError(f"a record has neither 'instruction' nor 'messages' (it has {sorted(record) or 'no'} "
                           "fields): give the book's instruction/input/output or chat messages")
    instruction = _text_field(record, "instruction", required=True)
    given = _text_field(record, "input", required=False)
    user = f"{instruction}\n\n{given}" if given else instruction
    return [{"role": "user", "content": user, "instruction": instruction, "input": given},
            {"role": "assistant", "content": _text_field(record, "output", required=False)}]


def _message(message: Any) -> dict[str, str]:
    if not isinstance(message, Mapping) or message.get("role") not in ROLES:
        raise GptrainError(f"a message is not {{\"role\": one of {', '.join(ROLES)}, \"content\": text}}: "
                           f"got {str(message)[:60]}")
    return {"role": message["role"], "content": _text_field(message, "content", required=False)}


def _check_turns(messages: Sequence[Mapping[str, str]], *, ends_with: str) -> None:
    turns = [m["role"] for m in messages if m["role"] != "system"]
    if any(m["role"] == "system" for m in messages[1:]):
        raise GptrainError("a system message may only come first: move it to the start of the conversation")
    expected = ["user", "assistant"] * len(turns)
    if not turns or turns != expected[:len(turns)] or turns[-1] != ends_with:
        raise GptrainError(f"the conversation's turns are {turns}: they must alternate user, assistant, "
                           f"starting with user and ending with {ends_with}")


def _user_text(template: str, message: Mapping[str, str], system: str | None) -> str:
    if template == CHAT:
        return f"{USER_HEADER}{message['content']}\n\n{ASSISTANT_HEADER}"
    instruction = message.get("instruction", message["content"])
    entry = {"instruction": instruction, "input": message.get("input", "")}
    prompt = format_input(entry)
    if system:  # the system text takes the place of the preamble
        prompt = system + prompt[len(ALPACA_PREAMBLE):]
    return prompt + RESPONSE_HEADER


def _render(template: str, messages: Sequence[Mapping[str, str]]) -> list[Segment]:
    check_template(template)
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    segments = []
    if system and template == CHAT:
        segments.append(Segment(f"{system}\n\n", learned=False))
    for message in messages:
        if message["role"] == "user":
            segments.append(Segment(_user_text(template, message, system), learned=False))
        elif message["role"] == "assistant":
            segments.append(Segment(message["content"] + END_OF_TEXT, learned=True))
    return segments


def render_record(template: str, record: Mapping[str, Any]) -> list[Segment]:
    """A training record as text segments: prompts (not learned) and replies ending in end-of-text (learned)."""
    messages = record_messages(record)
    _check_turns(messages, ends_with="assistant")
    if not messages[-1]["content"].strip():
        raise GptrainError("a record's response is empty: give every record a non-empty output or reply")
    return _render(template, messages)


def render_prompt(template: str, messages: Sequence[Mapping[str, Any]]) -> str:
    """The text a model continues to write the next reply to ``messages`` (which end with a user turn)."""
    checked = [_message(m) for m in messages]
    _check_turns(checked, ends_with="user")
    return "".join(segment.text for segment in _render(template, checked))


def render_instruction(template: str, instruction: str) -> str:
    """The prompt of one instruction with no history, as ``gptrain generate --prompt`` gives it."""
    return render_prompt(template, [{"role": "user", "content": instruction}])


__all__ = ["ALPACA", "CHAT", "TEMPLATES", "Segment", "check_template", "format_input", "record_messages",
           "render_instruction", "render_prompt", "render_record"]
