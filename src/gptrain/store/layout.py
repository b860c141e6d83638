"""What a checkpoint folder holds, by name, and how a folder is recognised as one."""

from __future__ import annotations

import json
from pathlib import Path

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "training_state.pt"
OPTIMIZER_DIR = "optimizer"
MANIFEST_FILE = "manifest.json"
FORMAT = "gptrain-checkpoint"
FORMAT_VERSION = 1
FINAL_DIR = "final"  # a run directory's last checkpoint


def is_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` is a gptrain checkpoint: it holds a manifest, or (written before manifests
    existed) a config.json in gptrain's format. A Hugging Face folder has neither."""
    if (folder / MANIFEST_FILE).is_file():
        return True
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(config, dict) and config.get("format") == FORMAT


def checkpoint_at(path: Path) -> Path | None:
    """The gptrain checkpoint that ``path`` names (the folder itself, the folder of its weights file,
    or a run directory's final checkpoint), or None when it names none."""
    folder = path.parent if path.is_file() and path.name == WEIGHTS_FILE else path
    for candidate in (folder, folder / FINAL_DIR):
        if is_checkpoint(candidate):
            return candidate
    return None
