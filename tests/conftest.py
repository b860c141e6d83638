import os
from pathlib import Path

import pytest
import torch

from gptrain import GPTConfig, get_tokenizer

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
VERDICT_SHA256 = "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f"


def find_verdict() -> Path | None:
    for folder in [*os.environ.get("GPTRAIN_DATA_DIR", "").split(os.pathsep), str(SHARED_DATA)]:
        if folder and (Path(folder) / "the-verdict.txt").is_file():
            return Path(folder) / "the-verdict.txt"
    return None


@pytest.fixture(scope="session")
def verdict_path() -> Path:
    path = find_verdict()
    if path is None:
        pytest.skip("the-verdict.txt not found: set GPTRAIN_DATA_DIR or put ../shared/data beside the checkout")
    return path


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


@pytest.fixture(autouse=True)
def deterministic_threads():
    torch.manual_seed(0)
