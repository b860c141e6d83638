"""``gptrain serve``: the OpenAI Completions API over a model, with continuous batching and a playground.

The server is a FastAPI app on uvicorn. Requests become :class:`gptrain.inference.batching.Sequence` s (one
per prompt and choice) that the engine's thread runs together; their tokens come back to the
event loop through an asyncio queue per request. Bad requests get OpenAI's error object
(``{"error": {"message", "type", "param", "code"}}``) with a fitting status, so the official
``openai`` client raises its usual exceptions.

Two things go beyond OpenAI's API: ``top_k`` and ``truncate_prompt_tokens`` (vLLM's name: keep
only the prompt's last N tokens) in a completion request, and ``POST /v1/distribution``, the
next-token distribution before and after temperature, top-k and top-p, which the playground at
``GET /`` draws.
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import hmac
import json
import math
import signal
import socket
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from torch import nn

from gptrain.core.errors import GptrainError
from gptrain.data.tokenizer import END_OF_TEXT, END_OF_TEXT_ID, get_tokenizer
from gptrain.inference.batching import BatchingEngine, QueueFull, Sequence, TokenInfo
from gptrain.inference.generate import sampling_probs
from gptrain.model.gpt import unwrap_model

MAX_STOP_SEQUENCES = 4  # as OpenAI


@dataclass
class ServeConfig:
    """The server's settings; each is a ``gptrain serve`` flag of the same name."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    model_name: str = "gptrain"
    max_batch: int = 16
    max_queue: int = 64
    max_tokens: int | None = None  # the cap on a request's max_tokens; None: the model's context length
    max_n: int = 8
    max_logprobs: int = 20
    max_body_bytes: int = 1 << 20
    shutdown_timeout: float = 5.0

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise GptrainError(f"port must be in 0..65535 (0 picks a free one), not {self.port}")
        if self.api_key is not None and not self.api_key.strip():
            raise GptrainError("api_key is empty: give a key, or leave it out to serve without one")
        for name in ("max_batch", "max_n", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise GptrainError(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in ("max_queue", "max_logprobs"):
            if getattr(self, name) < 0:
                raise GptrainError(f"{name} must not be negative, not {getattr(self, name)}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise GptrainError(f"max_tokens must be at least 1 (or unset for the model's context), not {self.max_tokens}")
        if not self.shutdown_timeout >= 0:
            raise GptrainError(f"shutdown_timeout must not be negative, not {self.shutdown_timeout}")


class APIError(Exception):
    """An OpenAI error object with its HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def response(self) -> JSONResponse:
        error = {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": error}, status_code=self.status)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


class CompletionRequest(BaseModel):
    """The fields of OpenAI's completion request that gptrain uses; others (penalties, ``user``, ...) are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)
    model: str | None = None
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    echo: bool | None = None
    logprobs: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    truncate_prompt_tokens: int | None = None


class DistributionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    prompt: str
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    count: int = 10


def stop_strings(request: CompletionRequest) -> list[str]:
    return [request.stop] if isinstance(request.stop, str) else request.stop or []


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not (math.isfinite(temperature) and temperature >= 0):
        raise APIError(400, f"temperature must be >= 0 (0 is greedy), not {temperature}", "temperature")
    if top_p is not None and not 0 < top_p <= 1:
        raise APIError(400, f"top_p must be in (0, 1], not {top_p}", "top_p")
    if top_k is not None and top_k < 1:
        raise APIError(400, f"top_k must be at least 1 (or null for no filtering), not {top_k}", "top_k")


def parse_body(body: bytes, schema: type[BaseModel]) -> Any:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON ({exc}): send a JSON object") from None
    if not isinstance(payload, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return schema.model_validate(payload)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = str(error["loc"][0]) if error["loc"] else None
        if param == "prompt":
            raise APIError(400, "prompt must be a string, a list of strings, a list of token ids or a list of "
                                "lists of token ids", "prompt") from None
        where = ".".join(str(part) for part in error["loc"])
        raise APIError(400, f"invalid '{where}': {error['msg']}", param) from None


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
    """The API's logic between HTTP and the engine: validation, prompts to sequences, events to responses."""

    def __init__(self, model: nn.Module, cfg: ServeConfig, tokenizer=None):
        self.cfg = cfg
        self.model = unwrap_model(model)
        self.tokenizer = tokenizer or get_tokenizer()
        self.context_length = self.model.cfg.context_length
        self.vocab_size = self.model.cfg.vocab_size
        self.engine = BatchingEngine(self.model, max_batch=cfg.max_batch, max_queue=cfg.max_queue)
        self.created = int(time.time())

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
                ids = self.tokenizer.encode(one, allowed_special={END_OF_TEXT}) or [END_OF_TEXT_ID]
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
        check_sampling(1.0 if request.temperature is None else request.temperature, request.top_k, request.top_p)

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


def create_app(model: nn.Module, cfg: ServeConfig | None = None, tokenizer=None) -> FastAPI:
    """The server's ASGI app; the batching engine runs while the app does (its lifespan)."""
    cfg = cfg or ServeConfig()
    service = CompletionService(model, cfg, tokenizer)
    engine = service.engine

    async def lifespan(app: FastAPI):
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="gptrain", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        return APIError(exc.status_code, message, code="unknown_url" if exc.status_code == 404 else None).response()

    def authorize(request: Request) -> None:
        if cfg.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {cfg.api_key}".encode()):
            raise APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                           code="invalid_api_key")

    async def read_body(request: Request) -> bytes:
        too_large = APIError(413, f"the request body is larger than {cfg.max_body_bytes} bytes: send less",
                             code="request_too_large")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cfg.max_body_bytes:
            raise too_large
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > cfg.max_body_bytes:
                raise too_large
        return bytes(body)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": cfg.model_name, "max_batch": cfg.max_batch, "max_queue": cfg.max_queue,
                **engine.load()}

    @app.get("/", response_class=HTMLResponse)
    async def playground() -> HTMLResponse:
        return HTMLResponse(resources.files("gptrain").joinpath("assets/playground.html").read_text(encoding="utf-8"))

    def model_card() -> dict:
        return {"id": cfg.model_name, "object": "model", "created": service.created, "owned_by": "gptrain",
                "max_model_len": service.context_length}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict:
        authorize(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str, request: Request) -> dict:
        authorize(request)
        if name != cfg.model_name:
            raise APIError(404, f"the model '{name}' does not exist: this server serves '{cfg.model_name}'",
                           "model", "model_not_found")
        return model_card()

    @app.post("/v1/completions")
    async def completions(request: Request):
        authorize(request)
        params = parse_body(await read_body(request), CompletionRequest)
        service.check(params)
        prompts = service.prompts(params)
        capacity = cfg.max_batch + cfg.max_queue
        if len(prompts) * (params.n or 1) > capacity:
            raise APIError(400, f"{len(prompts)} prompts x n = {len(prompts) * (params.n or 1)} sequences, more than "
                                f"the server ever holds ({capacity}): split the request", "prompt")
        events: asyncio.Queue = asyncio.Queue()
        sequences = service.sequences(params, prompts, events)
        try:
            engine.submit(sequences)
        except QueueFull as exc:
            raise APIError(503, str(exc), kind="server_error", code="queue_full") from None
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": cfg.model_name}
        prompt_tokens = sum(len(prompt) for prompt in prompts)

        def usage() -> dict:
            completion_tokens = sum(len(sequence.tokens) for sequence in sequences)
            return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens}

        def echoed(sequence: ServedSequence) -> tuple[str, list]:
            if not params.echo:
                return "", []
            return service.tokenizer.decode(sequence.prompt), service.echo_logprobs(sequence)

        if params.stream:
            return StreamingResponse(stream(sequences, events, head, params, usage, echoed),
                                     media_type="text/event-stream")
        pieces: dict[int, list[str]] = {sequence.choice: [] for sequence in sequences}
        entries: dict[int, list] = {sequence.choice: [] for sequence in sequences}
        finish: dict[int, str] = {}
        try:
            while len(finish) < len(sequences):
                choice, kind, payload, logged = await events.get()
                entries[choice] += logged
                if kind == "text":
                    pieces[choice].append(payload)
                else:
                    finish[choice] = payload
        finally:  # also when the request was cancelled
            for sequence in sequences:
                if not sequence.done.is_set():
                    engine.cancel(sequence)
        if "error" in finish.values():
            raise APIError(500, "the model failed on this request (the server's log says why)", kind="server_error")
        choices = []
        for sequence in sequences:
            text, echo_entries = echoed(sequence)
            logprobs = service.logprobs(echo_entries + entries[sequence.choice]) if params.logprobs is not None else None
            choices.append({"index": sequence.choice, "text": text + "".join(pieces[sequence.choice]),
                            "finish_reason": finish[sequence.choice], "logprobs": logprobs})
        return {**head, "choices": choices, "usage": usage()}

    async def stream(sequences, events, head, params, usage, echoed):
        def chunk(choice: int, text: str, entries: list, finish_reason: str | None = None) -> str:
            logprobs = service.logprobs(entries) if params.logprobs is not None else None
            body = {**head, "choices": [{"index": choice, "text": text, "logprobs": logprobs,
                                          "finish_reason": finish_reason}]}
            return f"data: {json.dumps(body)}\n\n"

        started: set[int] = set()
        finished = 0
        try:
            while finished < len(sequences):
                choice, kind, payload, entries = await events.get()
                if choice not in started and params.echo:
                    text, echo_entries = echoed(sequences[choice])
                    yield chunk(choice, text, echo_entries)
                started.add(choice)
                if kind == "text":
                    yield chunk(choice, payload, entries)
                else:
                    yield chunk(choice, "", entries, payload)
                    finished += 1
            if params.stream_options is not None and params.stream_options.include_usage:
                yield f"data: {json.dumps({**head, 'choices': [], 'usage': usage()})}\n\n"
            yield "data: [DONE]\n\n"
        finally:  # also when the client went away: free the slots now
            for sequence in sequences:
                if not sequence.done.is_set():
                    engine.cancel(sequence)

    @functools.lru_cache(maxsize=16)
    def last_logits(prompt: tuple[int, ...]) -> torch.Tensor:
        with torch.inference_mode():
            return service.model(torch.tensor([prompt], device=engine.device), last_only=True)[0, -1].cpu()

    @app.post("/v1/distribution")
    async def distribution(request: Request) -> dict:
        """The playground's view of the next token (a gptrain extension)."""
        authorize(request)
        params = parse_body(await read_body(request), DistributionRequest)
        check_sampling(params.temperature, params.top_k, params.top_p)
        if not 1 <= params.count <= 100:
            raise APIError(400, f"count must be in 1..100, not {params.count}", "count")
        prompt = service.tokenizer.encode(params.prompt, allowed_special={END_OF_TEXT}) or [END_OF_TEXT_ID]
        prompt = tuple(prompt[-service.context_length:])
        # The forward pass runs in the engine's thread, between two of its steps.
        logits = await asyncio.wrap_future(engine.call(lambda: last_logits(prompt)))
        tokens, columns = next_token_distribution(logits, params.temperature, params.top_k, params.top_p, params.count)
        kept = columns.pop("kept")
        rows = [{"token": token, "text": service.token_text(token),
                 **{name: values[i] for name, values in columns.items()}} for i, token in enumerate(tokens)]
        return {"prompt_tokens": len(prompt), "kept": kept, "tokens": rows}

    return app


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise GptrainError(f"cannot listen on {host}:{port} ({exc.strerror}): pick another --port or --host") from None
    sock.listen(2048)
    return sock


def make_server(model: nn.Module, cfg: ServeConfig, tokenizer=None) -> tuple[uvicorn.Server, socket.socket]:
    """A uvicorn server for the app and the socket it will listen on (bound now, so port 0 is resolved)."""
    sock = bind_socket(cfg.host, cfg.port)
    config = uvicorn.Config(create_app(model, cfg, tokenizer), log_level="warning", access_log=False,
                            timeout_graceful_shutdown=cfg.shutdown_timeout)
    return uvicorn.Server(config), sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(model: nn.Module, cfg: ServeConfig) -> None:
    """Serve until Ctrl-C or SIGTERM; in-flight requests get ``cfg.shutdown_timeout`` seconds to finish."""
    server, sock = make_server(model, cfg)
    url = url_of(sock)
    print(f"Serving '{cfg.model_name}' at {url}/v1 (playground: {url}/){' with an API key' if cfg.api_key else ''}; "
          "Ctrl-C stops", flush=True)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM and then raises the signal again for the
    # handler it found; ours ignores it, so the command ends normally once everything is closed.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    print("Server stopped", flush=True)
