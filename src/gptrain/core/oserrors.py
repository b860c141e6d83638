"""Operating-system errors as one line that names the path and the fix.

Every command can meet a full disk, a read-only folder, a path through a file or a name that is
too long. ``cli.main`` turns any ``OSError`` that reaches it into :func:`describe_os_error`'s line
and exit code 2, so a new command gets the same treatment without doing anything.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from gptrain.core.errors import GptrainError

FIXES = {
    errno.EEXIST: "it already exists, where a folder or a new file was needed: choose another path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose a path whose parents are folders",
    errno.EISDIR: "it is a folder: give a file path",
    errno.ENOENT: "check the path (its folder must exist)",
    errno.EACCES: "choose a location you may write to, or change its permissions",
    errno.EPERM: "choose a location you may write to, or change its permissions",
    errno.EROFS: "the file system is mounted read-only: choose a writable location",
    errno.ENOSPC: "free some space or write to another disk; completed files were kept",
    errno.EDQUOT: "free some space under your quota or write elsewhere; completed files were kept",
    errno.EFBIG: "the file exceeds the size this system allows: raise the limit (ulimit -f) or write elsewhere",
    errno.ENAMETOOLONG: "choose a shorter name",
    errno.ELOOP: "the path has a symbolic link loop: fix the links",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n)",
    errno.EIO: "the disk reported an I/O error: check the device, or write elsewhere",
}


def reason_and_fix(exc: OSError) -> str:
    """The system's reason and what to do, for a message that names the path itself."""
    reason = exc.strerror or (str(exc).splitlines() or [type(exc).__name__])[0]
    fix = FIXES.get(exc.errno, "check the path and the disk, then run the command again")
    return f"{reason} ({fix})"


def describe_os_error(exc: OSError) -> str:
    """``exc`` as one line: the path(s), the system's reason, and what to do."""
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    where = " -> ".join(paths) if paths else "a file"
    return f"{where}: {reason_and_fix(exc)}"


def wrapped_os_error(exc: BaseException) -> OSError | None:
    """The operating-system error inside ``exc``: itself, or one that safetensors' Rust writer
    reports only in its message ("I/O error: No space left on device (os error 28)")."""
    if isinstance(exc, OSError):
        return exc
    found = re.search(r"\(os error (\d+)\)", str(exc))
    if found is None:
        return None
    code = int(found.group(1))
    return OSError(code, os.strerror(code))


def file_above(path: Path) -> Path | None:
    """The nearest existing path above ``path`` when it is a file, under which nothing can be made."""
    parent = next((parent for parent in path.parents if parent.exists()), None)
    return parent if parent is not None and not parent.is_dir() else None


def check_output_dir(path: str | Path, flag: str = "--out") -> Path:
    """Refuse, before any work, an output folder that is a file or lies under one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise GptrainError(f"{flag} {path} is a file, not a folder: choose another {flag}")
    if (blocker := file_above(path)) is not None:
        raise GptrainError(f"{flag} {path} lies under {blocker}, which is a file: choose another {flag}")
    return path
