"""Instruction fine-tuning: the book's chapter 7 functions side by side with llms_from_scratch.ch07, the
loss gptrain's loop takes, a tiny model taught eight answers end to end, the judge, and bad input."""

import io
import json
import socket
from contextlib import contextmanager

import openai
import pytest
import torch
import uvicorn
from conftest import INSTRUCTIONS
from fastapi import FastAPI, Request
from llms_from_scratch import ch05, ch07
from test_serve import running_server
from uvicorn_thread import serving

import gptrain
from gptrain import GPTConfig, GPTModel, load_checkpoint, save_checkpoint
from gptrain.cli import main
from gptrain.data.instructions import (
    IGNORE_INDEX,
    InstructionExamples,
    default_template,
    read_instruction_file,
    split_records,
)
from gptrain.data.templates import ALPACA, CHAT
from gptrain.training.config import recipe_text, resolve_train_config
from gptrain.training.finetune_config import InstructConfig
from gptrain.training.step import epoch_order

ENTRIES = [
    {"instruction": "Rewrite the sentence using a simile.", "input": "The car is very fast.",
     "output": "The car is as fast as lightning."},
    {"instruction": "Name the capital of France.", "input": "", "output": "Paris."},
    {"instruction": "Convert 45 kilometers to meters.", "input": "", "output": "45 kilometers is 45000 meters."},
    {"instruction": "Give a synonym of happy.", "input": "", "output": "Joyful."},
]


def test_the_books_dataset_and_collate_give_the_books_outputs(tokenizer):
    ours, book = gptrain.InstructionDataset(ENTRIES, tokenizer), ch07.InstructionDataset(ENTRIES, tokenizer)
    assert len(ours) == len(book) and [ours[i] for i in range(4)] == [book[i] for i in range(4)]
    batch = [ours[i] for i in range(4)]
    for kwargs in ({}, {"allowed_max_length": 40}, {"pad_token_id": 0, "ignore_index": -1}):
        for got, expected in zip(gptrain.custom_collate_fn(batch, **kwargs), ch07.custom_collate_fn(batch, **kwargs)):
            assert torch.equal(got, expected)
    assert gptrain.format_input(ENTRIES[0]) == ch07.format_input(ENTRIES[0])


def test_batches_are_the_books_collate_unmasked_and_learn_only_the_replies_masked(tokenizer):
    book = ch07.InstructionDataset(ENTRIES, tokenizer)
    book_inputs, book_targets = ch07.custom_collate_fn([book[i] for i in range(4)])
    inputs, targets = InstructionExamples(ENTRIES, tokenizer, ALPACA, 1024, mask_prompt=False).batch(range(4))
    assert torch.equal(inputs, book_inputs) and torch.equal(targets, book_targets)

    masked_inputs, masked = InstructionExamples(ENTRIES, tokenizer, ALPACA, 1024).batch(range(4))
    assert torch.equal(masked_inputs, book_inputs)
    for row, entry in enumerate(ENTRIES):
        learned = masked[row][masked[row] != IGNORE_INDEX].tolist()
        assert learned == tokenizer.encode(entry["output"]) + [50256]  # the reply and its end-of-text, no prompt


def test_overlong_records_are_truncated_or_dropped_and_counted(tokenizer):
    kept = InstructionExamples(ENTRIES, tokenizer, ALPACA, 54, overlong="truncate")
    dropped = InstructionExamples(ENTRIES, tokenizer, ALPACA, 54, overlong="drop")
    assert kept.overlong_count == dropped.overlong_count == dropped.dropped == 1  # the simile record: 60 tokens
    assert kept.dropped == 0 and len(kept) == 4 and len(dropped) == 3 and kept.batch([0])[0].shape[1] == 54
    no_reply_left = InstructionExamples(ENTRIES, tokenizer, ALPACA, 48)  # its reply starts at token 51
    assert no_reply_left.dropped == 1 and len(no_reply_left) == 3


def test_without_prompt_masking_the_loops_first_loss_is_the_books_calc_loss_batch(tmp_path, tokenizer):
    records = ENTRIES * 5
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    torch.manual_seed(1)
    base = GPTModel(GPTConfig(vocab_size=50257, context_length=64, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0))
    save_checkpoint(base, tmp_path / "base")
    code = main(["finetune", "instruct", "--model", str(tmp_path / "base"), "--data", str(data), "--out",
                 str(tmp_path / "run"), "--no-mask-prompt", "--batching", "plain", "--batch-size", "4", "--max-steps",
                 "1", "--eval-freq", "0", "--precision", "fp32", "--device", "cpu", "--seed", "7"])
    assert code == 0
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    loss = next(record["loss"] for record in logged if record["event"] == "train")

    train, _, _ = split_records(records, 7, 0.05, 0.10)  # the book's 85/5/10, seeded
    first = epoch_order(len(train), 7, 0)[:4].tolist()
    inputs, targets = ch07.custom_collate_fn([ch07.InstructionDataset(train, tokenizer)[i] for i in first])
    assert loss == pytest.approx(ch05.calc_loss_batch(inputs, targets, base.eval(), "cpu").item(), rel=1e-5)
    assert (tmp_path / "run" / "test.jsonl").read_text().count("\n") == 2  # 10% of 20 records held out


def _generate(prompt, run, capsys, *flags):
    assert main(["generate", "--model", str(run), "--prompt", prompt, "--device", "cpu", "--no-stream",
                 "--max-new-tokens", "8", *flags]) == 0
    return capsys.readouterr().out


def test_a_fine_tuned_model_answers_its_instructions_with_its_replies(instruct_run, capsys):
    for instruction, reply in INSTRUCTIONS:
        assert _generate(instruction, instruct_run, capsys) == reply + "\n"  # the response alone, stopped at the end
    raw = _generate("Name the capital", instruct_run, capsys, "--raw", "--max-new-tokens", "2")
    assert raw.startswith("Name the capital") and raw != "Paris.\n"  # no template: the text continued as it is
    for checkpoint in ("final", "best"):
        config = json.loads((instruct_run / checkpoint / "config.json").read_text())
        assert config["template"] == "chat" and config["train"]["finetune"]["mask_prompt"] is True
    assert "[finetune]" in (instruct_run / "train.toml").read_text()


def test_eval_scores_instruction_records_by_reply_loss_and_exact_match(instruct_run, capsys):
    data = instruct_run.parent / "data.json"
    assert main(["eval", "--model", str(instruct_run), "--data", str(data), "--device", "cpu", "--json",
                 "--answers", str(instruct_run.parent / "answers.jsonl")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["records"] == 8 and result["exact_match"] == 1.0 and result["loss"] < 0.5
    answers = [json.loads(line) for line in (instruct_run.parent / "answers.jsonl").read_text().splitlines()]
    assert [a["model_response"] for a in answers] == [reply for _, reply in INSTRUCTIONS]


@contextmanager
def judge_server(replies):
    """An OpenAI-compatible chat endpoint on loopback answering with ``replies`` in turn, recording prompts."""
    app, prompts = FastAPI(), []

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        prompts.append(body["messages"][0]["content"])
        return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": replies[(len(prompts) - 1) % len(replies)]}}]}

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="error"))
    with serving(server, sock, "the judge"):
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1", prompts


def test_a_judge_endpoint_scores_the_answers_with_the_books_prompt(instruct_run, capsys):
    data = instruct_run.parent / "data.json"
    with judge_server(["80", "95", "not a number"]) as (url, prompts):
        assert main(["eval", "--model", str(instruct_run), "--data", str(data), "--device", "cpu", "--limit", "3",
                     "--judge", url]) == 0
    out = capsys.readouterr().out
    assert "mean score 87.50 (0-100) over 2 answer(s); 1 reply(ies) were not a number" in out
    entry = json.loads(data.read_text())[0]
    assert prompts[0] == (f"Given the input `{ch07.format_input(entry)}` and correct output `{entry['output']}`, "
                          f"score the model response `{entry['output']}` on a scale from 0 to 100, where 100 is "
                          "the best score. Respond with the integer number only.")


@pytest.mark.parametrize("content, message", [
    ('[{"instruction": "Say hi", "input": ""}]', "record 1: a record's response is empty"),
    ('[{"instruction": "Say hi", "output": "Hi."}, {"output": "Bye."}]', "data.json, record 2: a record has neither"),
    ('{"messages": [{"role": "user", "content": "Hi"}]}', "must alternate user, assistant"),
    ('[{"instruction": "Say hi", "output": "  "}]', "response is empty"),
    ("instruction: Say hi", "is not JSON (line 1"),
])
def test_bad_instruction_data_is_one_line_and_writes_nothing(tmp_path, capsys, content, message):
    data = tmp_path / "data.json"
    data.write_text(content)
    save_checkpoint(GPTModel(GPTConfig(vocab_size=50257, context_length=64, emb_dim=32, n_heads=4, n_layers=2)),
                    tmp_path / "base")
    # Weights that cannot load: the data's error, not the model's, shows the data is checked before the load.
    (tmp_path / "base" / "model.safetensors").write_bytes(b"not weights")
    code = main(["finetune", "instruct", "--model", str(tmp_path / "base"), "--data", str(data), "--out",
                 str(tmp_path / "run"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_base_model_where_a_template_is_required_is_one_line(instruct_run, tmp_path, capsys):
    base = instruct_run.parent / "base"
    assert load_checkpoint(base) is not None
    answers = tmp_path / "answers.jsonl"
    code = main(["eval", "--model", str(base), "--data", str(instruct_run.parent / "data.json"), "--device", "cpu",
                 "--answers", str(answers)])
    err = capsys.readouterr().err
    assert code == 2 and "is a base model" in err and err.count("\n") == 1
    assert not answers.exists()


def test_a_runs_train_toml_keeps_its_finetune_section(tmp_path):
    cfg = resolve_train_config({"init": "base", "data": "d.json", "finetune": {"template": "chat", "mask_prompt": False,
                                                                              "val_ratio": 0.2}})
    (tmp_path / "train.toml").write_text(recipe_text(cfg))
    again = resolve_train_config({"finetune": {"batching": "plain"}}, config_file=tmp_path / "train.toml")
    assert again.finetune == InstructConfig(template="chat", mask_prompt=False, val_ratio=0.2, batching="plain")
    assert again.to_dict() == {**cfg.to_dict(), "finetune": {**cfg.to_dict()["finetune"], "batching": "plain"}}


def test_chat_messages_in_json_lines_default_to_the_chat_template_and_learn_every_reply(tmp_path, tokenizer):
    conversation = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                                 {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye."}]}
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(conversation) + "\n\n")
    records = read_instruction_file(path)
    assert records == [conversation] and default_template(records) == CHAT
    _, targets = InstructionExamples(records, tokenizer, CHAT, 64).batch([0])
    learned = targets[0][targets[0] != IGNORE_INDEX].tolist()
    assert learned == tokenizer.encode("Hello.") + [50256] + tokenizer.encode("Goodbye.") + [50256]


def test_the_fine_tuned_model_answers_through_chat_and_the_chat_endpoint(instruct_run, capsys, monkeypatch):
    questions = [instruction for instruction, _ in INSTRUCTIONS[:3]]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n/reset\n".join(questions) + "\n"))
    assert main(["chat", "--model", str(instruct_run), "--device", "cpu", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.splitlines() == [reply for _, reply in INSTRUCTIONS[:3]]

    with running_server(instruct_run / "final", max_tokens=8, template=CHAT) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        for instruction, reply in INSTRUCTIONS:
            answer = client.chat.completions.create(model="tiny", temperature=0,
                                                    messages=[{"role": "user", "content": instruction}])
            assert answer.choices[0].message.content == reply and answer.choices[0].finish_reason == "stop"
