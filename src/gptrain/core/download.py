"""Fetching files over HTTP(S): resumable, size- and hash-checked, never left half-written.

Nothing in gptrain downloads unless the user asked for something that is not on disk; setting
``GPTRAIN_OFFLINE=1`` forbids downloads altogether.
"""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from gptrain.core.errors import GptrainError
from gptrain.core.hashing import sha256_file

CHUNK_BYTES = 1 << 20


def cache_dir() -> Path:
    """Where downloads are kept: ``$GPTRAIN_CACHE_DIR``, else ``$XDG_CACHE_HOME/gptrain``, else ``~/.cache/gptrain``."""
    if os.environ.get("GPTRAIN_CACHE_DIR"):
        return Path(os.environ["GPTRAIN_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "gptrain"


def offline() -> bool:
    return os.environ.get("GPTRAIN_OFFLINE", "").lower() in {"1", "true", "yes"}


def download_file(url: str, dest: str | Path, *, sha256: str | None = None, size: int | None = None,
                  timeout: float = 60.0, where_to_put_it: str | None = None) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    Bytes go to ``dest.part`` first; an interrupted download resumes from there with an HTTP
    Range request. The file is renamed into place only after its size (``size`` or the
    server's Content-Length) and ``sha256`` (when given) check out; a corrupt file is deleted.
    """
    dest = Path(dest)
    hint = where_to_put_it or f"put a copy at {dest}"
    if offline():
        raise GptrainError(f"{dest.name} is not on disk and GPTRAIN_OFFLINE is set, so it is not downloaded: {hint}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0

    request = urllib.request.Request(url, headers={"User-Agent": "gptrain"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the partial file is already complete (or too long)
            return _finish(part, dest, url, sha256, size)
        raise GptrainError(f"cannot download {url}: HTTP {exc.code} {exc.reason}; {hint}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise GptrainError(f"cannot download {url} ({reason}); are you offline? {hint}") from None

    with response:
        resumed = have and response.status == 206
        if not resumed:
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        if size is None and total is not None:
            size = total
        try:
            with open(part, "ab" if resumed else "wb") as f, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                desc=dest.name, disable=None, leave=False,
            ) as progress:
                while chunk := response.read(CHUNK_BYTES):
                    f.write(chunk)
                    progress.update(len(chunk))
                f.flush()
                os.fsync(f.fileno())
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as exc:
            raise GptrainError(
                f"download of {url} was interrupted ({exc}); run the same command again to resume it"
            ) from None
    return _finish(part, dest, url, sha256, size)


def _finish(part: Path, dest: Path, url: str, sha256: str | None, size: int | None) -> Path:
    got = part.stat().st_size
    if size is not None and got < size:
        raise GptrainError(
            f"download of {url} stopped at {got:,} of {size:,} bytes; run the same command again to resume it"
        )
    if size is not None and got > size:
        part.unlink()
        raise GptrainError(f"download of {url} is {got:,} bytes, expected {size:,}; the file was removed, try again")
    if sha256 is not None:
        digest = sha256_file(part)
        if digest != sha256:
            part.unlink()
            raise GptrainError(
                f"download of {url} is corrupt (sha256 {digest}, expected {sha256}); the file was removed, try again"
            )
    os.replace(part, dest)
    return dest
