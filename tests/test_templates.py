"""Prompt templates: the book's Alpaca format, chat turns, and what a template refuses."""

import pytest
import torch
from llms_from_scratch import ch07

from gptrain.core.errors import GptrainError
from gptrain.data.templates import (
    ALPACA,
    CHAT,
    check_template,
    format_input,
    render_instruction,
    render_prompt,
    render_record,
)
from gptrain.interop.sources import resolve_model
from gptrain.model.config import GPTConfig
from gptrain.model.gpt import GPTModel
from gptrain.store.checkpoint import save_checkpoint

ENTRIES = [
    {"instruction": "Rewrite the sentence using a simile.", "input": "The car is very fast.",
     "output": "The car is as fast as lightning."},
    {"instruction": "Name the capital of France.", "input": "", "output": "Paris."},
]


@pytest.mark.parametrize("entry", ENTRIES)
def test_format_input_is_the_books(entry):
    assert format_input(entry) == ch07.format_input(entry)


@pytest.mark.parametrize("entry", ENTRIES)
def test_an_alpaca_record_renders_the_books_text_with_end_of_text_learned(entry):
    segments = render_record(ALPACA, entry)
    book_text = ch07.format_input(entry) + f"\n\n### Response:\n{entry['output']}"
    assert "".join(s.text for s in segments) == book_text + "<|endoftext|>"
    assert [s.learned for s in segments] == [False, True]
    assert segments[1].text == entry["output"] + "<|endoftext|>"


def test_a_chat_conversation_learns_every_reply_and_prompts_for_the_next():
    record = {"messages": [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                           {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye."}]}
    segments = render_record(CHAT, record)
    assert [s.text for s in segments if s.learned] == ["Hello.<|endoftext|>", "Goodbye.<|endoftext|>"]
    assert "".join(s.text for s in segments) == (
        "Be brief.\n\n### User:\nHi\n\n### Assistant:\nHello.<|endoftext|>"
        "### User:\nBye\n\n### Assistant:\nGoodbye.<|endoftext|>")
    prompt = render_prompt(CHAT, record["messages"][:4])
    assert prompt == "".join(s.text for s in segments[:4])


def test_an_instruction_prompt_matches_its_training_prompt_in_both_templates():
    entry = {"instruction": "Name the capital of France.", "input": "", "output": "Paris."}
    for template in (ALPACA, CHAT):
        assert render_instruction(template, entry["instruction"]) == render_record(template, entry)[0].text


@pytest.mark.parametrize("record, message", [
    ({"instruction": "", "output": "x"}, "'instruction' is missing or empty"),
    ({"instruction": "Do it", "output": " "}, "response is empty"),
    ({"prompt": "x"}, "neither 'instruction' nor 'messages'"),
    ({"messages": [{"role": "assistant", "content": "x"}]}, "must alternate"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "role"),
    ({"instruction": 3, "output": "x"}, "not text"),
])
def test_a_bad_record_is_one_line_naming_the_problem(record, message):
    with pytest.raises(GptrainError, match=message):
        render_record(ALPACA, record)


def test_an_unknown_template_is_refused():
    with pytest.raises(GptrainError, match="use one of alpaca, chat"):
        check_template("llama")


def test_a_checkpoint_keeps_its_template(tmp_path):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50257, context_length=8, emb_dim=16, n_heads=2, n_layers=1)
    save_checkpoint(GPTModel(cfg), tmp_path / "ckpt", template=CHAT)
    assert resolve_model(tmp_path / "ckpt").template == CHAT
    save_checkpoint(GPTModel(cfg), tmp_path / "base")
    assert resolve_model(tmp_path / "base").template is None
