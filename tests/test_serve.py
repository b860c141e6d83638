"""`gptrain serve`: the official openai client against a real uvicorn server on a loopback port."""

import concurrent.futures
import contextlib
import copy
import http.client
import json
import math
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest
import torch

from gptrain import GPTConfig, GPTModel, get_tokenizer, load_checkpoint, quantize, save_checkpoint
from gptrain.cli import main
from gptrain.inference.batching import BatchingEngine, QueueFull, Sequence
from gptrain.inference.generate import generate
from gptrain.inference.serve import ServeConfig, make_server, url_of
from uvicorn_thread import serving

CONTEXT = 128
PROMPTS = ["Every effort moves you", "I had always thought Jack Gisburn", "Hello", "The sketch of the donkey",
           "Grüße 🙂", "1 2 3", "She wanted him vindicated", "It was no great surprise to me"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50257, context_length=CONTEXT, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
    return save_checkpoint(GPTModel(cfg), tmp_path_factory.mktemp("serve") / "ckpt")


@pytest.fixture(scope="module")
def reference(checkpoint):
    """The same weights, loaded apart from the server's copy, for the expected tokens."""
    return load_checkpoint(checkpoint).eval()


@contextlib.contextmanager
def running_server(checkpoint, model=None, **settings):
    cfg = ServeConfig(port=0, model_name="tiny", **settings)
    server, sock = make_server(model or load_checkpoint(checkpoint), cfg)
    with serving(server, sock):
        yield url_of(sock)


@pytest.fixture(scope="module")
def url(checkpoint):
    with running_server(checkpoint, max_batch=16, max_tokens=100, max_body_bytes=64 * 1024) as url:
        yield url


@pytest.fixture
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def health(url) -> dict:
    with urllib.request.urlopen(url + "/health") as response:
        return json.loads(response.read())


def post(url, path, body: bytes, headers=None) -> tuple[int, dict]:
    request = urllib.request.Request(url + path, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


class Gate:
    """Holds the engine's thread in its ``at``-th forward pass (counting from 0) until released, so a test
    knows what is running and what is waiting while it sends more requests, whatever the machine's speed."""

    def __init__(self, model, at: int):
        self.calls, self.at = 0, at
        self.held, self.released = threading.Event(), threading.Event()
        model.register_forward_pre_hook(self.hold)

    def hold(self, module, args):
        self.calls += 1
        if self.calls == self.at + 1:
            self.held.set()
            assert self.released.wait(60), "the test never released the engine"

    def wait_held(self):
        assert self.held.wait(30), "the engine never reached the gate"


class Pacer:
    """Lets the engine's thread run its first ``free`` forward passes, then one per :meth:`allow`."""

    def __init__(self, model, free: int):
        self.calls, self.free, self.opened = 0, free, False
        self.permits = threading.Semaphore(0)
        model.register_forward_pre_hook(self.hold)

    def hold(self, module, args):
        self.calls += 1
        if self.calls > self.free and not self.opened:
            assert self.permits.acquire(timeout=60), "the test never let the engine go on"

    def allow(self):
        self.permits.release()

    def open(self):
        self.opened = True
        self.permits.release()


def expected_text(model, prompt: str, max_tokens: int, **sampling) -> str:
    tokenizer = get_tokenizer()
    ids = torch.tensor([tokenizer.encode(prompt)])
    out = generate(model, ids, max_tokens, CONTEXT, eos_id=50256, **sampling)
    return tokenizer.decode(out[0, ids.shape[1]:].tolist())


# --- The API ---

def test_models_and_health(client, url):
    assert [model.id for model in client.models.list()] == ["tiny"]
    assert client.models.retrieve("tiny").max_model_len == CONTEXT
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    state = health(url)
    assert state["status"] == "ok" and state["model"] == "tiny" and state["max_batch"] == 16


def test_greedy_and_seeded_completions_equal_gptrain_generate(client, checkpoint, capsys):
    for flags, sampling in [([], dict(temperature=0)),
                            (["--temperature", "1.3", "--top-k", "30", "--top-p", "0.8", "--seed", "3"],
                             dict(temperature=1.3, top_p=0.8, seed=3, extra_body={"top_k": 30}))]:
        capsys.readouterr()
        assert main(["generate", "--checkpoint", str(checkpoint), "--prompt", PROMPTS[0], "--max-new-tokens", "25",
                     "--device", "cpu", "--no-stream", *flags]) == 0
        cli_text = capsys.readouterr().out[:-1]  # print's newline
        response = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=25, **sampling)
        choice = response.choices[0]
        assert PROMPTS[0] + choice.text == cli_text
        assert choice.finish_reason == "length" and choice.index == 0
        assert response.usage.prompt_tokens == 4 and response.usage.completion_tokens == 25
        assert response.usage.total_tokens == 29 and response.model == "tiny"
        assert response.object == "text_completion" and response.id.startswith("cmpl-")


def test_streamed_text_equals_plain_text(client, url):
    plain = client.completions.create(model="tiny", prompt=PROMPTS[4], max_tokens=30, temperature=0)
    chunks = list(client.completions.create(model="tiny", prompt=PROMPTS[4], max_tokens=30, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert len(chunks) >= 20  # token by token
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == plain.choices[0].text
    assert [chunk.choices[0].finish_reason for chunk in chunks[:-1]][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 30
    # On the wire: server-sent events ending with [DONE].
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
    connection.request("POST", "/v1/completions", json.dumps({"prompt": "Hi", "max_tokens": 3, "stream": True}),
                       {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("content-type").startswith("text/event-stream")
    events = [line for line in response.read().decode().split("\n\n") if line]
    assert all(event.startswith("data: ") for event in events) and events[-1] == "data: [DONE]"
    connection.close()


def test_logprobs_are_the_models_and_echo_returns_the_prompt(client, reference):
    response = client.completions.create(model="tiny", prompt=PROMPTS[1], max_tokens=6, temperature=0, logprobs=3,
                                         echo=True)
    choice = response.choices[0]
    tokenizer = get_tokenizer()
    prompt_ids = tokenizer.encode(PROMPTS[1])
    assert choice.text.startswith(PROMPTS[1])
    logprobs = choice.logprobs
    assert len(logprobs.tokens) == len(prompt_ids) + 6 and logprobs.token_logprobs[0] is None
    assert "".join(logprobs.tokens) == choice.text
    assert logprobs.text_offset[len(prompt_ids)] == len(PROMPTS[1])
    ids = prompt_ids + tokenizer.encode(choice.text[len(PROMPTS[1]):])
    with torch.no_grad():
        expected = torch.log_softmax(reference(torch.tensor([ids]))[0], dim=-1)
    for position in range(1, len(ids)):
        assert math.isclose(logprobs.token_logprobs[position], expected[position - 1, ids[position]].item(),
                            abs_tol=1e-4)
    for position in range(len(prompt_ids), len(ids)):
        top = logprobs.top_logprobs[position]
        best = torch.topk(expected[position - 1], 3)
        assert [top[tokenizer.decode([i])] for i in best.indices.tolist()] == pytest.approx(best.values.tolist(), abs=1e-4)
        assert max(top.values()) == pytest.approx(logprobs.token_logprobs[position], abs=1e-6)  # greedy took the best


def test_stop_sequences_end_the_text_before_them(client):
    full = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=40, temperature=0).choices[0].text
    stop = full[20:24]
    first = full.index(stop)
    for stream in (False, True):
        response = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=40, temperature=0,
                                             stop=["never appears 123", stop], stream=stream)
        if stream:
            chunks = list(response)
            text = "".join(chunk.choices[0].text for chunk in chunks)
            reason = chunks[-1].choices[0].finish_reason
        else:
            text, reason = response.choices[0].text, response.choices[0].finish_reason
        assert (text, reason) == (full[:first], "stop")


def test_n_choices_and_seeds_are_reproducible(client):
    def texts(**settings):
        response = client.completions.create(model="tiny", prompt=[PROMPTS[2], PROMPTS[3]], max_tokens=12,
                                             temperature=1.0, **settings)
        return [choice.text for choice in sorted(response.choices, key=lambda c: c.index)]

    three = texts(n=3, seed=7)
    assert len(three) == 6 and len(set(three)) == 6
    assert texts(n=3, seed=7) == three
    assert texts(n=1, seed=7) == [three[0], three[3]]
    assert texts(n=1, seed=8) == [three[1], three[4]]  # choice i draws as seed + i
    assert texts(n=1, seed=9) != texts(n=1, seed=10)


def test_sixteen_concurrent_streaming_clients_get_what_they_would_get_alone(checkpoint, reference):
    requests = [(PROMPTS[i % len(PROMPTS)], 20 + 5 * i) for i in range(16)]
    model = load_checkpoint(checkpoint)
    gate = Gate(model, at=0)  # the first prompt's pass waits until all sixteen streams are open
    with running_server(checkpoint, model=model, max_batch=16) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        try:
            # A streamed request's response starts once the server has queued it.
            streams = [client.completions.create(model="tiny", prompt=prompt, max_tokens=max_tokens, temperature=0,
                                                 stream=True) for prompt, max_tokens in requests]
            gate.wait_held()
            assert health(url)["waiting"] == 15
        finally:
            gate.released.set()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            texts = list(pool.map(lambda chunks: "".join(chunk.choices[0].text for chunk in chunks), streams))
        for (prompt, max_tokens), text in zip(requests, texts):
            assert text == expected_text(reference, prompt, max_tokens), prompt
        state = health(url)
        # The first request decoded alone for one step, then all sixteen shared each step.
        assert state["steps"] == max(max_tokens for _, max_tokens in requests)
        assert state["running"] == 0 and state["waiting"] == 0


def until(condition, url, what: str) -> dict:
    """Polls /health until ``condition(state)`` holds (30 s at most); the last state."""
    deadline = time.monotonic() + 30
    while not condition(state := health(url)):
        assert time.monotonic() < deadline, f"never {what}: {state}"
        time.sleep(0.01)
    return state


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "not-streamed"])
def test_a_client_that_disconnects_frees_its_slot_within_one_decode_step(checkpoint, stream):
    model = load_checkpoint(checkpoint)
    pacer = Pacer(model, free=2)  # the prompt's pass and one decode step, then one step per allow()
    with running_server(checkpoint, model=model) as url:
        try:
            connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
            connection.request("POST", "/v1/completions", json.dumps({"prompt": "Hi", "max_tokens": 100,
                                                                      "stream": stream, "temperature": 0}),
                               {"Content-Type": "application/json"})
            if stream:
                assert connection.getresponse().readline().startswith(b"data: ")
            # The engine now waits inside its second decode step's forward pass.
            until(lambda state: state["steps"] == 1 and state["running"] == 1, url, "decoding")
            connection.sock.shutdown(socket.SHUT_RDWR)
            connection.close()
            # The server notices the closed connection while the engine still waits: no token is needed for it.
            state = until(lambda state: state["disconnected"] == 1, url, "noticed")
            assert state["steps"] == 1 and state["running"] == 1
            pacer.allow()  # the step under way ends; the sequence leaves before the next one
            state = until(lambda state: state["running"] == 0, url, "freed")
        finally:
            pacer.open()
    assert state["steps"] <= 2 and state["cancelled"] == 1 and state["finished"] == 0


def test_sixty_four_streaming_clients_over_the_limit_get_503_and_retry_after_at_once(checkpoint, reference):
    """max_batch 2 + max_queue 2 hold four sequences: of 64 concurrent streams, 60 are refused while the
    engine is held in its first forward pass (so nothing waits for a slot), and the four complete."""
    model = load_checkpoint(checkpoint)
    gate = Gate(model, at=0)
    requests = [(PROMPTS[i % len(PROMPTS)], 8 + i % 5) for i in range(64)]
    with running_server(checkpoint, model=model, max_batch=2, max_queue=2) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)

        def send(request):
            prompt, max_tokens = request
            try:
                return client.completions.create(model="tiny", prompt=prompt, max_tokens=max_tokens, temperature=0,
                                                 stream=True)
            except openai.APIStatusError as error:
                return error

        try:
            with concurrent.futures.ThreadPoolExecutor(64) as pool:
                answers = list(pool.map(send, requests, timeout=60))
            state = health(url)  # answered while the engine is held
        finally:
            gate.released.set()
        refused = [answer for answer in answers if isinstance(answer, openai.APIStatusError)]
        assert len(refused) == 60 and state["rejected"] == 60 and state["running"] + state["waiting"] <= 4
        for error in refused:
            assert error.status_code == 503 and error.body["code"] == "queue_full"
            assert error.response.headers["retry-after"] == "1"
        accepted = [(request, answer) for request, answer in zip(requests, answers)
                    if not isinstance(answer, openai.APIStatusError)]
        for (prompt, max_tokens), chunks in accepted:
            assert "".join(chunk.choices[0].text for chunk in chunks) == expected_text(reference, prompt, max_tokens)
        state = health(url)
    assert state["finished"] == 4 and state["running"] == state["waiting"] == 0


BAD_REQUESTS = [
    (b'{"prompt": "Hi", "max_tokens": ', 400, None),
    (b'["Hi"]', 400, None),
    (b'{"max_tokens": 3}', 400, "prompt"),
    (b'{"prompt": 5}', 400, "prompt"),
    (b'{"prompt": []}', 400, "prompt"),
    (b'{"prompt": [[]]}', 400, "prompt"),
    (b'{"prompt": [50257]}', 400, "prompt"),
    (b'{"prompt": "Hi", "temperature": "hot"}', 400, "temperature"),
    (b'{"prompt": "Hi", "max_tokens": 1.5}', 400, "max_tokens"),
    (b'{"prompt": "Hi", "stream": "yes"}', 400, "stream"),
    (b'{"prompt": "Hi", "stop": 5}', 400, "stop"),
    (b'{"prompt": "Hi", "stop": ["a", "b", "c", "d", "e"]}', 400, "stop"),
    (b'{"prompt": "Hi", "temperature": -0.5}', 400, "temperature"),
    (b'{"prompt": "Hi", "top_p": 0}', 400, "top_p"),
    (b'{"prompt": "Hi", "top_p": 1.5}', 400, "top_p"),
    (b'{"prompt": "Hi", "top_k": 0}', 400, "top_k"),
    (b'{"prompt": "Hi", "max_tokens": 101}', 400, "max_tokens"),
    (b'{"prompt": "Hi", "max_tokens": -1}', 400, "max_tokens"),
    (b'{"prompt": "Hi", "n": 9}', 400, "n"),
    (b'{"prompt": "Hi", "n": 0}', 400, "n"),
    (b'{"prompt": "Hi", "logprobs": 21}', 400, "logprobs"),
    (b'{"prompt": "' + b"word " * 200 + b'"}', 400, "prompt"),
    (b'{"prompt": ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"], "n": 8}', 400, "prompt"),  # 88 > 16 + 64
    (b'{"prompt": "Hi", "model": "gpt-4"}', 404, "model"),
    (b'{"prompt": "' + b"x" * 70000 + b'"}', 413, None),
]


@pytest.mark.parametrize("body,status,param", BAD_REQUESTS, ids=range(len(BAD_REQUESTS)))
def test_bad_requests_get_an_openai_error_and_the_server_keeps_serving(url, client, body, status, param):
    code, answer = post(url, "/v1/completions", body)
    assert code == status, answer
    error = answer["error"]
    assert error["message"] and "\n" not in error["message"] and error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert client.completions.create(model="tiny", prompt="Hi", max_tokens=2,
                                     temperature=0).choices[0].finish_reason == "length"


def test_what_openai_allows_is_answered(url, client):
    # Unknown fields are ignored; a long prompt is left-truncated when asked; an unknown route is a 404 error object.
    code, answer = post(url, "/v1/completions", b'{"prompt": "Hi", "max_tokens": 2, "temperature": 0, '
                                                b'"presence_penalty": 0.5, "x": 1}')
    assert code == 200 and answer["usage"]["completion_tokens"] == 2
    code, answer = post(url, "/v1/completions", b'{"prompt": "' + b"word " * 200 + b'", "max_tokens": 2, '
                                                b'"truncate_prompt_tokens": 50}')
    assert code == 200 and answer["usage"]["prompt_tokens"] == 50
    code, answer = post(url, "/v1/chat/nothing", b"{}")
    assert code == 404 and answer["error"]["code"] == "unknown_url"
    with pytest.raises(openai.BadRequestError, match="maximum context length is 128 tokens"):
        client.completions.create(model="tiny", prompt=[1] * 129)
    response = client.completions.create(model="tiny", prompt=[[464, 3290], [40]], max_tokens=3, temperature=0)
    assert len(response.choices) == 2 and response.usage.prompt_tokens == 3
    # max_tokens 0 with echo and logprobs scores a text without generating.
    scored = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=0, echo=True, logprobs=0).choices[0]
    assert scored.text == PROMPTS[0] and scored.finish_reason == "length"
    assert len(scored.logprobs.token_logprobs) == 4 and scored.logprobs.token_logprobs[0] is None


def test_a_full_queue_answers_503_and_the_others_complete(checkpoint, reference):
    model = load_checkpoint(checkpoint)
    gate = Gate(model, at=1)  # the first decode step: one request runs, its slot stays taken
    with running_server(checkpoint, model=model, max_batch=1, max_queue=1) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)

        def stream(prompt):
            return client.completions.create(model="tiny", prompt=prompt, max_tokens=100, temperature=0, stream=True)

        try:
            running = stream(PROMPTS[0])
            gate.wait_held()
            waiting = stream(PROMPTS[1])
            assert (health(url)["running"], health(url)["waiting"]) == (1, 1)
            for refused in (lambda: stream(PROMPTS[2]), lambda: client.completions.create(model="tiny", prompt="Hi")):
                with pytest.raises(openai.APIStatusError) as error:
                    refused()
                assert error.value.status_code == 503 and error.value.body["code"] == "queue_full"
        finally:
            gate.released.set()
        for prompt, chunks in [(PROMPTS[0], running), (PROMPTS[1], waiting)]:
            assert "".join(chunk.choices[0].text for chunk in chunks) == expected_text(reference, prompt, 100)
        assert client.completions.create(model="tiny", prompt="Hi", max_tokens=2,
                                         temperature=0).usage.completion_tokens == 2


def test_the_api_key_is_enforced(checkpoint):
    with running_server(checkpoint, api_key="s3cret") as url:
        for key in ("wrong", "s3cre"):
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0).completions.create(model="tiny", prompt="Hi")
        code, answer = post(url, "/v1/completions", b'{"prompt": "Hi"}')
        assert code == 401 and answer["error"]["code"] == "invalid_api_key"
        client = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert client.completions.create(model="tiny", prompt="Hi", max_tokens=2,
                                         temperature=0).usage.completion_tokens == 2
        assert health(url)["status"] == "ok"  # the health check and the playground need no key


def test_the_distribution_before_and_after_temperature_and_filtering(url, reference):
    code, answer = post(url, "/v1/distribution", json.dumps({"prompt": PROMPTS[0], "temperature": 2.0, "top_k": 3,
                                                             "count": 5}).encode())
    assert code == 200 and answer["kept"] == 3 and len(answer["tokens"]) == 5
    with torch.no_grad():
        logits = reference(torch.tensor([get_tokenizer().encode(PROMPTS[0])]))[0, -1]
    best = torch.topk(logits, 5).indices
    rows = answer["tokens"]
    assert [row["token"] for row in rows] == best.tolist()
    assert [row["probability"] for row in rows] == pytest.approx(torch.softmax(logits, -1)[best].tolist(), rel=1e-4)
    assert [row["after_temperature"] for row in rows] == pytest.approx(torch.softmax(logits / 2, -1)[best].tolist(),
                                                                       rel=1e-4)
    kept = torch.softmax(logits[best[:3]] / 2, -1).tolist()
    assert [row["after_filtering"] for row in rows] == pytest.approx(kept + [0, 0], rel=1e-4)
    code, answer = post(url, "/v1/distribution", b'{"prompt": "x", "temperature": -1}')
    assert code == 400 and answer["error"]["param"] == "temperature"


# --- The playground, in a real browser ---

def test_the_playground_streams_and_shows_the_distribution_in_headless_chromium(url, reference, tmp_path):
    """Driven like a person: open the page, generate, move the temperature slider (Playwright on the
    system's Chromium, so nothing is downloaded)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency")
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")

    def column(page, name: str) -> list[float]:
        return [float(width.removesuffix("%")) for width in
                page.eval_on_selector_all(f"#distribution td.bar.{name} div", "cells => cells.map(c => c.style.width)")]

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            console = []
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            page.on("pageerror", lambda error: console.append(f"error: {error}"))
            page.goto(f"{url}/?prompt=Every+effort+moves+you&temperature=0&max_tokens=20&seed=1&run=1")
            page.wait_for_selector("body[data-done]", timeout=120_000)
            assert page.get_attribute("body", "data-done") == "length"
            assert page.text_content("#completion") == expected_text(reference, "Every effort moves you", 20)
            assert "20 tokens in" in page.text_content("#status")

            def shows(temperature: float) -> None:
                """Waits until the table shows the server's distribution at this temperature and top-k 5
                (the page asks 120 ms after the last slider move, and an older answer may arrive first)."""
                _, answer = post(url, "/v1/distribution", json.dumps({"prompt": "Every effort moves you", "count": 12,
                                                                     "temperature": temperature, "top_k": 5}).encode())
                kept = [100 * row["after_filtering"] for row in answer["tokens"]]
                page.wait_for_function(
                    """kept => { const cells = [...document.querySelectorAll("#distribution td.bar.kept div")];
                                 return cells.length === kept.length && cells.every(
                                     (c, i) => Math.abs(parseFloat(c.style.width) - kept[i]) < 0.01); }""",
                    arg=kept, timeout=60_000)

            page.fill("#top_k", "5")
            page.fill("#temperature", "0.5")
            shows(0.5)
            cold_raw, cold_kept = column(page, "raw"), column(page, "kept")
            page.fill("#temperature", "2")
            shows(2)
            hot_raw, hot_kept = column(page, "raw"), column(page, "kept")
            assert len(cold_raw) == 12 and cold_raw == hot_raw  # the model's own distribution does not move
            assert cold_kept[0] > hot_kept[0] + 1  # a hotter softmax is flatter
            assert hot_kept[5:] == [0.0] * 7 and sum(hot_kept) == pytest.approx(100, abs=0.1)  # top-k 5
            page.screenshot(path=tmp_path / "playground.png")
            assert (tmp_path / "playground.png").stat().st_size > 10_000
            assert console == []
        finally:
            browser.close()


# --- The engine alone ---

def test_engine_queue_is_bounded_and_all_or_nothing(reference):
    engine = BatchingEngine(reference, max_batch=2, max_queue=1)  # not started: nothing leaves the queue
    engine.submit([Sequence([1], 5), Sequence([2], 5)])
    with pytest.raises(QueueFull, match="queue is full"):
        engine.submit([Sequence([3], 5), Sequence([4], 5)])
    engine.submit([Sequence([3], 5)])
    with pytest.raises(QueueFull):
        engine.submit([Sequence([5], 5)])
    assert engine.load()["waiting"] == 3


class PausingSequence(Sequence):
    """Holds the engine's thread after its ``at``-th token until the test lets it go on."""

    def __init__(self, *args, at: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.at, self.reached, self.go_on = at, threading.Event(), threading.Event()

    def on_token(self, info) -> bool:
        if len(self.tokens) == self.at:
            self.reached.set()
            assert self.go_on.wait(60), "the test never let the sequence go on"
        return True


class WatchingSequence(Sequence):
    """Notes, as it finishes (in the engine's thread), whether another sequence had finished."""

    def __init__(self, *args, watched: Sequence, **kwargs):
        super().__init__(*args, **kwargs)
        self.watched, self.watched_was_done = watched, None

    def on_finish(self, reason: str) -> None:
        self.watched_was_done = self.watched.done.is_set()


def test_a_long_request_does_not_block_short_ones(reference):
    engine = BatchingEngine(reference, max_batch=4).start()
    try:
        long = PausingSequence([464, 3290], 120, at=5)
        engine.submit([long])
        assert long.reached.wait(30)
        short = WatchingSequence([40], 5, watched=long)
        engine.submit([short])  # it joins at the next step, with 115 of the long one's tokens to go
        long.go_on.set()
        assert short.done.wait(30)
        assert len(short.tokens) == 5 and not short.watched_was_done
        assert long.done.wait(30) and long.finish_reason == "length"
        ids = torch.tensor([[464, 3290]])
        assert long.tokens == generate(reference, ids, 120, CONTEXT)[0, 2:].tolist()
    finally:
        engine.stop()


def test_sampled_sequences_in_a_batch_draw_what_they_draw_alone(reference):
    engine = BatchingEngine(reference, max_batch=8).start()
    try:
        settings = [dict(temperature=1.0), dict(temperature=0.7, top_k=20), dict(temperature=1.5, top_p=0.9), {}]
        sequences = [Sequence([464 + i, 3290], 30, generator=torch.Generator().manual_seed(i), **s)
                     for i, s in enumerate(settings)]
        engine.submit(sequences)
        for i, sequence in enumerate(sequences):
            assert sequence.done.wait(30)
            alone = generate(reference, torch.tensor([[464 + i, 3290]]), 30, CONTEXT,
                             generator=torch.Generator().manual_seed(i), **settings[i])
            assert sequence.tokens == alone[0, 2:].tolist()
    finally:
        engine.stop()


# --- The command ---

@pytest.mark.parametrize("shutdown_timeout,finished", [("60", True), ("0", False)])
def test_gptrain_serve_prints_its_url_and_stops_cleanly_on_sigterm(checkpoint, shutdown_timeout, finished):
    process = subprocess.Popen([sys.executable, "-m", "gptrain", "serve", "--checkpoint", str(checkpoint), "--port", "0",
                                "--device", "cpu", "--shutdown-timeout", shutdown_timeout],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        found = re.search(r"at (http://127\.0\.0\.1:\d+)/v1", line)
        assert found, line + process.stderr.read()
        client = openai.OpenAI(base_url=found.group(1) + "/v1", api_key="unused", max_retries=0)
        assert [model.id for model in client.models.list()] == ["ckpt"]
        stream = iter(client.completions.create(model="ckpt", prompt="Hi", max_tokens=20, temperature=0, stream=True))
        next(stream)
        process.send_signal(signal.SIGTERM)
        if finished:  # in flight: given the time, the request completes
            assert [chunk.choices[0].finish_reason for chunk in stream][-1] == "length"
            assert process.wait(timeout=60) == 0
        else:  # no time: the server exits while a client still holds an open stream, and nothing hangs
            assert process.wait(timeout=60) == 0
            with contextlib.suppress(openai.APIConnectionError):  # a tiny model may have sent it all already
                list(stream)
        assert process.stdout.read().strip().endswith("Server stopped")
    finally:
        process.kill()
        process.wait()


def test_gptrain_serve_bad_settings_are_one_line_and_exit_2(checkpoint, capsys):
    assert main(["serve", "--checkpoint", str(checkpoint), "--max-batch", "0"]) == 2
    assert capsys.readouterr().err.strip() == "gptrain: error: max_batch must be at least 1, not 0"
    for host in ("0.0.0.0", "192.168.1.20", "::", "example.org"):
        assert main(["serve", "--checkpoint", str(checkpoint), "--host", host]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"host {host} is not a loopback address" in err and "--api-key" in err
        assert "--insecure-no-auth" in err
    for host in ("127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost"):
        ServeConfig(host=host)
    ServeConfig(host="0.0.0.0", api_key="k")
    ServeConfig(host="0.0.0.0", insecure_no_auth=True)
    assert main(["serve", "--checkpoint", str(checkpoint / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_gptrain_serve_quantize_int8_gives_eight_concurrent_streams_what_each_gets_alone(checkpoint, reference):
    process = subprocess.Popen([sys.executable, "-m", "gptrain", "serve", "--checkpoint", str(checkpoint), "--port", "0",
                                "--device", "cpu", "--quantize", "int8", "--max-batch", "8"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        found = re.search(r"at (http://127\.0\.0\.1:\d+)/v1", line)
        assert found, line + process.stderr.read()
        url = found.group(1)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)

        def streamed(stream) -> str:
            return "".join(chunk.choices[0].text for chunk in stream)

        def open_stream(prompt: str):
            return client.completions.create(model="ckpt", prompt=prompt, max_tokens=48, temperature=0, stream=True)

        alone = [streamed(open_stream(prompt)) for prompt in PROMPTS]
        steps_alone = health(url)["steps"]
        # Each stream is open (queued) before the next is asked for: eight sequences decode together.
        streams = [open_stream(prompt) for prompt in PROMPTS]
        with concurrent.futures.ThreadPoolExecutor(len(streams)) as pool:
            together = list(pool.map(streamed, streams))
        assert together == alone
        decode_steps = 47 * len(PROMPTS)  # the prompt's pass gives each sequence its first token
        assert steps_alone == decode_steps
        assert health(url)["steps"] - steps_alone < decode_steps  # steps were shared
        # The text of gptrain.quantize's model: the int8 weights, not the float ones, served.
        assert alone == [expected_text(quantize(copy.deepcopy(reference)), prompt, 48) for prompt in PROMPTS]
    finally:
        process.kill()
        process.wait()
