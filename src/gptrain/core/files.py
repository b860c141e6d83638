"""Files that are whole or absent: files written under a temporary name and renamed, fsync, and
staged folders swapped in by one rename, so a crash never leaves a half-written checkpoint or export.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from gptrain.core.errors import GptrainError


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write one file to. When the block ends, the file is
    flushed to disk and renamed to ``path`` in one step; if the block fails, it is removed and
    ``path`` is left as it was. The temporary name ends in ``path``'s suffix, from which some
    writers (matplotlib) take the format."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half-written file behind
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux's renameat2(RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def replace_dir(tmp: Path, path: Path) -> None:
    """Move the finished directory ``tmp`` to ``path``, replacing what was there.

    The swap is atomic where the OS allows, so a reader (or a process killed mid-save) always
    finds a complete directory at ``path``; elsewhere two renames leave a brief gap.
    """
    if path.exists() and not path.is_dir():
        raise GptrainError(f"{path} exists and is not a directory: choose another output path")
    if path.exists():
        if _exchange(tmp, path):
            shutil.rmtree(tmp, ignore_errors=True)  # now holds the old contents
        else:
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    fsync_file(path.parent)


@contextlib.contextmanager
def staged_dir(path: Path) -> Iterator[Path]:
    """A fresh folder beside ``path`` to write a directory into. When the block ends, its files are
    flushed to disk and it replaces ``path`` in one step (see replace_dir); if the block fails, it
    is removed and ``path`` is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for file in tmp.iterdir():
            fsync_file(file)
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


