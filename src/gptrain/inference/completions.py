"""What ``gptrain serve`` does with a request between HTTP and the batching engine.

A completion request becomes :class:`gptrain.inference.batching.Sequence` s (one per prompt and
choice) that the engine's thread runs together; their text comes back to the event loop through
an asyncio queue per request, held back where it may begin a stop string, and leaves as one
response or as server-sent events.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import time
import uuid
from typing import AsyncIterator

import torch
from torch import nn

from gptrain.data.tokenizer import END_OF_TEXT_ID, encode_text, get_tokenizer
from gptrain.inference.api_schema import (
    MAX_STOP_SEQUENCES,
    APIError,
    CompletionRequest,
    DistributionRequest,
    ServeConfig,
    check_api_sampling,
    stop_strings,
)
from gptrain.inference.batching import BatchingEngine, QueueFull, Sequence, TokenInfo
from gptrain.inference.generate import sampling_probs
from gptrain.model.gpt import unwrap_model

# What a refused request's Retry-After says: a slot frees as soon as any running sequence ends,
# which at the server's sizes is well within a second.
RETRY_AFTER_S = 1


def next_token_distribution(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                            count: int) -> tuple[list[int], dict[str, list[float]]]:
    """The ``count`` most likely next tokens, with their probabilities at temperature 1, after temperature
    scaling, and after top-k and top-p filtering too (renormalised: what sampling draws from)."""
    logits = logits.float()
    probability = torch.softmax(logits, dim=-1)
    if temperature > 0:
        scaled = torch.softmax(logits / temperature, dim=-1)
        sampled = sampling_probs(logits, temperature, top_k, top_p)  # what generation samples from
        sampled = sampled / sampled.sum()
    else:  # greedy: all the mass on the most likely token
        scaled = torch.zeros_like(probability).scatter_(0, logits.argmax().view(1), 1.0)
        sampled = scaled
    top = torch.topk(probability, min(count, logits.numel())).indices
    return top.tolist(), {"probability": probability[top].tolist(), "after_temperature": scaled[top].tolist(),
                          "after_filtering": sampled[top].tolist(), "kept": int((sampled > 0).sum())}


class ServedSequence(Sequence):
    """A sequence whose text goes to the request's event loop, held back where it may begin a stop string.

    Events on the request's queue: ``(choice, "text", text, [(TokenInfo, text_offset), ...])`` and
    ``(choice, "finish", reason, [...])``.
    """

    def __init__(self, choice: int, loop: asyncio.AbstractEventLoop, events: asyncio.Queue, tokenizer,
                 stops: list[str], text_offset: int, **settings):
        super().__init__(**settings)
        self.choice, self.loop, self.events, self.tokenizer, self.stops = choice, loop, events, tokenizer, stops
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""
        self.released = 0  # characters of self.text already sent
        self.text_offset = text_offset  # where the new text starts in the choice's text (after an echoed prompt)
        self.pending: list[tuple[TokenInfo, int]] = []
        self.prompt_infos: list[TokenInfo] = []
        self.hit_stop = False

    def _send(self, *event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (self.choice, *event))
        except RuntimeError:  # the event loop has closed: nobody is listening any more
            pass

    def _release(self, end: int) -> None:
        if end > self.released:
            self._send("text", self.text[self.released:end], self.pending)
            self.released, self.pending = end, []

    def on_prompt(self, infos: list[TokenInfo]) -> None:
        self.prompt_infos = infos

    def on_token(self, info: TokenInfo) -> bool:
        self.pending.append((info, self.text_offset + len(self.text)))
        searched_from = max(0, len(self.text) - max((len(stop) for stop in self.stops), default=0) + 1)
        self.text += self.decoder.decode(self.tokenizer.decode_single_token_bytes(info.token))
        found = [index for stop in self.stops if (index := self.text.find(stop, searched_from)) >= 0]
        if found:
            self.hit_stop = True
            self.text = self.text[:min(found)]
            self._release(len(self.text))
            return False
        held = max((k for stop in self.stops for k in range(1, len(stop)) if self.text.endswith(stop[:k])), default=0)
        self._release(len(self.text) - held)
        return True

    def on_finish(self, reason: str) -> None:
        if not self.hit_stop:  # the text held back for a stop string that never came goes out now
            self.text += self.decoder.decode(b"", final=True)
            self._release(len(self.text))
        self._send("finish", reason, self.pending)


class CompletionService:
    """The API's logic between HTTP and the engine: checks, prompts to sequences, logprobs; a :class:`Completion`
    is one request in flight."""

    def __init__(self, model: nn.Module, cfg: ServeConfig, tokenizer=None):
        self.cfg = cfg
        self.model = unwrap_model(model)
        self.tokenizer = tokenizer or get_tokenizer()
        self.context_length = self.model.cfg.context_length
        self.vocab_size = self.model.cfg.vocab_size
        self.engine = BatchingEngine(self.model, max_batch=cfg.max_batch, max_queue=cfg.max_queue)
        self.created = int(time.time())
        # Requests refused for a full queue, and requests whose client left before they finished.
        self.stats = {"rejected": 0, "disconnected": 0}

    def token_text(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def prompts(self, request: CompletionRequest) -> list[list[int]]:
        prompt = request.prompt
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            prompt = [prompt]
        if not prompt:
            raise APIError(400, "prompt is an empty list: give at least one prompt", "prompt")
        prompts = []
        for one in prompt:
            if isinstance(one, str):
                # As for GPT-2 itself, an empty prompt means "start of a document".
                ids = encode_text(self.tokenizer, one) or [END_OF_TEXT_ID]
            else:
                ids = list(one)
                if not ids:
                    raise APIError(400, "a prompt of token ids is empty: give at least one token", "prompt")
                if not all(0 <= token < self.vocab_size for token in ids):
                    raise APIError(400, f"prompt token ids must be in 0..{self.vocab_size - 1}", "prompt")
            if request.truncate_prompt_tokens is not None:
                ids = ids[-request.truncate_prompt_tokens:]
            if len(ids) > self.context_length:
                raise APIError(400, f"this model's maximum context length is {self.context_length} tokens, but the "
                                    f"prompt has {len(ids)}: shorten it, or set truncate_prompt_tokens to keep its "
                                    "last tokens", "prompt", "context_length_exceeded")
            prompts.append(ids)
        return prompts

    def check(self, request: CompletionRequest) -> None:
        if request.model is not None and request.model != self.cfg.model_name:
            raise APIError(404, f"the model '{request.model}' does not exist: this server serves "
                                f"'{self.cfg.model_name}'", "model", "model_not_found")
        cap = self.cfg.max_tokens or self.context_length
        if request.max_tokens is not None and not 0 <= request.max_tokens <= cap:
            raise APIError(400, f"max_tokens must be in 0..{cap}, not {request.max_tokens}", "max_tokens")
        if request.n is not None and not 1 <= request.n <= self.cfg.max_n:
            raise APIError(400, f"n must be in 1..{self.cfg.max_n}, not {request.n}", "n")
        if request.logprobs is not None and not 0 <= request.logprobs <= self.cfg.max_logprobs:
            raise APIError(400, f"logprobs must be in 0..{self.cfg.max_logprobs}, not {request.logprobs}", "logprobs")
        if request.seed is not None and not -(1 << 63) <= request.seed < 1 << 63:
            raise APIError(400, f"seed must fit in 64 bits, not {request.seed}", "seed")
        if request.truncate_prompt_tokens is not None and request.truncate_prompt_tokens < 1:
            raise APIError(400, "truncate_prompt_tokens must be at least 1", "truncate_prompt_tokens")
        stops = stop_strings(request)
        if len(stops) > MAX_STOP_SEQUENCES or not all(stops):
            raise APIError(400, f"stop takes up to {MAX_STOP_SEQUENCES} non-empty strings", "stop")
        check_api_sampling(1.0 if request.temperature is None else request.temperature, request.top_k, request.top_p)

    def sequences(self, request: CompletionRequest, prompts: list[list[int]],
                  events: asyncio.Queue) -> list[ServedSequence]:
        loop = asyncio.get_running_loop()
        stops = stop_strings(request)
        n = request.n or 1
        sequences = []
        for prompt_index, prompt in enumerate(prompts):
            echo_length = len(self.tokenizer.decode(prompt)) if request.echo else 0
            for i in range(n):
                generator = torch.Generator(device=self.engine.device)
                if request.seed is None:
                    generator.seed()
                else:  # choice i of a seeded request draws as a request with seed + i would
                    generator.manual_seed((request.seed + i) % (1 << 64))
                sequences.append(ServedSequence(
                    prompt_index * n + i, loop, events, self.tokenizer, stops, echo_length, prompt=prompt,
                    max_tokens=16 if request.max_tokens is None else request.max_tokens,
                    temperature=1.0 if request.temperature is None else request.temperature,
                    top_k=request.top_k, top_p=request.top_p, generator=generator, logprobs=request.logprobs,
                    prompt_logprobs=bool(request.echo and request.logprobs is not None)))
        return sequences

    def logprobs(self, entries: list[tuple[TokenInfo, int]]) -> dict[str, list]:
        result = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for info, offset in entries:
            result["tokens"].append(self.token_text(info.token))
            result["token_logprobs"].append(info.logprob)
            top = None
            if info.top is not None:
                top = {self.token_text(token): logprob for token, logprob in info.top}
                top.setdefault(self.token_text(info.token), info.logprob)
            result["top_logprobs"].append(top)
            result["text_offset"].append(offset)
        return result

    def echo_logprobs(self, sequence: ServedSequence) -> list[tuple[TokenInfo, int]]:
        entries, offset = [], 0
        for info in sequence.prompt_infos:
            entries.append((info, offset))
            offset += len(self.token_text(info.token))
        return entries

    def start(self, request: CompletionRequest, kind: type[Completion] | None = None) -> Completion:
        """Check ``request``, turn it into sequences and queue them in the engine (as a ``kind``, by default a
        :class:`Completion`)."""
        self.check(request)
        prompts = self.prompts(request)
        capacity = self.cfg.max_batch + self.cfg.max_queue
        wanted = len(prompts) * (request.n or 1)
        if wanted > capacity:
            raise APIError(400, f"{len(prompts)} prompts x n = {wanted} sequences, more than the server ever holds "
                                f"({capacity}): split the request", "prompt")
        completion = (kind or Completion)(self, request, prompts)
        try:
            self.engine.submit(completion.sequences)
        except QueueFull as exc:
            self.stats["rejected"] += 1
            raise APIError(503, str(exc), kind="server_error", code="queue_full",
                           headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        return completion

    def distribution_prompt(self, request: DistributionRequest) -> tuple[int, ...]:
        check_api_sampling(request.temperature, request.top_k, request.top_p)
        if not 1 <= request.count <= 100:
            raise APIError(400, f"count must be in 1..100, not {request.count}", "count")
        prompt = encode_text(self.tokenizer, request.prompt) or [END_OF_TEXT_ID]
        return tuple(prompt[-self.context_length:])

    def distribution(self, request: DistributionRequest, logits: torch.Tensor, prompt_tokens: int) -> dict:
        """The playground's view of the next token: the likeliest tokens, before and after sampling's filters."""
        tokens, columns = next_token_distribution(logits, request.temperature, request.top_k, request.top_p,
                                                  request.count)
        kept = columns.pop("kept")
        rows = [{"token": token, "text": self.token_text(token),
                 **{name: values[i] for name, values in columns.items()}} for i, token in enumerate(tokens)]
        return {"prompt_tokens": prompt_tokens, "kept": kept, "tokens": rows}


class Completion:
    """One completion request in flight: its sequences, the events they send, and the response they make."""

    def __init__(self, service: CompletionService, request: CompletionRequest, prompts: list[list[int]]):
        self.service, self.request = service, request
        self.events: asyncio.Queue = asyncio.Queue()
        self.sequences = service.sequences(request, prompts, self.events)
        self.prompt_tokens = sum(len(prompt) for prompt in prompts)
        self.head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                     "model": service.cfg.model_name}

    def usage(self) -> dict:
        completion_tokens = sum(len(sequence.tokens) for sequence in self.sequences)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    def echoed(self, sequence: ServedSequence) -> tuple[str, list]:
        if not self.request.echo:
            return "", []
        return self.service.tokenizer.decode(sequence.prompt), self.service.echo_logprobs(sequence)

    def logprobs(self, entries: list) -> dict | None:
        return self.service.logprobs(entries) if self.request.logprobs is not None else None

    def cancel_unfinished(self) -> bool:
        """Cancel the sequences still running or waiting; whether there were any."""
        unfinished = [sequence for sequence in self.sequences if not sequence.done.is_set()]
        for sequence in unfinished:
            self.service.engine.cancel(sequence)
        return bool(unfinished)

    def client_gone(self) -> None:
        """The client closed its connection: its sequences leave the batch at the next step boundary."""
        if self.cancel_unfinished():
            self.service.stats["disconnected"] += 1

    async def response(self) -> dict:
        """The whole completion, once every choice has finished."""
        pieces: dict[int, list[str]] = {sequence.choice: [] for sequence in self.sequences}
        entries: dict[int, list] = {sequence.choice: [] for sequence in self.sequences}
        finish: dict[int, str] = {}
        try:
            while len(finish) < len(self.sequences):
                choice, kind, payload, logged = await self.events.get()
                entries[choice] += logged
                if kind == "text":
                    pieces[choice].append(payload)
                else:
                    finish[choice] = payload
        finally:  # also when the request was cancelled
            self.cancel_unfinished()
        if "error" in finish.values():
            raise APIError(500, "the model failed on this request (the server's log says why)", kind="server_error")
        choices = []
        for sequence in self.sequences:
            text, echo_entries = self.echoed(sequence)
            choices.append({"index": sequence.choice, "text": text + "".join(pieces[sequence.choice]),
                            "finish_reason": finish[sequence.choice],
                            "logprobs": self.logprobs(echo_entries + entries[sequence.choice])})
        return {**self.head, "choices": choices, "usage": self.usage()}

    def stream_choice(self, choice: int, text: str, entries: list, finish_reason: str | None) -> dict:
        """One choice's part of a streamed chunk."""
        return {"index": choice, "text": text, "logprobs": self.logprobs(entries), "finish_reason": finish_reason}

    def _chunk(self, choice: int, text: str, entries: list, finish_reason: str | None = None) -> str:
        body = {**self.head, "choices": [self.stream_choice(choice, text, entries, finish_reason)]}
        return f"data: {json.dumps(body)}\n\n"

    async def stream(self) -> AsyncIterator[str]:
        """The completion as server-sent events, a chunk per piece of text, as the choices produce them."""
        started: set[int] = set()
        finished = 0
        try:
            while finished < len(self.sequences):
                choice, kind, payload, entries = await self.events.get()
                if choice not in started and self.request.echo:
                    text, echo_entries = self.echoed(self.sequences[choice])
                    yield self._chunk(choice, text, echo_entries)
                started.add(choice)
                if kind == "text":
                    yield self._chunk(choice, payload, entries)
                else:
                    yield self._chunk(choice, "", entries, payload)
                    finished += 1
            if self.request.stream_options is not None and self.request.stream_options.include_usage:
                yield f"data: {json.dumps({**self.head, 'choices': [], 'usage': self.usage()})}\n\n"
            yield "data: [DONE]\n\n"
        finally:  # also when the client went away: free the slots now
            self.cancel_unfinished()
