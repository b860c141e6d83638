"""``gptrain serve``: a model over the OpenAI completions API, with a playground page."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from gptrain.cli.common import add_device_flag, add_model_flags, add_quantize_flag


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="serve a model over the OpenAI completions and chat APIs, with a playground page",
        description="Serve a model over HTTP: the OpenAI completions API (GET /v1/models, POST /v1/completions, "
                    "streamed or not; POST /v1/chat/completions for an instruction-tuned model), GET /health, and a "
                    "playground page at /. Concurrent requests share forward passes (continuous batching). Ctrl-C or "
                    "SIGTERM stops it; running requests get --shutdown-timeout seconds to finish.",
    )
    add_model_flags(p, help="the model to serve")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 is every interface, and any address but loopback needs "
                        "--api-key or --insecure-no-auth [127.0.0.1]")
    p.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one [8000]")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on the API [$GPTRAIN_API_KEY, else none]")
    p.add_argument("--insecure-no-auth", action="store_true",
                   help="serve an address other than loopback without an API key: anyone who reaches it may use it")
    p.add_argument("--model-name", default=None,
                   help="the model id clients name [the model's folder or file name; gpt2-SIZE for a GPT-2 size]")
    p.add_argument("--max-batch", type=int, default=16, help="sequences generated together [16]")
    p.add_argument("--max-queue", type=int, default=64,
                   help="sequences that may wait for a slot; beyond, 503 with Retry-After at once [64]")
    # --max-tokens, the old name, is train's token budget there: kept here as an alias.
    p.add_argument("--max-request-tokens", "--max-tokens", dest="max_request_tokens", type=int, default=None,
                   help="cap on a request's max_tokens (alias: --max-tokens) [the model's context]")
    p.add_argument("--max-n", type=int, default=8, help="cap on a request's n [8]")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body in bytes; 413 beyond [1 MiB]")
    p.add_argument("--shutdown-timeout", type=float, default=5.0,
                   help="seconds running requests get to finish after Ctrl-C or SIGTERM [5]")
    add_device_flag(p, name_default=True)
    add_quantize_flag(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from gptrain.core.runtime import resolve_device
    from gptrain.inference.serve import ServeConfig, serve
    from gptrain.interop.sources import GPT2_SIZE, resolve_model

    # The settings are checked before the model is loaded: a bad one costs no waiting.
    cfg = ServeConfig(host=args.host, port=args.port, api_key=args.api_key or os.environ.get("GPTRAIN_API_KEY"),
                      insecure_no_auth=args.insecure_no_auth,
                      model_name=args.model_name or "gptrain", max_batch=args.max_batch, max_queue=args.max_queue,
                      max_tokens=args.max_request_tokens, max_n=args.max_n, max_body_bytes=args.max_body_bytes,
                      shutdown_timeout=args.shutdown_timeout)
    source = resolve_model(args.model, device=resolve_device(args.device), n_heads=args.n_heads,
                           quantize=args.quantize)
    cfg = dataclasses.replace(cfg, template=source.template)
    if args.model_name is None:
        name = f"gpt2-{args.model}" if source.kind == GPT2_SIZE else Path(args.model).expanduser().resolve().name
        cfg = dataclasses.replace(cfg, model_name=name)
    serve(source.model, cfg)
    return 0
