"""OpenAI's GPT-2 sizes on the Hugging Face hub: downloaded once into the cache, checked by size and sha256."""

from __future__ import annotations

import os
from pathlib import Path

from gptrain.core.download import cache_dir, download_file
from gptrain.core.errors import GptrainError
from gptrain.interop.hf_config import HF_CONFIG, HF_SAFETENSORS
from gptrain.model.config import PRESET_ALIASES

GPT2_REPOS = {"124M": "gpt2", "355M": "gpt2-medium", "774M": "gpt2-large", "1558M": "gpt2-xl"}
# sha256 and byte size of each model.safetensors, as the hub's Git LFS pointers give them
# (gpt2-xl's size was not at hand; the server's Content-Length is checked instead).
KNOWN_WEIGHTS = {
    "124M": ("248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707", 548_105_171),
    "355M": ("fc5a354a19255ad494f3d71549390baca1ccf61d1d822b9408971705c687c9cd", 1_519_984_962),
    "774M": ("5f47f3e12f91cd33b662ce7e433b6150ad5512b5884a2cee961b50e9c3bbebce", 3_247_159_078),
    "1558M": ("0f8b28eb05a8075f48b61b6f35332978c74fc7763fa9fb4051a1c30511736a6a", None),
}


def gpt2_size(name: str) -> str | None:
    """``124M`` for ``124M`` or ``gpt2`` (and so on for the other sizes); None for anything else."""
    size = PRESET_ALIASES.get(name, name)
    return size if size in GPT2_REPOS else None


def hf_endpoint() -> str:
    return os.environ.get("GPTRAIN_HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def download_gpt2(size: str = "124M") -> Path:
    """Fetch OpenAI's ``config.json`` and ``model.safetensors`` for ``size`` into the cache.

    Returns the folder (``cache_dir()/gpt2/<size>``). Files already there are used as they are:
    a file only gets its final name once its size and sha256 have been checked.
    """
    key = gpt2_size(size)
    if key is None:
        raise GptrainError(f"unknown GPT-2 size {size!r}: choose one of {', '.join([*GPT2_REPOS, *PRESET_ALIASES])}")
    folder = cache_dir() / "gpt2" / key
    repo = f"{hf_endpoint()}/openai-community/{GPT2_REPOS[key]}"
    hint = f"put {HF_CONFIG} and {HF_SAFETENSORS} from {repo} in {folder}"
    sha256, size_bytes = KNOWN_WEIGHTS[key]
    if not (folder / HF_CONFIG).is_file():
        download_file(f"{repo}/resolve/main/{HF_CONFIG}", folder / HF_CONFIG, where_to_put_it=hint)
    if not (folder / HF_SAFETENSORS).is_file():
        download_file(f"{repo}/resolve/main/{HF_SAFETENSORS}", folder / HF_SAFETENSORS, sha256=sha256,
                      size=size_bytes, where_to_put_it=hint)
    return folder


def source_path(source: str | Path) -> Path:
    """The file or folder ``source`` names; a GPT-2 size means its cached download."""
    path = Path(source).expanduser()
    if not path.exists():
        size = gpt2_size(str(source))
        if size is None:
            raise GptrainError(f"{source} does not exist and is not a GPT-2 size: give a file, a folder, or one of "
                               f"{', '.join([*GPT2_REPOS, *PRESET_ALIASES])}")
        path = download_gpt2(size)
    return path
