import json
from pathlib import Path

import pytest
import torch
from hypothesis import settings

from gptrain import GPTConfig, GPTModel, get_tokenizer, save_checkpoint
from gptrain.cli import main

# The corpora the tests read ship with them (tests/data/README.md), so a bare clone runs the whole suite.
TEST_DATA = Path(__file__).resolve().parent / "data"
VERDICT_SHA256 = "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f"

# A test's outcome never rests on which examples hypothesis happened to draw: the same fixed stream
# every run, and no example database carrying failures from one run into the next. To search new
# examples on purpose: pytest --hypothesis-profile=explore.
settings.register_profile("deterministic", derandomize=True, database=None, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile("deterministic")


@pytest.fixture(scope="session")
def verdict_path() -> Path:
    return TEST_DATA / "the-verdict.txt"


@pytest.fixture(scope="session")
def verdict_text(verdict_path) -> str:
    return verdict_path.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def story_page(verdict_text, tmp_path_factory) -> Path:
    """The story's first 8,000 characters: enough for a tiny model's run of a few dozen steps."""
    path = tmp_path_factory.mktemp("page") / "page.txt"
    path.write_text(verdict_text[:8000], encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tokenizer():
    return get_tokenizer()


@pytest.fixture
def tiny_cfg() -> GPTConfig:
    """A model small enough to train in a second on a CPU, with the real GPT-2 vocabulary."""
    return GPTConfig(vocab_size=50257, context_length=32, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's cache, and never download unless a test asks for it."""
    monkeypatch.setenv("GPTRAIN_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("GPTRAIN_OFFLINE", "1")
    monkeypatch.setenv("GPTRAIN_DATA_DIR", str(TEST_DATA))  # named datasets ("the-verdict") come from here


@pytest.fixture(autouse=True)
def deterministic_threads():
    torch.manual_seed(0)


# Eight instructions a tiny model learns by heart in a dozen steps: the fine-tuned run answers them word
# for word, through gptrain generate, eval, chat and the server alike.
INSTRUCTIONS = [("Name the capital of France.", "Paris."), ("What color is the sky?", "Blue."),
                ("Give the opposite of hot.", "Cold."), ("Spell the number two.", "Two."),
                ("What is 2 plus 2?", "Four."), ("Name a large animal.", "An elephant."),
                ("Translate 'hola' to English.", "Hello."), ("What do bees make?", "Honey.")]


@pytest.fixture(scope="session")
def instruct_run(tmp_path_factory) -> Path:
    """A tiny model fine-tuned with gptrain finetune instruct (chat template) on INSTRUCTIONS until it
    answers each with its reply; the records are in RUN/../data.json."""
    folder = tmp_path_factory.mktemp("instruct")
    data = folder / "data.json"
    data.write_text(json.dumps([{"instruction": i, "input": "", "output": o} for i, o in INSTRUCTIONS]))
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50257, context_length=32, emb_dim=64, n_heads=4, n_layers=2, drop_rate=0.0)
    save_checkpoint(GPTModel(cfg), folder / "base")
    run = folder / "run"
    # Every record trains and validates (--val-data the same file): the test asks for what was taught.
    code = main(["finetune", "instruct", "--model", str(folder / "base"), "--data", str(data), "--val-data", str(data),
                 "--test-ratio", "0", "--template", "chat", "--out", str(run), "--device", "cpu", "--precision",
                 "fp32", "--epochs", "12", "--lr", "1e-2", "--batch-size", "8", "--eval-freq", "6"])
    assert code == 0
    return run
