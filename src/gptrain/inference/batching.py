"""Continuous batching: concurrent generation requests share each forward pass.

The engine owns a fixed number of slots, one KV-cache row each. A new sequence waits in a
bounded queue until a slot is free; between two decode steps it joins the batch (its prompt goes
through the model alone, into its own cache row) and from then on every decode step feeds one
token of every running sequence in a single forward pass. A sequence leaves as soon as it ends
(end of text, its token budget, the context window, its listener says stop, or it is cancelled):
the last slot's row moves into the hole, so the running sequences always fill slots 0..n-1 and
the cache hands the model contiguous views, never gathered copies.

Each sequence keeps its own sampling settings and random generator, and its rows' attention is
masked to its own tokens, so a greedy sequence gets the tokens it would get alone (and
:func:`gptrain.inference.generate.generate` gives), and a seeded sampled one the same draws.

All model work runs in the engine's own thread; other threads submit, cancel and read.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from gptrain.core.errors import GptrainError
from gptrain.data.tokenizer import END_OF_TEXT_ID
from gptrain.inference.cpu import optimize_for_cpu_inference
from gptrain.inference.generate import check_sampling_args, select_next_token
from gptrain.model.config import GPTConfig, as_model_config
from gptrain.model.gpt import unwrap_model


class QueueFull(GptrainError):
    """The engine's waiting queue has no room for the submitted sequences."""


class SlotKVCache:
    """Keys and values for ``slots`` independent sequences, each with its own length.

    It has :class:`gptrain.model.gpt.KVCache`'s interface, so ``model(idx, cache)`` works unchanged:
    :meth:`select` picks the consecutive slots the next forward pass feeds (one slot for a
    prompt, slots 0..n-1 for a decode step); positions count from each slot's own length, and
    each query attends only to its own slot's tokens.
    """

    def __init__(self, cfg: GPTConfig | Mapping[str, Any] | str, slots: int, max_len: int):
        cfg = as_model_config(cfg)
        self.shape = (cfg.n_layers, slots, cfg.n_heads, max_len, cfg.emb_dim // cfg.n_heads)
        self.max_len = max_len
        # Zeros, not empty memory: masked-out keys and values still enter SDPA's products, and a
        # NaN left in uninitialised memory would survive a zero attention weight.
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.lengths = [0] * slots
        self.rows = range(0)

    def select(self, start: int, stop: int, device: torch.device) -> None:
        self.rows = range(start, stop)
        self.row_lengths = torch.tensor(self.lengths[start:stop], device=device)

    @property
    def length(self) -> int:
        """The longest selected slot's length (what the model checks against its window)."""
        return max(self.lengths[row] for row in self.rows)

    @length.setter
    def length(self, value: int) -> None:
        # The model advances the cache by the tokens it fed (cache.length += seq_len): every
        # selected slot grew by that many.
        grown = value - self.length
        for row in self.rows:
            self.lengths[row] += grown

    def _same_length(self) -> bool:
        return len({self.lengths[row] for row in self.rows}) == 1

    def positions(self, seq_len: int, device: torch.device) -> torch.Tensor:
        return self.row_lengths[:, None] + torch.arange(seq_len, device=device)

    def attention_mask(self, seq_len: int, device: torch.device) -> torch.Tensor | None:
        """(slots, 1, queries, keys): each query sees its own slot's earlier tokens; None when SDPA needs no mask."""
        if self._same_length() and (seq_len == 1 or self.length == 0):
            return None
        queries = self.positions(seq_len, device)[:, :, None]
        keys = torch.arange(self.length + seq_len, device=device)
        return (keys <= queries)[:, None]

    def update(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys is None:
            self.keys = keys.new_zeros(self.shape)
            self.values = values.new_zeros(self.shape)
        rows = slice(self.rows.start, self.rows.stop)
        if self._same_length():
            start = self.lengths[self.rows.start]
            self.keys[layer, rows, :, start:start + keys.shape[2]] = keys
            self.values[layer, rows, :, start:start + keys.shape[2]] = values
        else:  # a decode step: one new token per slot, each at its own length
            slot_index = torch.arange(self.rows.start, self.rows.stop, device=keys.device)
            self.keys[layer, slot_index, :, self.row_lengths] = keys[:, :, 0]
            self.values[layer, slot_index, :, self.row_lengths] = values[:, :, 0]
        end = self.length + keys.shape[2]
        return self.keys[layer, rows, :, :end], self.values[layer, rows, :, :end]

    def move(self, source: int, target: int) -> None:
        """Copy slot ``source``'s tokens into slot ``target`` (which is free)."""
        length = self.lengths[source]
        if self.keys is not None:
            self.keys[:, target, :, :length] = self.keys[:, source, :, :length]
            self.values[:, target, :, :length] = self.values[:, source, :, :length]
        self.lengths[target] = length


@dataclass
class TokenInfo:
    """A token, its log-probability under the model (temperature 1, no filtering) and the most likely alternatives."""

    token: int
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None


class Sequence:
    """One prompt being continued, with its own sampling settings and random generator.

    ``logprobs`` asks for each new token's log-probability and that many top alternatives;
    ``prompt_logprobs`` for the prompt's tokens' too. The hooks run in the engine's thread:
    override them to stream the tokens elsewhere (and keep them quick).
    """

    def __init__(self, prompt: list[int], max_tokens: int, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, generator: torch.Generator | None = None,
                 logprobs: int | None = None, prompt_logprobs: bool = False):
        check_sampling_args(max_tokens, temperature, top_k, top_p)
        if not prompt:
            raise GptrainError("the prompt is empty: give it at least one token")
        self.prompt = list(prompt)
        self.max_tokens = max_tokens
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.generator = generator
        self.logprobs = logprobs
        self.prompt_logprobs = prompt_logprobs
        self.tokens: list[int] = []
        self.finish_reason: str | None = None
        self.cancelled = False
        self.done = threading.Event()

    def on_prompt(self, infos: list[TokenInfo]) -> None:
        """The prompt's tokens with their log-probabilities (the first has none); only with ``prompt_logprobs``."""

    def on_token(self, info: TokenInfo) -> bool:
        """A new token; return False to end the sequence here (finish reason ``stop``)."""
        return True

    def on_finish(self, reason: str) -> None:
        """The sequence ended: ``stop`` (end of text or on_token said so), ``length``, ``cancelled``, or
        ``error`` (the model failed; the engine's thread printed why)."""


class BatchingEngine:
    """Runs many :class:`Sequence` s at once on one model, in a thread of its own.

    ``max_batch`` sequences run together (each holds a slot of the KV cache, sized for the
    model's whole window); up to ``max_queue`` more wait for a slot, and a submission that
    would overflow the queue raises :class:`QueueFull` without queueing anything.
    """

    def __init__(self, model: nn.Module, max_batch: int = 16, max_queue: int = 64, eos_id: int | None = END_OF_TEXT_ID):
        if max_batch < 1 or max_queue < 0:
            raise GptrainError(f"max_batch must be at least 1 and max_queue at least 0, not {max_batch} and {max_queue}")
        self.model = unwrap_model(model).eval()
        optimize_for_cpu_inference(self.model)
        self.device = next(self.model.parameters()).device
        self.context_length = self.model.cfg.context_length
        self.cache = SlotKVCache(self.model.cfg, max_batch, self.context_length)
        self.max_batch, self.max_queue, self.eos_id = max_batch, max_queue, eos_id
        self.running: list[Sequence] = []  # slot i holds running[i]
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.calls: collections.deque[tuple[Callable[[], Any], concurrent.futures.Future]] = collections.deque()
        self.wakeup = threading.Condition()
        self.stopping = False
        # Sequences submitted and not yet finished: what the queue's bound counts. A sequence being
        # admitted is neither waiting nor running for the length of its prompt's forward pass, so
        # counting those two lists would let more in than the bound says.
        self.holding = 0
        self.stats = {"steps": 0, "tokens": 0, "finished": 0, "cancelled": 0}
        self.thread = threading.Thread(target=self._loop, name="gptrain-batching", daemon=True)

    def start(self) -> "BatchingEngine":
        self.thread.start()
        return self

    def stop(self) -> None:
        """Cancel every sequence and end the thread."""
        with self.wakeup:
            self.stopping = True
            self.wakeup.notify()
        if self.thread.is_alive():
            self.thread.join()

    def submit(self, sequences: list[Sequence]) -> None:
        """Queue sequences for a slot, all or none (:class:`QueueFull`)."""
        for sequence in sequences:
            if len(sequence.prompt) > self.context_length:
                raise GptrainError(f"the prompt has {len(sequence.prompt)} tokens but the model's context is "
                                   f"{self.context_length}: shorten it")
        with self.wakeup:
            if self.stopping:
                raise QueueFull("the server is shutting down")
            if self.holding + len(sequences) > self.max_queue + self.max_batch:
                raise QueueFull(f"the queue is full ({self.max_queue} waiting after {self.max_batch} running): "
                                "retry later")
            self.holding += len(sequences)
            self.waiting.extend(sequences)
            self.wakeup.notify()

    def cancel(self, sequence: Sequence) -> None:
        """End a sequence at the next step boundary (its slot is freed there)."""
        with self.wakeup:
            sequence.cancelled = True
            self.wakeup.notify()

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run ``fn`` in the engine's thread between two steps (other model work, without racing the batch)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self.wakeup:
            if self.stopping:
                raise GptrainError("the server is shutting down")
            self.calls.append((fn, future))
            self.wakeup.notify()
        return future

    def load(self) -> dict[str, int]:
        """Running and waiting sequences, and the counters since the start."""
        with self.wakeup:
            return {"running": len(self.running), "waiting": len(self.waiting), **self.stats}

    # --- the engine's thread ---

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self.wakeup:
                    while not (self.stopping or self.waiting or self.calls or self.running):
                        self.wakeup.wait()
                    if self.stopping:
                        break
                    calls, self.calls = list(self.calls), collections.deque()
                    admitted = []
                    while self.waiting and len(self.running) + len(admitted) < self.max_batch:
                        admitted.append(self.waiting.popleft())
                for fn, future in calls:
                    if future.set_running_or_notify_cancel():
                        try:
                            future.set_result(fn())
                        except Exception as exc:  # handed to the caller, who raises it
                            future.set_exception(exc)
                try:
                    self._leave([i for i, sequence in enumerate(self.running) if sequence.cancelled])
                    self._admit(admitted)
                    if self.running:
                        self._decode_step()
                except Exception:  # a failed step must not leave its requests waiting forever
                    traceback.print_exc()
                    for sequence in [*self.running, *admitted]:
                        if not sequence.done.is_set():
                            self._finish(sequence, "error")
                    self.running = []
            with self.wakeup:
                for sequence in [*self.running, *self.waiting]:
                    self._finish(sequence, "cancelled")
                self.running, self.waiting = [], collections.deque()
                for _, future in self.calls:
                    future.cancel()

    def _admit(self, sequences: list[Sequence]) -> None:
        same_length: dict[int, list[Sequence]] = {}
        for sequence in sequences:
            if sequence.cancelled:
                self._finish(sequence, "cancelled")
            else:
                same_length.setdefault(len(sequence.prompt), []).append(sequence)
        for group in same_length.values():
            self._join(group)

    def _join(self, sequences: list[Sequence]) -> None:
        """Feed prompts of one length into the next free slots, in one forward pass, and pick their first tokens.

        (The ``n`` choices of a request share their prompt, so they join together.)
        """
        first = len(self.running)
        for slot in range(first, first + len(sequences)):
            self.cache.lengths[slot] = 0
        self.cache.select(first, first + len(sequences), self.device)
        prompts = torch.tensor([sequence.prompt for sequence in sequences], device=self.device)
        logits = self.model(prompts, self.cache, last_only=not any(s.prompt_logprobs for s in sequences))
        self.running.extend(sequences)
        done = []
        for row, sequence in enumerate(sequences):
            if sequence.prompt_logprobs:
                logprobs = torch.log_softmax(logits[row, :-1].float(), dim=-1)
                infos = [TokenInfo(sequence.prompt[0])]
                for position, token in enumerate(sequence.prompt[1:]):
                    infos.append(self._token_info(token, logprobs[position], sequence.logprobs or 0))
                sequence.on_prompt(infos)
            if sequence.max_tokens == 0:
                sequence.finish_reason = "length"
                done.append(first + row)
            elif not self._advance(sequence, logits[row, -1:]):
                done.append(first + row)
        self._leave(done)

    def _decode_step(self) -> None:
        self.cache.select(0, len(self.running), self.device)
        last_tokens = torch.tensor([[sequence.tokens[-1]] for sequence in self.running], device=self.device)
        logits = self.model(last_tokens, self.cache)[:, -1]
        self.stats["steps"] += 1
        self._leave([slot for slot, sequence in enumerate(self.running)
                     if not self._advance(sequence, logits[slot:slot + 1])])

    def _advance(self, sequence: Sequence, logits: torch.Tensor) -> bool:
        """Pick the sequence's next token from its (1, vocab) logits; False when the sequence is done."""
        token = select_next_token(logits, sequence.temperature, sequence.top_k, sequence.generator,
                                  sequence.top_p).item()
        self.stats["tokens"] += 1
        if token == self.eos_id:
            sequence.finish_reason = "stop"
            return False
        sequence.tokens.append(token)
        info = (self._token_info(token, torch.log_softmax(logits[0].float(), dim=-1), sequence.logprobs)
                if sequence.logprobs is not None else TokenInfo(token))
        if not sequence.on_token(info):
            sequence.finish_reason = "stop"
            return False
        # The next step feeds this token at position len(prompt) + len(tokens) - 1.
        window_full = len(sequence.prompt) + len(sequence.tokens) > self.context_length
        if len(sequence.tokens) >= sequence.max_tokens or window_full:
            sequence.finish_reason = "length"
            return False
        return True

    @staticmethod
    def _token_info(token: int, logprobs: torch.Tensor, top: int) -> TokenInfo:
        best = torch.topk(logprobs, top) if top else None
        alternatives = list(zip(best.indices.tolist(), best.values.tolist())) if best is not None else []
        return TokenInfo(token, logprobs[token].item(), alternatives)

    def _leave(self, slots: list[int]) -> None:
        """Take the sequences in ``slots`` out of the batch, moving the last running ones into their slots."""
        for slot in sorted(slots, reverse=True):
            sequence = self.running[slot]
            last = len(self.running) - 1
            if slot != last:
                self.cache.move(last, slot)
                self.running[slot] = self.running[last]
            self.running.pop()
            self._finish(sequence, "cancelled" if sequence.cancelled else sequence.finish_reason)

    def _finish(self, sequence: Sequence, reason: str) -> None:
        sequence.finish_reason = reason
        with self.wakeup:
            self.holding -= 1
            self.stats["cancelled" if reason == "cancelled" else "finished"] += 1
        sequence.on_finish(reason)
        sequence.done.set()
