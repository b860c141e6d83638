"""An instruction-tuned model on instruction records, as ``gptrain eval --data FILE.json`` scores it:
the mean loss on the reply tokens, the greedy answers and their exact match with the records' outputs,
and optionally a judge model's 0-100 scores (the book's chapter 7, through any OpenAI-compatible
chat endpoint)."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from gptrain.core.errors import GptrainError
from gptrain.core.runtime import autocast_context, resolve_device, resolve_precision
from gptrain.data.instructions import IGNORE_INDEX, InstructionExamples, read_instruction_file
from gptrain.data.templates import format_input, record_messages, render_prompt
from gptrain.data.tokenizer import encode_text
from gptrain.inference.generate import generate_batch
from gptrain.interop.sources import resolve_model

JUDGE_MODEL = "llama3"  # the book's judge, served by Ollama


@dataclass
class AnswerResult:
    records: int
    loss: float  # mean over the reply tokens (with their end-of-text)
    exact_match: float  # share of greedy answers equal to the reference output, spaces at the ends aside
    answers: list[str] = field(repr=False)
    judge_scores: list[int] | None = None  # 0-100 per answer the judge scored
    judge_unparsed: int = 0  # judge replies that were not an integer
    seconds: float = 0.0

    @property
    def judge_mean(self) -> float | None:
        return sum(self.judge_scores) / len(self.judge_scores) if self.judge_scores else None

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values.pop("answers")
        return values | {"judge_mean": self.judge_mean}


def reference_reply(record: Any) -> str:
    """The reply a record teaches: its output, or its conversation's last assistant turn."""
    return record_messages(record)[-1]["content"]


def _prompt(template: str, record: Any) -> str:
    messages = record_messages(record)
    return render_prompt(template, messages[:-1])


def judge_prompt(record: Any, answer: str) -> str:
    """The book's prompt (chapter 7's generate_model_scores) for one answer."""
    messages = record_messages(record)
    first = messages[0] if messages[0]["role"] != "system" else messages[1]
    entry = {"instruction": first.get("instruction", first["content"]), "input": first.get("input", "")}
    return (f"Given the input `{format_input(entry)}` "
            f"and correct output `{reference_reply(record)}`, "
            f"score the model response `{answer}`"
            f" on a scale from 0 to 100, where 100 is the best score. "
            f"Respond with the integer number only.")


def judge_scores(records: Sequence[Any], answers: Sequence[str], url: str, model: str = JUDGE_MODEL
                 ) -> tuple[list[int], int]:
    """Scores from the chat endpoint at ``url`` (an OpenAI-compatible base URL such as Ollama's
    http://localhost:11434/v1), asked deterministically as the book asks; and the count of replies
    that were not an integer (left out, as the book does)."""
    try:
        import openai
    except ImportError:
        raise GptrainError("--judge needs the openai client: pip install 'gptrain[judge]'") from None
    base_url = url.rstrip("/").removesuffix("/chat/completions")
    client = openai.OpenAI(base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY", "unused"), max_retries=1)
    scores, unparsed = [], 0
    for record, answer in zip(records, answers):
        try:
            reply = client.chat.completions.create(model=model, temperature=0, seed=123, messages=[
                {"role": "user", "content": judge_prompt(record, answer)}])
        except openai.OpenAIError as exc:
            raise GptrainError(f"the judge at {url} did not answer ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:200]}): check --judge URL and --judge-model") from None
        try:
            scores.append(int((reply.choices[0].message.content or "").strip()))
        except ValueError:
            unparsed += 1
    return scores, unparsed


@torch.no_grad()
def reply_loss(model, examples: InstructionExamples, batch_size: int, device, precision: str) -> float:
    total, scored = 0.0, 0
    with autocast_context(device.type, precision):
        for start in range(0, len(examples), batch_size):
            inputs, targets = examples.batch(range(start, min(start + batch_size, len(examples))))
            logits = model(inputs.to(device))
            total += F.cross_entropy(logits.flatten(0, 1).float(), targets.to(device).flatten(),
                                     reduction="sum").item()
            scored += int((targets != IGNORE_INDEX).sum())
    return total / scored


def answer_records(data: str | Path, *, model: str | Path, n_heads: int | None = None, limit: int | None = None,
                   batch_size: int = 8, max_new_tokens: int = 256, device: str = "auto", precision: str = "auto",
                   judge: str | None = None, judge_model: str = JUDGE_MODEL) -> AnswerResult:
    """Score the instruction model ``model`` names on the records of ``data`` (the first ``limit``)."""
    started = time.perf_counter()
    records = read_instruction_file(data)[:limit]
    for number, record in enumerate(records, 1):
        if not reference_reply(record).strip():
            raise GptrainError(f"{data}, record {number}: the response is empty: give every record a non-empty "
                               "output or reply")
    resolved = resolve_device(device)
    source = resolve_model(model, device=resolved, n_heads=n_heads)
    if source.template is None:
        raise GptrainError(f"{model} is a base model (its checkpoint names no prompt template): give an "
                           "instruction-tuned run, such as one made by gptrain finetune instruct")
    loaded, context = source.model, source.model.cfg.context_length
    tokenizer = source.tokenizer
    examples = InstructionExamples(records, tokenizer, source.template, context, where=str(data))
    loss = reply_loss(loaded, examples, batch_size, resolved, resolve_precision(precision, resolved))
    answers = []
    for start in range(0, len(records), batch_size):
        prompts = [encode_text(tokenizer, _prompt(source.template, r))[-context:]
                   for r in records[start:start + batch_size]]
        rows = generate_batch(loaded, prompts, max_new_tokens, context, eos_id=tokenizer.eot_token)
        answers += [tokenizer.decode(row[len(prompt):].tolist()).strip() for row, prompt in zip(rows, prompts)]
    matches = sum(answer == reference_reply(r).strip() for answer, r in zip(answers, records))
    result = AnswerResult(len(records), loss, matches / len(records), answers)
    if judge is not None:
        result.judge_scores, result.judge_unparsed = judge_scores(records, answers, judge, judge_model)
    result.seconds = time.perf_counter() - started
    return result


__all__ = ["AnswerResult", "answer_records", "judge_prompt", "judge_scores", "reference_reply"]
