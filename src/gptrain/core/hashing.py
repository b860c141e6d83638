"""The sha256 of a file, read in chunks: checkpoints' manifests, downloads and datasets use this one."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK_BYTES = 1 << 22


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
