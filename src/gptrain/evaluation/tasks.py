"""Benchmark tasks: HellaSwag, LAMBADA and generic multiple choice, scored as lm-evaluation-harness does.

Every task is a list of :class:`Example`: a context and one or more continuations, each scored by
the sum of the log-probabilities of its tokens given the context. Multiple-choice tasks pick the
continuation with the highest sum (``acc``), or the highest sum per character of the choice
(``acc_norm``) or per UTF-8 byte (``acc_bytes``); LAMBADA asks whether the greedy continuation is
the last word (``acc``) and reports the perplexity of that word.

The documents are turned into contexts and continuations (:mod:`gptrain.evaluation.task_files`),
and those into tokens, exactly as lm-evaluation-harness 0.4's ``hellaswag``, ``lambada_openai``
and ``multiple_choice`` tasks with its Hugging Face model do, so the figures are the ones
published models are compared on: trailing spaces of a context move to the continuation, the
continuation's tokens are those of ``context + continuation`` after the context's own tokens,
and an input longer than the model's window loses tokens on the left.

Speed: the choices of an example share their context, so an example is one packed row, the
context followed by every choice, where each choice attends to the context and to itself and
its positions continue the context's. The context is computed once instead of once per choice,
and only the positions that predict a continuation token go through the output head.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from gptrain.core.errors import GptrainError
from gptrain.core.runtime import AUTOCAST_DTYPES, autocast_context
from gptrain.data.tokenizer import encode_text, get_tokenizer
from gptrain.data.trained_tokenizer import Tokenizer
from gptrain.evaluation.task_files import Example, check_task_name, read_task_file
from gptrain.model.gpt import unwrap_model

@dataclass
class TaskResult:
    task: str
    examples: int
    metrics: dict[str, float | None]  # e.g. acc, acc_stderr, acc_norm, acc_norm_stderr, perplexity
    seconds: float
    source: str = ""
    per_example: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def examples_per_s(self) -> float:
        return self.examples / max(self.seconds, 1e-9)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "data": self.source, "examples": self.examples, **self.metrics,
                "seconds": self.seconds, "examples_per_s": self.examples_per_s}


# --- Tokens, as lm-evaluation-harness's Hugging Face model makes them ---

def encode_pair(context: str, continuation: str, tokenizer: Tokenizer | None = None) -> tuple[list[int], list[int]]:
    """The context's tokens and the continuation's (``tokenizer``'s, GPT-2's by default): trailing
    spaces of the context join the continuation, and the continuation's tokens are those of the
    whole text after the context's own tokens (so a merge across the boundary counts for the
    continuation). An empty context becomes ``<|endoftext|>``."""
    tokenizer = tokenizer or get_tokenizer()
    encode = lambda text: encode_text(tokenizer, text)
    if not context:
        continuation_ids = encode(continuation)
        if continuation_ids and continuation_ids[0] == tokenizer.eot_token:
            return continuation_ids[:1], continuation_ids[1:]
        return [tokenizer.eot_token], continuation_ids
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = encode(context)
    return context_ids, encode(context + continuation)[len(context_ids):]


@dataclass
class _Row:
    """One packed input row: context tokens, then each continuation's tokens but its last.

    ``scored`` holds, for each continuation, its (request id, tokens); the row predicts every token
    of every continuation."""

    context: list[int]
    scored: list[tuple[int, list[int]]]

    @property
    def length(self) -> int:
        return len(self.context) + sum(len(tokens) - 1 for _, tokens in self.scored)


def _pack(context: list[int], continuations: list[list[int]], first_id: int, window: int) -> list[_Row]:
    """One row for the continuations that fit in the window after the whole context; one row each,
    cut on the left as lm-evaluation-harness cuts it, for those that do not."""
    shared = _Row(context, [])
    rows = [shared]
    for offset, tokens in enumerate(continuations):
        request = first_id + offset
        if len(context) + len(tokens) - 1 <= window:
            shared.scored.append((request, tokens))
        else:
            kept = (context + tokens)[-(window + 1):]
            rows.append(_Row(kept[:len(kept) - len(tokens)], [(request, tokens)]))
    return [row for row in rows if row.scored]


def _batch_inputs(rows: list[_Row], device: torch.device):
    """Token ids, positions, the attention mask, and for every scored token the flat index of the
    position that predicts it, its target and its request id."""
    width = max(row.length for row in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    positions = np.zeros((len(rows), width), dtype=np.int64)
    segment = np.full((len(rows), width), -1, dtype=np.int64)  # 0: context, k: continuation k, -1: padding
    predictors, targets, requests = [], [], []
    for r, row in enumerate(rows):
        n = len(row.context)
        ids[r, :n] = row.context
        positions[r, :n] = np.arange(n)
        segment[r, :n] = 0
        start = n
        for k, (request, tokens) in enumerate(row.scored, 1):
            inputs = tokens[:-1]
            ids[r, start:start + len(inputs)] = inputs
            positions[r, start:start + len(inputs)] = np.arange(n, n + len(inputs))
            segment[r, start:start + len(inputs)] = k
            # Token 0 is predicted by the context's last position, token i by the continuation's i - 1.
            predictors += [r * width + n - 1] + [r * width + start + i for i in range(len(inputs))]
            targets += tokens
            requests += [request] * len(tokens)
            start += len(inputs)
    segment_t = torch.from_numpy(segment).to(device)
    seq = torch.arange(width, device=device)
    causal = seq[None, :] <= seq[:, None]
    same = (segment_t[:, None, :] == 0) | (segment_t[:, None, :] == segment_t[:, :, None])
    mask = (causal[None] & same)[:, None]  # (rows, 1, queries, keys); padding sees the context and itself
    as_tensor = lambda values: torch.tensor(values, dtype=torch.long, device=device)
    return (torch.from_numpy(ids).to(device), torch.from_numpy(positions).to(device), mask,
            as_tensor(predictors), as_tensor(targets), as_tensor(requests))


def _score_rows(model: nn.Module, rows: list[_Row], num_requests: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability and greedy mismatches of every request scored in ``rows``."""
    ids, positions, mask, predictors, targets, requests = _batch_inputs(rows, device)
    # Through forward, not its parts: a sharded model gathers its weights in forward's hooks.
    logits = model(ids, positions=positions, attn_mask=mask, logits_at=predictors).float()
    logprobs = F.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]
    misses = (logits.argmax(dim=-1) != targets).double()
    loglikelihood = torch.zeros(num_requests, dtype=torch.float64, device=device).index_add_(0, requests, logprobs.double())
    wrong = torch.zeros(num_requests, dtype=torch.float64, device=device).index_add_(0, requests, misses)
    return loglikelihood, wrong


def score_examples(model: nn.Module, examples: Sequence[Example], *, batch_size: int = 16,
                   precision: str = "fp32", progress: bool = True,
                   tokenizer: Tokenizer | None = None) -> list[list[tuple[float, bool]]]:
    """For every example and continuation, (sum of log-probabilities of its tokens given the context,
    whether greedy decoding from the context gives exactly those tokens)."""
    if batch_size < 1:
        raise GptrainError(f"--batch-size must be at least 1, not {batch_size}")
    if precision not in {"fp32", *AUTOCAST_DTYPES}:
        raise GptrainError(f"unknown precision {precision!r}: use fp32, bf16 or fp16")
    model = unwrap_model(model)
    window = model.cfg.context_length
    rows, owner = [], []  # owner[request]: the example a continuation belongs to
    for e, example in enumerate(examples):
        pairs = [encode_pair(example.context, continuation, tokenizer) for continuation in example.continuations]
        if any(not tokens for _, tokens in pairs):
            raise GptrainError(f"example {e + 1}: a continuation has no tokens of its own: give non-empty choices")
        longest = max(len(tokens) for _, tokens in pairs)
        if longest > window:
            raise GptrainError(f"example {e + 1}: a continuation of {longest} tokens does not fit the model's window "
                               f"of {window}: shorten it")
        rows += _pack(pairs[0][0], [tokens for _, tokens in pairs], len(owner), window)
        owner += [e] * len(pairs)
    device = next(model.parameters()).device
    # Longest first, as lm-evaluation-harness orders them: similar lengths share a batch, so little padding.
    rows.sort(key=lambda row: -row.length)
    loglikelihood = torch.zeros(len(owner), dtype=torch.float64, device=device)
    wrong = torch.zeros(len(owner), dtype=torch.float64, device=device)
    autocast = autocast_context(device.type, precision)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(owner), desc="choices", unit="choice", disable=None if progress else True, leave=False)
    try:
        with torch.inference_mode(), autocast:
            for i in range(0, len(rows), batch_size):
                batch = rows[i:i + batch_size]
                ll, miss = _score_rows(model, batch, len(owner), device)
                loglikelihood += ll
                wrong += miss
                bar.update(sum(len(row.scored) for row in batch))
    finally:
        bar.close()
        model.train(was_training)
    loglikelihood, greedy = loglikelihood.cpu().tolist(), (wrong == 0).cpu().tolist()
    results: list[list[tuple[float, bool]]] = [[] for _ in examples]
    for request, e in enumerate(owner):
        results[e].append((loglikelihood[request], greedy[request]))
    return results


# --- Scores ---

def mean_stderr(values: Sequence[float]) -> float | None:
    """The standard error of a mean, from the sample standard deviation (n - 1), as
    lm-evaluation-harness computes it; None for fewer than two values."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) / math.sqrt(len(values))


def multiple_choice_metrics(examples: Sequence[Example], scores: list[list[tuple[float, bool]]]) -> tuple[dict, list]:
    """acc (highest log-likelihood), acc_norm (per character of the choice, lm-evaluation-harness's
    acc_norm) and acc_bytes (per UTF-8 byte), each with its standard error."""
    hits: dict[str, list[float]] = {"acc": [], "acc_norm": [], "acc_bytes": []}
    per_example = []
    for example, score in zip(examples, scores):
        lls = np.array([ll for ll, _ in score])
        chars = np.array([float(len(c)) for c in example.choices])
        utf8 = np.array([float(len(c.encode("utf-8"))) for c in example.choices])
        # np.argmax takes the first of equal scores, as lm-evaluation-harness does; an empty choice divides to inf.
        with np.errstate(divide="ignore", invalid="ignore"):
            picks = {"acc": int(np.argmax(lls)), "acc_norm": int(np.argmax(lls / chars)),
                     "acc_bytes": int(np.argmax(lls / utf8))}
        for name, pick in picks.items():
            hits[name].append(float(pick == example.gold))
        per_example.append({"loglikelihoods": lls.tolist(), "gold": example.gold, "pred": picks["acc"],
                            "pred_norm": picks["acc_norm"]})
    metrics: dict[str, float | None] = {}
    for name, values in hits.items():
        metrics[name] = sum(values) / len(values)
        metrics[f"{name}_stderr"] = mean_stderr(values)
    return metrics, per_example


def lambada_metrics(scores: list[list[tuple[float, bool]]]) -> tuple[dict, list]:
    """acc: the greedy continuation is the last word; perplexity: exp of minus the mean log-likelihood
    of the last word. lm-evaluation-harness bootstraps the perplexity's standard error; here it is
    the delta method's, perplexity x the standard error of the mean log-likelihood."""
    lls = [score[0][0] for score in scores]
    correct = [float(score[0][1]) for score in scores]
    mean_ll = sum(lls) / len(lls)
    perplexity = math.exp(-mean_ll) if -mean_ll < 709 else math.inf  # past exp's float range: infinite
    ll_stderr = mean_stderr(lls)
    metrics = {"acc": sum(correct) / len(correct), "acc_stderr": mean_stderr(correct), "perplexity": perplexity,
               "perplexity_stderr": None if ll_stderr is None or math.isinf(perplexity) else perplexity * ll_stderr}
    return metrics, [{"loglikelihood": ll, "greedy": bool(c)} for ll, c in zip(lls, correct)]


def evaluate_task(model: nn.Module, task: str, data: str | Path | Sequence[Example], *, limit: int | None = None,
                  batch_size: int = 16, precision: str = "fp32", progress: bool = True,
                  source: str = "", tokenizer: Tokenizer | None = None) -> TaskResult:
    """Score ``model`` on a task file (or a list of :class:`Example` read from ``source``); the first
    ``limit`` examples, in ``tokenizer``'s tokens (the model's; GPT-2's by default)."""
    check_task_name(task)
    if isinstance(data, (str, Path)):
        examples, source = read_task_file(task, data, limit), str(data)
    else:
        examples = list(data)[:limit]
        if not examples:
            raise GptrainError(f"no {task} examples to score")
    started = time.perf_counter()
    scores = score_examples(model, examples, batch_size=batch_size, precision=precision, progress=progress,
                            tokenizer=tokenizer)
    seconds = time.perf_counter() - started
    metrics, per_example = lambada_metrics(scores) if task == "lambada" else multiple_choice_metrics(examples, scores)
    return TaskResult(task, len(examples), metrics, seconds, source, per_example)


def format_result(result: TaskResult) -> str:
    """One line: the metrics with their standard errors, the count and the speed."""
    parts = []
    for name, value in result.metrics.items():
        if name.endswith("_stderr"):
            continue
        stderr = result.metrics.get(f"{name}_stderr")
        digits = 2 if name == "perplexity" else 4
        parts.append(f"{name} {value:.{digits}f}" + ("" if stderr is None else f" ± {stderr:.{digits}f}"))
    return (f"{result.task}: " + "   ".join(parts) + f"   ({result.examples:,} examples in {result.seconds:.1f} s, "
            f"{result.examples_per_s:,.1f} examples/s)")


# --- During training ---

def parse_task_spec(spec: str) -> tuple[str, str]:
    """``NAME:FILE`` (the file may hold colons of its own) as (task, file)."""
    task, colon, path = str(spec).partition(":")
    if not colon or not path:
        raise GptrainError(f"--eval-task {spec!r} is not NAME:FILE: give e.g. hellaswag:hellaswag_val.jsonl")
    return check_task_name(task), path


@dataclass
class TrainingTask:
    label: str  # the task's name, with its file's name where two tasks share a name
    task: str
    path: str
    examples: list[Example]


def load_training_tasks(specs: Sequence[str], limit: int | None = None) -> list[TrainingTask]:
    """Read every ``--eval-task`` file once, before training starts, so a bad file stops nothing halfway."""
    parsed = [parse_task_spec(spec) for spec in specs]
    names = [task for task, _ in parsed]
    return [TrainingTask(task if names.count(task) == 1 else f"{task}:{Path(path).name}", task, path,
                         read_task_file(task, path, limit))
            for task, path in parsed]


def log_task_scores(run, tasks: Sequence[TrainingTask], step: int, tokens_seen: int) -> None:
    """Score the model being trained on each task; one ``task`` record each in metrics.jsonl."""
    for task in tasks:
        result = evaluate_task(run.raw_model, task.task, task.examples, precision=run.cfg.precision,
                               progress=False, source=task.path, tokenizer=run.tokenizer)
        run.log.write("task", step=step, tokens_seen=tokens_seen, task=task.label, file=task.path,
                      examples=result.examples, **result.metrics, seconds=round(result.seconds, 3))
        run.echo(f"Step {step:06d}: " + format_result(result).replace(f"{task.task}: ", f"{task.label}: ", 1))
