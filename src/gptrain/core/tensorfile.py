"""Writing safetensors files with the permissions of every other file gptrain writes."""

from __future__ import annotations

import os
from pathlib import Path

import safetensors.torch
import torch


def current_umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it and put it back
    os.umask(mask)
    return mask


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> None:
    """``safetensors.torch.save_file``, readable as the umask allows: safetensors creates its file
    with mode 0600, so a teammate could not load a shared or exported checkpoint."""
    safetensors.torch.save_file(tensors, path, metadata=metadata)
    os.chmod(path, 0o666 & ~current_umask())
