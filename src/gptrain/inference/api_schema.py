"""``gptrain serve``'s settings and the OpenAI API's side of a request: the body's schemas, their
checks, and OpenAI's error object (``{"error": {"message", "type", "param", "code"}}``) with a
fitting HTTP status, so the official ``openai`` client raises its usual exceptions.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from gptrain.core.errors import GptrainError
from gptrain.inference.generate import SamplingError, check_sampling

MAX_STOP_SEQUENCES = 4  # as OpenAI


@dataclass
class ServeConfig:
    """The server's settings; each is a ``gptrain serve`` flag of the same name."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    insecure_no_auth: bool = False  # serve a non-loopback address without an API key, on purpose
    model_name: str = "gptrain"
    max_batch: int = 16
    max_queue: int = 64
    max_tokens: int | None = None  # the cap on a request's max_tokens; None: the model's context length
    max_n: int = 8
    max_logprobs: int = 20
    max_body_bytes: int = 1 << 20
    shutdown_timeout: float = 5.0
    template: str | None = None  # the prompt template of an instruction-tuned model; None: no chat

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise GptrainError(f"port must be in 0..65535 (0 picks a free one), not {self.port}")
        if self.api_key is not None and not self.api_key.strip():
            raise GptrainError("api_key is empty: give a key, or leave it out to serve without one")
        if self.api_key is None and not self.insecure_no_auth and not is_loopback(self.host):
            raise GptrainError(f"host {self.host} is not a loopback address, so anyone who reaches it could use the "
                               "server: give an API key (--api-key), or --insecure-no-auth to serve it open")
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


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (``localhost`` or a loopback address, not a name to resolve)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class APIError(Exception):
    """An OpenAI error object with its HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers

    def response(self) -> JSONResponse:
        error = {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": error}, status_code=self.status, headers=self.headers)


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


def check_api_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """The library's sampling checks, failing as a 400 error object that names the field."""
    try:
        check_sampling(temperature, top_k, top_p)
    except SamplingError as exc:
        raise APIError(400, str(exc), exc.param) from None


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
