"""Integrity records: the size and sha256 of every file a checkpoint holds, in ``manifest.json``.

The manifest is written last, over whatever files the checkpoint folder holds (weights, config,
training state, adapters, sharded optimizer states, in subfolders too), so a file added by a new
feature is covered without further work. Loading checks the file it reads against it; ``gptrain
info --verify`` checks every file of a checkpoint or of every checkpoint in a run.
"""

from __future__ import annotations

import contextlib
import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from gptrain.core.errors import GptrainError
from gptrain.core.files import fsync_file, write_json_atomic
from gptrain.core.hashing import sha256_file
from gptrain.store.layout import MANIFEST_FILE, is_checkpoint

MANIFEST_FORMAT = "gptrain-manifest"
T = TypeVar("T")


def write_manifest(folder: Path, known: dict[str, dict] | None = None) -> dict:
    """Record every file under ``folder`` (but the manifest itself) in ``folder/manifest.json``;
    ``known`` holds the records of files already recorded: shared with another checkpoint (taken from
    its manifest), or hashed as they were written (:func:`file_record`)."""
    known = known or {}
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE
                   and p.relative_to(folder).as_posix() not in known)
    # hashlib releases the GIL: the files (weights, optimizer state, ...) are hashed on all cores at once.
    with ThreadPoolExecutor(max(1, min(len(paths), os.cpu_count() or 1))) as pool:
        records = list(pool.map(file_record, paths))
    files = {path.relative_to(folder).as_posix(): record for path, record in zip(paths, records)}
    files = dict(sorted((files | known).items()))
    manifest = {"format": MANIFEST_FORMAT, "files": files}
    write_json_atomic(folder / MANIFEST_FILE, manifest)
    return manifest


def file_record(path: Path) -> dict:
    """The manifest's record of a finished file (size and sha256), with the file flushed to disk: its
    fsync waits for the disk while other files are still written or hashed, instead of after all of
    them (the staged folder's own fsync then finds it clean)."""
    digest = sha256_file(path)
    fsync_file(path)
    return {"size": path.stat().st_size, "sha256": digest}


def read_manifest(folder: Path) -> dict | None:
    """The manifest's file records, or None for a checkpoint written before manifests existed."""
    path = folder / MANIFEST_FILE
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise GptrainError(f"{path} is damaged: the checkpoint cannot be verified, use another one") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT \
            or not isinstance(manifest.get("files"), dict):
        raise GptrainError(f"{path} is not a gptrain manifest: the checkpoint cannot be verified, use another one")
    return manifest["files"]


def size_problem(path: Path, record: dict) -> str | None:
    if not path.is_file():
        return f"{path} is missing"
    size = path.stat().st_size
    if size != record.get("size"):
        kind = "truncated" if size < record.get("size", 0) else "longer than written"
        return f"{path} is {kind} ({size:,} bytes, {record.get('size', 0):,} when saved)"
    return None


def hash_problem(path: Path, record: dict, digest: str) -> str | None:
    if digest != record.get("sha256"):
        return f"{path} was altered (its sha256 differs from the one recorded when it was saved)"
    return None


def file_problem(folder: Path, name: str, record: dict) -> str | None:
    """What is wrong with one recorded file, or None. The size is checked before the slower hash."""
    path = folder / name
    return size_problem(path, record) or hash_problem(path, record, sha256_file(path))


def _damaged(problem: str) -> GptrainError:
    return GptrainError(f"{problem}: the checkpoint is damaged, use another one (gptrain info --verify checks all)")


# The checks of the files read inside a checked_after() block, which its end waits for.
_checks_after: ContextVar[list[Callable[[], str | None]] | None] = ContextVar("checks_after", default=None)


def _hash_in_background(path: Path) -> Future:
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(sha256_file, path)
    finally:
        pool.shutdown(wait=False)  # the thread ends with its hash


def read_verified(folder: Path, name: str, read: Callable[[], T]) -> T:
    """``read()`` the file ``folder/name`` while a second thread checks it against the manifest, so the
    check costs little more than the read on a machine with two cores. Files of checkpoints without a
    manifest are read unchecked. Inside a :func:`checked_after` block the check is still running when
    this returns; the block's end waits for it."""
    record = (read_manifest(folder) or {}).get(name)
    if record is None:
        return read()
    path = folder / name
    if problem := size_problem(path, record):
        raise _damaged(problem)
    digest = _hash_in_background(path)
    try:
        result = read()
    except GptrainError:
        # A reader's complaint about damaged bytes: the manifest names the damage better.
        if problem := hash_problem(path, record, digest.result()):
            raise _damaged(problem) from None
        raise

    def check() -> str | None:
        return hash_problem(path, record, digest.result())

    pending = _checks_after.get()
    if pending is not None:
        pending.append(check)
    elif problem := check():
        raise _damaged(problem)
    return result


@contextlib.contextmanager
def checked_after() -> Iterator[None]:
    """A block in which checkpoint files are read without waiting for their hashes, which its end waits
    for, raising the first problem. For a caller that prepares what it read before using it (a CPU
    layout of the weights, int8 weights, the tokenizer): that work and the hash share the cores instead
    of following each other (gptrain generate on 124M: 0.5 s of hashing). Nothing made in the block may
    be used before it ends. When the block raises and a file turns out damaged, the damage is reported."""
    checks: list[Callable[[], str | None]] = []
    token = _checks_after.set(checks)
    try:
        yield
    except Exception:
        if problem := _first_problem(checks):
            raise _damaged(problem) from None
        raise
    finally:
        _checks_after.reset(token)
    if problem := _first_problem(checks):
        raise _damaged(problem)


def _first_problem(checks: list[Callable[[], str | None]]) -> str | None:
    return next(filter(None, (check() for check in checks)), None)


def verify_checkpoint(folder: Path) -> list[str]:
    """Every problem of one checkpoint folder; empty when all its recorded files are intact."""
    files = read_manifest(folder)
    if files is None:
        return [f"{folder} has no {MANIFEST_FILE} (written by an older gptrain): it cannot be verified"]
    return [problem for name, record in files.items() if (problem := file_problem(folder, name, record))]


def checkpoint_folders(path: Path) -> list[Path]:
    """``path`` if it is a checkpoint, else every checkpoint inside it (a run directory)."""
    if is_checkpoint(path):
        return [path]
    return sorted(folder for folder in path.rglob("*") if folder.is_dir() and is_checkpoint(folder)
                  and not any(part.startswith(".") for part in folder.relative_to(path).parts))


def verify_path(path: str | Path) -> list[tuple[Path, list[str]]]:
    """(checkpoint, problems) for a checkpoint folder or for each checkpoint of a run directory."""
    path = Path(path)
    if not path.is_dir():
        raise GptrainError(f"{path} is not a checkpoint or run directory: give the folder to verify")
    folders = checkpoint_folders(path)
    if not folders:
        raise GptrainError(f"{path} holds no checkpoint: give a checkpoint or run directory")
    return [(folder, verify_checkpoint(folder)) for folder in folders]
