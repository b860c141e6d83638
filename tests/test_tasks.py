"""Benchmark tasks: gptrain's scores equal lm-evaluation-harness's on the same model and examples."""

import json
import math
import os
from pathlib import Path

import pytest
import torch

from gptrain import GPTConfig, GPTModel, export_hf, save_checkpoint
from gptrain.cli import main
from gptrain.inference.generate import generate_text_simple
from gptrain.reporting.runs import read_run
from gptrain.evaluation.tasks import encode_pair, evaluate_task, read_task_file, score_examples
from gptrain.data.tokenizer import get_tokenizer, text_to_token_ids

# The public formats: HellaSwag's validation file (rowanz/hellaswag; the label an int there, a string on
# the Hugging Face hub), OpenAI's LAMBADA test file, and gptrain's generic multiple choice. Contexts long
# enough that some inputs exceed the model's 64-token window and lose tokens on the left.
HELLASWAG = [
    {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
     "ctx": "A man is sitting on a roof. he", "split": "val", "split_type": "indomain", "label": 3,
     "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                 "is holding a rubik's cube.", "starts pulling up roofing on a roof."], "source_id": "activitynet~v_-JhWjGDPHMY"},
    {"ind": 92, "activity_label": "Clean and jerk", "ctx_a": "A lady walks to a barbell. She bends down and grabs "
     "the pole.", "ctx_b": "the lady", "ctx": "", "split": "val", "split_type": "zeroshot", "label": "3",
     "endings": ["swings and lands in her arms.", "pulls the barbell forward.", "pulls a rope attached to the barbell.",
                 "stands and lifts the weight over her head."], "source_id": "activitynet~v_-lJS58hyo1c"},
    {"ind": 106, "activity_label": "Home and Garden", "ctx_a": "[header] How to clean a grill [title] Heat the "
     "grill to a high temperature for fifteen minutes. [step] Close the lid and let every bit of old food burn off "
     "the grates, which makes the later scrubbing far easier and quicker than it would otherwise be.", "ctx_b": "",
     "split": "val", "split_type": "indomain", "label": 1,
     "endings": ["[substeps] Use a wire brush  to scrub the grates.", "Scrub the grates with a wire brush while they "
                 "are still warm [title] Wipe them down.", "Wait.", "Call a friend over to help you."],
     "source_id": "wikihow~17"},
    {"ind": 7, "activity_label": "Making a sandwich", "ctx_a": "A woman spreads butter on bread.", "ctx_b": "she",
     "split": "val", "split_type": "indomain", "label": 3,
     "endings": ["adds a slice of ham and cheese.", "throws the bread away.", "café au lait is poured.",
                 "dances."], "source_id": "activitynet~x"},
]
LAMBADA = [
    "In my palm is a clear stone, and inside it is a small ivory statuette. A guardian angel. \"Figured if you're "
    "going to be out at night getting hit by cars, you might as well have some backup.\" I look at him, feeling "
    "stunned. Like this is some sort of sign. But as I stare at Harlin, his mouth curved in a confident grin, I don't "
    "care about signs",
    "Give me a minute to change and I'll meet you at the docks.\" She'd forced those words through her teeth. "
    "\"No need to change. We won't be that long.\" Shane gripped her arm and started leading her to the dock",
    "The cat sat on the mat and looked at the dog. The dog looked back at the cat",
    "She opened the door and saw her friend standing in the rain, soaked to the bone",
    "He counted the coins twice, and both times he came up one short of a dollar",
]
MC = [
    {"context": "The capital of France is", "choices": ["Paris", "Berlin", "a city in Spain"], "answer": 0},
    {"context": "Water boils at a temperature of ", "choices": ["100 degrees", "ten degrees"], "answer": 1},
    {"context": "", "choices": ["A sentence without context.", "Another one"], "answer": 1},
    {"context": "Le café est", "choices": ["très chaud aujourd'hui", "froid", "é"], "answer": 2},
    {"context": "One, two, three,", "choices": ["four", "five", "six", "seven", "eight"], "answer": 0},
]

MC_YAML = """task: mc_local
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
validation_split: validation
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
  - metric: acc_bytes
"""


def text_ending_in_the_greedy_word(model) -> str:
    """A random model gets LAMBADA wrong; a text whose last word is the model's own greedy
    continuation (one whole-word token) is one it gets right, so acc is not stuck at zero."""
    tokenizer = get_tokenizer()
    prompt = "The cat sat on the"
    for _ in range(20):
        token = generate_text_simple(model, text_to_token_ids(prompt, tokenizer), 1, 64)[0, -1].item()
        word = tokenizer.decode([token])
        if word.startswith(" ") and word[1:].isalpha():
            return prompt + word
        prompt += " mat and the"
    raise AssertionError("no whole-word greedy continuation found")


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny random model, the same weights exported for transformers, and the three task files."""
    folder = tmp_path_factory.mktemp("tasks")
    torch.manual_seed(7)
    model = GPTModel(GPTConfig(context_length=64, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)).eval()
    export_hf(model, folder / "hf")
    save_checkpoint(model, folder / "ckpt")
    files = {"hellaswag": write_jsonl(folder / "hellaswag_val.jsonl", HELLASWAG),
             "lambada": write_jsonl(folder / "lambada_test.jsonl", [{"text": text} for text in
                                                                   [*LAMBADA, text_ending_in_the_greedy_word(model)]]),
             "mc": write_jsonl(folder / "mc.jsonl", MC)}
    return model, folder, files


@pytest.fixture(scope="module")
def harness(setup, tmp_path_factory):
    """lm-evaluation-harness run offline on the exported model: its own hellaswag and lambada_openai task
    definitions with only the dataset swapped for the local files, and an mc task defined here."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    _, folder, files = setup
    tasks = tmp_path_factory.mktemp("lm_eval_tasks")
    shipped = Path(lm_eval.__file__).parent / "tasks"
    for name, original, split in (("hellaswag", "hellaswag/hellaswag.yaml", "validation"),
                                  ("lambada", "lambada/lambada_openai.yaml", "test")):
        (tasks / f"{name}.yaml").write_text(
            f"include: {shipped / original}\ntask: {name}_local\ndataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    {split}: {files[name]}\ntraining_split: null\n", encoding="utf-8")
    (tasks / "mc.yaml").write_text(MC_YAML.format(data=files["mc"]), encoding="utf-8")
    cache = tmp_path_factory.mktemp("hf_home")
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(cache),
           "HF_DATASETS_CACHE": str(cache / "datasets"), "DISABLE_MULTIPROC": "1"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        results = lm_eval.simple_evaluate(
            model="hf", model_args=f"pretrained={folder / 'hf'},dtype=float32", device="cpu", batch_size=8,
            tasks=["hellaswag_local", "lambada_local", "mc_local"], task_manager=TaskManager(include_path=str(tasks)),
            bootstrap_iters=10, log_samples=True)  # means get closed-form stderrs; perplexity's bootstrap is not compared
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    return results


def harness_loglikelihoods(harness, task):
    samples = sorted(harness["samples"][f"{task}_local"], key=lambda s: s["doc_id"])
    return [[float(resp[0]) for resp in sample["filtered_resps"]] for sample in samples]


@pytest.mark.parametrize("task", ["hellaswag", "mc"])
def test_multiple_choice_scores_equal_lm_evaluation_harness(setup, harness, task):
    model, _, files = setup
    ours = evaluate_task(model, task, files[task], progress=False)
    theirs = harness["results"][f"{task}_local"]
    metrics = ("acc", "acc_norm", "acc_bytes") if task == "mc" else ("acc", "acc_norm")
    for metric in metrics:
        assert ours.metrics[metric] == theirs[f"{metric},none"], metric
        assert ours.metrics[f"{metric}_stderr"] == pytest.approx(theirs[f"{metric}_stderr,none"], abs=1e-12), metric
    expected = harness_loglikelihoods(harness, task)
    got = [example["loglikelihoods"] for example in ours.per_example]
    assert len(got) == len(expected) == len(files[task].read_text().splitlines())
    for mine, reference in zip(got, expected):
        assert mine == pytest.approx(reference, rel=1e-5, abs=1e-4)
    samples = sorted(harness["samples"][f"{task}_local"], key=lambda s: s["doc_id"])
    for metric, pred in (("acc", "pred"), ("acc_norm", "pred_norm")):
        mine = [float(example[pred] == example["gold"]) for example in ours.per_example]
        assert mine == [sample[metric] for sample in samples], metric
    # Not constants: some examples right, some wrong, and acc_norm choosing otherwise than acc somewhere.
    assert 0 < ours.metrics["acc"] < 1 and 0 < ours.metrics["acc_norm"] < 1
    assert any(example["pred"] != example["pred_norm"] for example in ours.per_example)


def test_some_inputs_were_cut_to_the_window(setup):
    model, _, _ = setup
    example = read_task_file("hellaswag", setup[2]["hellaswag"])[2]
    context, continuation = encode_pair(example.context, example.continuations[1])
    assert len(context) + len(continuation) > model.cfg.context_length + 1


def test_lambada_accuracy_and_perplexity_equal_lm_evaluation_harness(setup, harness):
    model, _, files = setup
    ours = evaluate_task(model, "lambada", files["lambada"], progress=False)
    theirs = harness["results"]["lambada_local"]
    assert 0 < ours.metrics["acc"] < 1 and ours.metrics["acc"] == theirs["acc,none"]
    samples = sorted(harness["samples"]["lambada_local"], key=lambda s: s["doc_id"])
    assert [float(example["greedy"]) for example in ours.per_example] == [sample["acc"] for sample in samples]
    assert ours.metrics["acc_stderr"] == pytest.approx(theirs["acc_stderr,none"], abs=1e-12)
    assert ours.metrics["perplexity"] == pytest.approx(theirs["perplexity,none"], rel=1e-4)
    lls = [example["loglikelihood"] for example in ours.per_example]
    assert lls == pytest.approx([ll[0] for ll in harness_loglikelihoods(harness, "lambada")], rel=1e-5, abs=1e-4)
    assert math.isfinite(ours.metrics["perplexity_stderr"]) and ours.metrics["perplexity_stderr"] > 0


def test_batch_size_and_limit(setup):
    model, _, files = setup
    one = score_examples(model, read_task_file("hellaswag", files["hellaswag"]), batch_size=1, progress=False)
    many = score_examples(model, read_task_file("hellaswag", files["hellaswag"]), batch_size=16, progress=False)
    for a, b in zip(one, many):
        assert [ll for ll, _ in a] == pytest.approx([ll for ll, _ in b], abs=1e-4)
    assert evaluate_task(model, "mc", files["mc"], limit=2, progress=False).examples == 2


def test_hellaswag_with_ctx_only():
    """Files that carry only ``ctx`` (no ctx_a/ctx_b) use it as the context."""
    doc = {"activity_label": "Cooking", "ctx": "A man cuts onions. [step] He", "endings": ["cries.", "sings."], "label": 0}
    from gptrain.evaluation.task_files import hellaswag_example

    example = hellaswag_example(doc, "x")
    assert example.context == "Cooking: A man cuts onions. He"
    assert example.continuations == (" cries.", " sings.")


def test_eval_task_cli(setup, capsys):
    model, folder, files = setup
    capsys.readouterr()
    args = ["eval", "--checkpoint", str(folder / "ckpt"), "--task", "hellaswag", "--data", str(files["hellaswag"]),
            "--device", "cpu", "--precision", "fp32"]
    assert main(args + ["--json", "--limit", "3"]) == 0
    figures = json.loads(capsys.readouterr().out)
    expected = evaluate_task(model, "hellaswag", files["hellaswag"], limit=3, progress=False)
    assert figures["examples"] == 3
    assert figures["acc"] == expected.metrics["acc"] and figures["acc_norm"] == expected.metrics["acc_norm"]
    assert main(args) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("hellaswag: acc ") and "acc_norm" in line and "4 examples" in line
    assert main(["eval", "--pretrained", str(folder / "hf"), "--task", "lambada", "--data", str(files["lambada"]),
                 "--device", "cpu", "--json", "--precision", "fp32"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["perplexity"] == pytest.approx(
        evaluate_task(model, "lambada", files["lambada"], progress=False).metrics["perplexity"], rel=1e-5)


def one_line_error(capsys, args) -> str:
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("task,content,message", [
    ("squad", "{}\n", "unknown task 'squad': use one of hellaswag, lambada, mc"),
    ("hellaswag", json.dumps(HELLASWAG[0]) + "\n\n" + json.dumps({"ctx_a": "a", "ctx_b": "b", "label": 0}) + "\n",
     "line 3: no 'endings' field; a hellaswag line needs ctx (or ctx_a and ctx_b), endings and label"),
    ("hellaswag", json.dumps(HELLASWAG[0] | {"label": 4}) + "\n", "line 1: label 4 is out of range for 4 choices: use 0 to 3"),
    ("mc", json.dumps(MC[0] | {"answer": -1}) + "\n", "line 1: answer -1 is out of range for 3 choices: use 0 to 2"),
    ("mc", json.dumps({"context": "x", "choices": "ab", "answer": 0}) + "\n", "line 1: 'choices' must be a list"),
    ("lambada", '{"text": "one two"}\n{"text": "x"\n', "line 2 is not JSON"),
    ("lambada", '{"text": "oneword"}\n', "line 1: the text has no space"),
    ("lambada", '[1, 2]\n', "line 1 is not a JSON object"),
    ("mc", "\n  \n", "holds no examples: give a jsonl file with one mc example per line"),
])
def test_bad_task_input_is_one_line_and_exit_2(setup, tmp_path, capsys, task, content, message):
    _, folder, _ = setup
    path = tmp_path / "task.jsonl"
    path.write_text(content, encoding="utf-8")
    line = one_line_error(capsys, ["eval", "--checkpoint", str(folder / "ckpt"), "--task", task, "--data", str(path)])
    assert message in line


@pytest.mark.parametrize("flags,message", [
    (["--task", "mc", "--data", "/no/such.jsonl"], "task file /no/such.jsonl does not exist"),
    (["--task", "mc", "--data", "MC", "--limit", "0"], "--limit must be at least 1, not 0"),
    (["--data", "MC", "--limit", "3"], "--limit counts the examples of a --task"),
    (["--task", "mc", "--data", "MC", "--stride", "8"], "--stride is for scoring a text and does not apply to --task"),
])
def test_bad_task_flags(setup, capsys, flags, message):
    _, folder, files = setup
    flags = [str(files["mc"]) if flag == "MC" else flag for flag in flags]
    assert message in one_line_error(capsys, ["eval", "--checkpoint", str(folder / "ckpt"), *flags])


@pytest.mark.parametrize("flags,message", [
    (["--eval-task", "hellaswag"], "--eval-task 'hellaswag' is not NAME:FILE"),
    (["--eval-task", "arc:x.jsonl"], "unknown task 'arc'"),
    (["--eval-task", "mc:/no/such.jsonl"], "task file /no/such.jsonl does not exist"),
    (["--eval-task", "mc:MC", "--eval-task-every", "0"], "--eval-task-every must be a positive integer"),
])
def test_bad_eval_task_training_flags(setup, tmp_path, capsys, flags, message):
    _, _, files = setup
    flags = [flag.replace("MC", str(files["mc"])) for flag in flags]
    out = tmp_path / "run"
    assert message in one_line_error(capsys, ["train", "--preset", "tiny", "--out", str(out), *flags])
    assert not out.exists()  # refused before the run directory is made


def test_training_logs_task_scores_and_the_report_plots_them(setup, story_page, tmp_path):
    _, _, files = setup
    out = tmp_path / "run"
    assert main(["train", "--data", str(story_page), "--out", str(out), "--preset", "tiny", "--context-length", "16",
                 "--batch-size", "8", "--max-steps", "5", "--eval-freq", "2", "--eval-iter", "1",
                 "--sample-tokens", "0", "--device", "cpu", "--eval-task", f"mc:{files['mc']}",
                 "--eval-task", f"lambada:{files['lambada']}", "--eval-task-every", "2", "--eval-task-limit", "3"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    tasks = [r for r in records if r["event"] == "task"]
    assert [(r["step"], r["task"]) for r in tasks] == [(s, t) for s in (0, 2, 4) for t in ("mc", "lambada")]
    assert all(r["examples"] == 3 and 0 <= r["acc"] <= 1 and r["tokens_seen"] > 0 for r in tasks)
    assert all(r["perplexity"] > 1 for r in tasks if r["task"] == "lambada")
    config = json.loads((out / "config.json").read_text())["train"]
    assert config["eval_task_every"] == 2 and config["eval_task_limit"] == 3 and len(config["eval_task"]) == 2
    page = (out / "report.html").read_text()
    assert "Benchmarks" in page and 'alt="benchmark accuracy against tokens seen"' in page
    assert 'alt="benchmark perplexity against tokens seen"' in page
    assert "task" not in {note.get("event") for note in read_run(out).notes}
