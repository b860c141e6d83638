"""``gptrain serve``: the OpenAI Completions and Chat Completions APIs over a model, with continuous
batching and a playground.

The server is a FastAPI app on uvicorn; this module holds its routes, its socket and its
lifetime. A request's body is read and checked in :mod:`gptrain.inference.api_schema` (bad
requests get OpenAI's error object) and run in :mod:`gptrain.inference.completions`.

Two things go beyond OpenAI's API: ``top_k`` and ``truncate_prompt_tokens`` (vLLM's name: keep
only the prompt's last N tokens) in a completion request, and ``POST /v1/distribution``, the
next-token distribution before and after temperature, top-k and top-p, which the playground at
``GET /`` draws.
"""


from __future__ import annotations

import asyncio
import functools
import hmac
import signal
import socket
from importlib import resources
from typing import AsyncIterator

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from torch import nn

from gptrain.core.errors import GptrainError
from gptrain.inference.api_schema import APIError, CompletionRequest, DistributionRequest, ServeConfig, parse_body
from gptrain.inference.chat import ChatCompletion, ChatCompletionRequest, completion_request
from gptrain.inference.completions import Completion, CompletionService


def authorize(request: Request, cfg: ServeConfig) -> None:
    if cfg.api_key is None:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {cfg.api_key}".encode()):
        raise APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                       code="invalid_api_key")


async def read_body(request: Request, cfg: ServeConfig) -> bytes:
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


async def cancel_when_client_leaves(request: Request, completion: Completion) -> None:
    """Waits for the client to close the connection, then frees the completion's slots.

    A request's body is read by then, so the next ASGI message is the disconnect. Watching for it
    (rather than waiting for a write to fail) notices a client that left while its sequences
    wait for a slot or for the next token.
    """
    while (await request.receive())["type"] != "http.disconnect":
        pass
    completion.client_gone()


async def streamed(request: Request, completion: Completion) -> AsyncIterator[str]:
    watcher = asyncio.create_task(cancel_when_client_leaves(request, completion))
    try:
        async for chunk in completion.stream():
            yield chunk
    finally:
        watcher.cancel()


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

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": cfg.model_name, "max_batch": cfg.max_batch, "max_queue": cfg.max_queue,
                **engine.load(), **service.stats}

    @app.get("/", response_class=HTMLResponse)
    async def playground() -> HTMLResponse:
        return HTMLResponse(resources.files("gptrain").joinpath("assets/playground.html").read_text(encoding="utf-8"))

    def model_card() -> dict:
        return {"id": cfg.model_name, "object": "model", "created": service.created, "owned_by": "gptrain",
                "max_model_len": service.context_length, "chat_template": cfg.template}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict:
        authorize(request, cfg)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str, request: Request) -> dict:
        authorize(request, cfg)
        if name != cfg.model_name:
            raise APIError(404, f"the model '{name}' does not exist: this server serves '{cfg.model_name}'",
                           "model", "model_not_found")
        return model_card()

    async def respond(request: Request, completion: Completion):
        if completion.request.stream:
            return StreamingResponse(streamed(request, completion), media_type="text/event-stream")
        watcher = asyncio.create_task(cancel_when_client_leaves(request, completion))
        try:
            return await completion.response()
        finally:
            watcher.cancel()

    @app.post("/v1/completions")
    async def completions(request: Request):
        authorize(request, cfg)
        return await respond(request, service.start(parse_body(await read_body(request, cfg), CompletionRequest)))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request, cfg)
        chat = parse_body(await read_body(request, cfg), ChatCompletionRequest)
        return await respond(request, service.start(completion_request(chat, service), ChatCompletion))

    @functools.lru_cache(maxsize=16)
    def last_logits(prompt: tuple[int, ...]) -> torch.Tensor:
        with torch.inference_mode():
            return service.model(torch.tensor([prompt], device=engine.device), last_only=True)[0, -1].cpu()

    @app.post("/v1/distribution")
    async def distribution(request: Request) -> dict:
        """The playground's view of the next token (a gptrain extension)."""
        authorize(request, cfg)
        params = parse_body(await read_body(request, cfg), DistributionRequest)
        prompt = service.distribution_prompt(params)
        # The forward pass runs in the engine's thread, between two of its steps.
        logits = await asyncio.wrap_future(engine.call(lambda: last_logits(prompt)))
        return service.distribution(params, logits, len(prompt))

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
