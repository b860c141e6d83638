"""Chat with an instruction-tuned model: OpenAI's chat completions over the completion engine, and the
terminal session of ``gptrain chat``.

A conversation becomes one prompt through the template the model was fine-tuned with (see
:mod:`gptrain.data.templates`), and the reply is the model's continuation up to end-of-text. A base
model has no template: it is refused, since it was never taught where a reply ends.
"""

from __future__ import annotations

from typing import Iterator, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from gptrain.core.errors import GptrainError
from gptrain.core.runtime import resolve_device
from gptrain.data.templates import render_prompt
from gptrain.data.tokenizer import END_OF_TEXT_ID, encode_text, get_tokenizer
from gptrain.inference.api_schema import APIError, CompletionRequest, StreamOptions
from gptrain.inference.completions import Completion, CompletionService
from gptrain.inference.generate import check_sampling_args, stream_text, stream_tokens
from gptrain.interop.sources import resolve_model
from gptrain.model.gpt import unwrap_model

BASE_MODEL = ("is a base model: it has no chat template, so it was never taught where a reply ends; "
              "use completions, or instruction-tune it first (gptrain finetune instruct)")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(BaseModel):
    """The fields of OpenAI's chat completion request that gptrain uses; others are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)
    model: str | None = None
    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    logprobs: bool | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None


def completion_request(chat: ChatCompletionRequest, service: CompletionService) -> CompletionRequest:
    """The completion request that writes ``chat``'s reply: its conversation rendered by the served model's
    template; without a token limit the reply may fill the rest of the window (up to the server's cap)."""
    cfg = service.cfg
    if cfg.template is None:
        raise APIError(400, f"'{cfg.model_name}' {BASE_MODEL}", "messages", "model_not_chat")
    if chat.logprobs:
        raise APIError(400, "logprobs are not offered on chat completions: use /v1/completions", "logprobs")
    try:
        prompt = encode_text(service.tokenizer, render_prompt(cfg.template, [m.model_dump() for m in chat.messages]))
    except GptrainError as exc:
        raise APIError(400, str(exc), "messages") from None
    max_tokens = chat.max_completion_tokens if chat.max_completion_tokens is not None else chat.max_tokens
    if max_tokens is None:
        max_tokens = max(0, min(cfg.max_tokens or service.context_length, service.context_length - len(prompt)))
    return CompletionRequest(model=chat.model, prompt=prompt, max_tokens=max_tokens, temperature=chat.temperature,
                             top_p=chat.top_p, top_k=chat.top_k, seed=chat.seed, stop=chat.stop, n=chat.n,
                             stream=chat.stream, stream_options=chat.stream_options)


class ChatCompletion(Completion):
    """A chat completion in flight: the completion's text as assistant messages, or as deltas when streamed."""

    def __init__(self, service: CompletionService, request: CompletionRequest, prompts: list[list[int]]):
        super().__init__(service, request, prompts)
        self.head = {**self.head, "id": self.head["id"].replace("cmpl-", "chatcmpl-", 1),
                     "object": "chat.completion.chunk" if request.stream else "chat.completion"}
        self.greeted: set[int] = set()

    async def response(self) -> dict:
        completion = await super().response()
        completion["choices"] = [{"index": choice["index"], "message": {"role": "assistant", "content": choice["text"]},
                                  "logprobs": None, "finish_reason": choice["finish_reason"]}
                                 for choice in completion["choices"]]
        return completion

    def stream_choice(self, choice: int, text: str, entries: list, finish_reason: str | None) -> dict:
        delta = {}
        if choice not in self.greeted:  # a choice's first chunk names the speaker, as OpenAI's do
            self.greeted.add(choice)
            delta["role"] = "assistant"
        if text or finish_reason is None:
            delta["content"] = text
        return {"index": choice, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


class ChatSession:
    """A conversation with a model in a terminal (``gptrain chat``): each :meth:`reply` streams the model's
    answer to the history so far and adds both to it. The oldest turns leave the prompt when it no
    longer fits the model's window with room for a reply."""

    def __init__(self, model: nn.Module, tokenizer, template: str | None, *, name: str = "the model",
                 system: str | None = None, max_new_tokens: int = 256, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int = 123):
        if template is None:
            raise GptrainError(f"{name} {BASE_MODEL.replace('use completions', 'use gptrain generate')}")
        check_sampling_args(max_new_tokens, temperature, top_k, top_p)
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.system = system
        self.sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
        self.max_new_tokens = max_new_tokens
        self.history: list[dict[str, str]] = []
        self.generator = torch.Generator(device=next(unwrap_model(model).parameters()).device).manual_seed(seed)
        self.dropped_turns = 0  # exchanges left out of the prompt because the window was full

    def prompt_ids(self, text: str) -> list[int]:
        """The prompt for a reply to ``text``: the newest history that fits the window, with room for the reply."""
        window = unwrap_model(self.model).cfg.context_length
        budget = max(1, window - min(self.max_new_tokens, window // 2))
        history = self.history
        while True:
            messages = ([{"role": "system", "content": self.system}] if self.system else []) + history
            ids = encode_text(self.tokenizer, render_prompt(self.template, messages + [{"role": "user", "content": text}]))
            if len(ids) <= budget or not history:
                self.dropped_turns = (len(self.history) - len(history)) // 2
                return ids[-budget:]
            history = history[2:]

    def reply(self, text: str) -> Iterator[str]:
        """Stream the model's reply to ``text``, then keep the exchange in the history."""
        ids = self.prompt_ids(text)
        window = unwrap_model(self.model).cfg.context_length
        tokens = stream_tokens(self.model, ids, min(self.max_new_tokens, window - len(ids)), window,
                               eos_id=END_OF_TEXT_ID, generator=self.generator, **self.sampling)
        pieces = []
        for piece in stream_text(self.tokenizer, tokens):
            pieces.append(piece)
            yield piece
        self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": "".join(pieces)}]

    def reset(self) -> None:
        self.history = []


def open_chat(model: str, *, system: str | None = None, max_new_tokens: int = 256, temperature: float = 0.0,
              top_k: int | None = None, top_p: float | None = None, seed: int = 123, device: str = "auto",
              n_heads: int | None = None, quantize: str | None = None) -> ChatSession:
    """A :class:`ChatSession` with the instruction-tuned model that ``model`` names; the sampling settings are
    checked, and a base model refused, before its weights are loaded."""
    check_sampling_args(max_new_tokens, temperature, top_k, top_p)
    resolved = resolve_device(device)
    source = resolve_model(model, device=resolved, n_heads=n_heads, quantize=quantize)
    return ChatSession(source.model, get_tokenizer(), source.template, name=str(model), system=system,
                       max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
