"""One training process per run directory: a lock file holding the owner's pid and host.

The lock file appears atomically, already filled in and already ``flock``-ed: it is written under
a private name and hard-linked to ``run.lock``, which fails if the name exists (the ``O_EXCL``
guarantee). The kernel drops an ``flock`` when its process dies, even by ``kill -9``, so a lock
file whose ``flock`` can be taken belongs to a dead run; if its pid is also gone from this host,
the lock is stale and is taken over. A lock from another host is never taken over, since its pid
cannot be checked from here. Under torchrun only rank 0 locks: the ranks are one run.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import socket
import time
from pathlib import Path

from gptrain.core.errors import GptrainError
from gptrain.core.launch import is_main_process
from gptrain.core.oserrors import check_output_dir

LOCK_FILE = "run.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _try_flock(fd: int) -> bool:
    """True when we got the lock; True also where the file system has no flock (the pid decides)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def read_owner(path: Path) -> dict:
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


class RunLock:
    """Held while a run writes its directory; ``with RunLock(out):`` or acquire()/release()."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.path = self.out / LOCK_FILE
        self.took_over: dict | None = None  # the stale owner we replaced, if any
        self._fds: list[int] = []
        self._created: list[Path] = []  # folders we made, innermost first: removed again if left empty

    def acquire(self) -> "RunLock":
        check_output_dir(self.out)
        self._created = [folder for folder in (self.out, *self.out.parents) if not folder.exists()]
        self.out.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        mine = self.out / f".{LOCK_FILE}.{me['pid']}"
        try:
            mine.write_text(json.dumps(me) + "\n", encoding="utf-8")
            self._fds.append(os.open(mine, os.O_RDWR))
            _try_flock(self._fds[-1])
            try:
                os.link(mine, self.path)
            except FileExistsError:
                self._take_over_if_stale(mine)
        except BaseException:
            mine.unlink(missing_ok=True)
            self.release()
            raise
        mine.unlink(missing_ok=True)
        return self

    def _take_over_if_stale(self, mine: Path) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:  # its owner finished just now
            os.link(mine, self.path)
            return
        self._fds.append(fd)  # holding the old file's flock keeps a third process from taking it over too
        owner = read_owner(self.path)
        dead = (_try_flock(fd) and owner.get("host") == socket.gethostname()
                and isinstance(owner.get("pid"), int) and not _pid_alive(owner["pid"]))
        if not dead:
            mine.unlink(missing_ok=True)
            self._close()
            who = f"process {owner.get('pid', '?')} on {owner.get('host', '?')} (since {owner.get('since', '?')})"
            raise GptrainError(
                f"{self.out} is in use by {who}: wait for that run to finish or choose another --out; if it is "
                f"no longer running, delete {self.path}"
            )
        os.replace(mine, self.path)
        self.took_over = owner

    def release(self) -> None:
        try:
            if self._fds and read_owner(self.path).get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
        finally:
            self._close()
        for folder in self._created:
            try:
                folder.rmdir()  # only if the run failed before writing anything
            except OSError:
                break

    def _close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def locks_run_dir(train):
    """Decorate ``train(cfg, ...)`` to hold ``cfg.out``'s lock while it runs (rank 0 only)."""

    @functools.wraps(train)
    def locked(cfg, *args, **kwargs):
        if not is_main_process():
            return train(cfg, *args, **kwargs)
        with RunLock(cfg.out) as lock:
            if lock.took_over:
                print(f"Took over the stale lock of process {lock.took_over.get('pid')} (no longer running) "
                      f"in {cfg.out}", flush=True)
            return train(cfg, *args, **kwargs)

    return locked
