"""Chat: /v1/chat/completions through the official openai client on a real server, and `gptrain chat`."""

import shutil
import subprocess
import sys

import openai
import pytest
import torch
from test_serve import running_server

from gptrain import GPTConfig, GPTModel, save_checkpoint
from gptrain.cli import main
from gptrain.data.templates import CHAT, render_prompt

CONVERSATION = [{"role": "system", "content": "You answer briefly."},
                {"role": "user", "content": "What moves you?"}]


@pytest.fixture(scope="module")
def chat_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50257, context_length=96, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
    return save_checkpoint(GPTModel(cfg), tmp_path_factory.mktemp("chat") / "ckpt", template=CHAT)


@pytest.fixture(scope="module")
def client(chat_checkpoint):
    with running_server(chat_checkpoint, max_tokens=40, template=CHAT) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_a_chat_reply_is_the_completion_of_the_conversation_in_the_models_template(client):
    reply = client.chat.completions.create(model="tiny", messages=CONVERSATION, temperature=0, max_tokens=12)
    completion = client.completions.create(model="tiny", prompt=render_prompt(CHAT, CONVERSATION), temperature=0,
                                           max_tokens=12)
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant"
    assert choice.message.content == completion.choices[0].text and choice.message.content
    assert choice.finish_reason == completion.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 12 and reply.usage.prompt_tokens == completion.usage.prompt_tokens


def test_a_streamed_reply_names_the_assistant_once_and_adds_up_to_the_plain_reply(client):
    plain = client.chat.completions.create(model="tiny", messages=CONVERSATION, temperature=0, max_tokens=10)
    chunks = list(client.chat.completions.create(model="tiny", messages=CONVERSATION, temperature=0, max_tokens=10,
                                                 stream=True, stream_options={"include_usage": True}))
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    assert chunks[0].object == "chat.completion.chunk"
    assert [d.role for d in deltas].count("assistant") == 1 and deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 10


def test_without_a_token_limit_a_reply_may_fill_the_window(client):
    reply = client.chat.completions.create(model="tiny", messages=CONVERSATION, temperature=0)
    assert reply.usage.completion_tokens == 40  # the server's cap, below the window's room here


def test_a_conversation_that_does_not_end_with_the_user_is_a_400(client):
    with pytest.raises(openai.BadRequestError, match="ending with user"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"},
                                                               {"role": "assistant", "content": "Hello"}])


def test_a_base_model_refuses_chat_and_still_completes(tmp_path):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50257, context_length=32, emb_dim=16, n_heads=2, n_layers=1)
    base = save_checkpoint(GPTModel(cfg), tmp_path / "base")
    with running_server(base) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        with pytest.raises(openai.BadRequestError, match="is a base model"):
            client.chat.completions.create(model="tiny", messages=CONVERSATION)
        assert client.completions.create(model="tiny", prompt="Hi", max_tokens=2).choices[0].text
    assert main(["chat", "--model", str(base)]) == 2


def test_gptrain_chat_answers_each_line_as_the_server_does(chat_checkpoint, client):
    first = [{"role": "user", "content": "What moves you?"}]
    expected = client.chat.completions.create(model="tiny", messages=first, temperature=0, max_tokens=8)
    history = first + [{"role": "assistant", "content": expected.choices[0].message.content},
                       {"role": "user", "content": "Why?"}]
    second = client.chat.completions.create(model="tiny", messages=history, temperature=0, max_tokens=8)
    result = subprocess.run([sys.executable, "-m", "gptrain", "chat", "--model", str(chat_checkpoint), "--device", "cpu",
                             "--max-new-tokens", "8"], input="What moves you?\n\nWhy?\n/exit\n",
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{expected.choices[0].message.content}\n{second.choices[0].message.content}\n"


def test_the_playgrounds_chat_tab_holds_a_conversation_in_headless_chromium(chat_checkpoint):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency")
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    with running_server(chat_checkpoint, template=CHAT) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        first = [{"role": "user", "content": "What moves you?"}]
        expected = client.chat.completions.create(messages=first, model="tiny", temperature=0,
                                                  max_tokens=10).choices[0].message.content
        history = first + [{"role": "assistant", "content": expected}, {"role": "user", "content": "Why?"}]
        then = client.chat.completions.create(messages=history, model="tiny", temperature=0,
                                              max_tokens=10).choices[0].message.content
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            try:
                page = browser.new_page()
                errors = []
                page.on("pageerror", lambda error: errors.append(str(error)))
                page.goto(url + "/")
                page.click("#tab-chat")
                assert page.is_visible("#chat-view") and not page.is_visible("#complete-view")
                page.fill("#chat_max_tokens", "10")
                for message in ("What moves you?", "Why?"):
                    page.fill("#message", message)
                    page.click("#send")
                    page.wait_for_selector("body[data-chat-done]", timeout=60_000)
                    assert page.get_attribute("body", "data-chat-done") == "length"
                turns = page.eval_on_selector_all("#chat-log .turn", "turns => turns.map(t => t.textContent)")
                assert turns == ["What moves you?", expected, "Why?", then]
                assert errors == []
            finally:
                browser.close()
