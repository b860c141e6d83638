"""The ranks of a torchrun job, one or several nodes: what each must agree on before training, what
each reports for ``--dry-run``, and the restarts of ``torchrun --max-restarts``.

A rank whose set-up fails (a data path missing on its node, a setting or a gptrain version that
differs from rank 0's) would leave the others waiting in their first collective until gloo or NCCL
times out, then fail with a traceback each. Instead every rank sets up inside :func:`ranks_agree`,
which all-gathers one small record per rank right after the set-up, before any collective of
training: when one failed or differs, every rank raises the same one-line error naming it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch.distributed as dist

from gptrain.core.errors import GptrainError
from gptrain.core.oserrors import describe_os_error, wrapped_os_error
from gptrain.core.runtime import Processes
from gptrain.core.version import package_version

# Test hook: "STEP" or "STEP:RANK" kills that rank (0 by default) with SIGKILL in the middle of
# optimizer step STEP (after its backward pass, before the update), on the job's first attempt only.
FAULT_ENV = "GPTRAIN_FAULT_AT_STEP"
SHOWN_DIFFERENCES = 3


@dataclass
class RankRecord:
    rank: int
    node: str  # torchrun's node rank (GROUP_RANK) and the host name
    local_rank: int
    version: str
    settings: dict[str, Any] = field(default_factory=dict)  # the resolved TrainConfig, --data left out
    data_sha256: str | None = None
    view: str = ""  # this rank's part of the job, for --dry-run
    error: str | None = None


def _flag_value(name: str, value: Any) -> str:
    return f"--{name.replace('_', '-')} {value!r}"


def disagreements(records: list[RankRecord]) -> list[str]:
    """A phrase for each rank that failed to set up or differs from rank 0; empty when all agree."""
    first, problems = records[0], []
    for record in records:
        where = f"rank {record.rank} (node {record.node})"
        if record.error is not None:
            problems.append(f"{where} failed before training: {record.error}")
        elif record.version != first.version:
            problems.append(f"{where} runs gptrain {record.version}, rank 0 runs {first.version}: install the "
                            "same version on every node")
        elif record.settings != first.settings:
            names = sorted(name for name in first.settings.keys() | record.settings.keys()
                           if record.settings.get(name) != first.settings.get(name))
            shown = ", ".join(f"{_flag_value(name, record.settings.get(name))} (rank 0: "
                              f"{first.settings.get(name)!r})" for name in names[:SHOWN_DIFFERENCES])
            more = f" and {len(names) - SHOWN_DIFFERENCES} more" if len(names) > SHOWN_DIFFERENCES else ""
            problems.append(f"{where} was given other settings than rank 0: {shown}{more}; launch every node "
                            "with the same flags")
        elif record.data_sha256 != first.data_sha256:
            problems.append(f"{where} reads other training data than rank 0 (sha256 {record.data_sha256[:12]}..., "
                            f"rank 0 {first.data_sha256[:12]}...): give every node the same --data")
    return problems


def _cause(exc: Exception) -> str:
    if isinstance(exc, GptrainError):
        return str(exc)
    os_error = wrapped_os_error(exc)
    return describe_os_error(os_error) if os_error is not None else f"{type(exc).__name__}: {exc}"


@dataclass
class Agreement:
    """What :func:`ranks_agree` gathers: set by the body with :meth:`settle`, read after it ends."""

    record: RankRecord
    records: list[RankRecord] = field(default_factory=list)

    def settle(self, settings: dict[str, Any], data_sha256: str | None, view: str) -> None:
        self.record.settings = {k: v for k, v in settings.items() if k != "data"}
        self.record.data_sha256, self.record.view = data_sha256, view


def node_name() -> str:
    return f"{os.environ.get('GROUP_RANK', '0')} on {socket.gethostname()}"


@contextlib.contextmanager
def ranks_agree(procs: Processes) -> Iterator[Agreement]:
    """Run a rank's set-up, then check that every rank set up and agrees; see the module's doc."""
    agreement = Agreement(RankRecord(procs.rank, node_name(), procs.local_rank, package_version()))
    failure = None
    try:
        yield agreement
    except Exception as exc:
        if not procs.distributed:
            raise
        failure, agreement.record.error = exc, _cause(exc)
    agreement.records = [agreement.record]
    if not procs.distributed:
        return
    agreement.records = [None] * procs.world_size
    dist.all_gather_object(agreement.records, agreement.record)
    problems = disagreements(agreement.records)
    if not problems:
        return
    dist.destroy_process_group()  # every rank knows: none waits in a collective of the training
    if failure is not None and wrapped_os_error(failure) is None and not isinstance(failure, GptrainError):
        raise failure  # a bug on this rank keeps its traceback; the others name it in one line
    raise GptrainError("; ".join(problems)) from failure


def restart_count() -> int:
    """How often torchrun has restarted this job's workers (torchrun --max-restarts); 0 without torchrun."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def shared_store_warning() -> str | None:
    """Why restarts may fail to reconnect, when they may: torchrun shares its rendezvous store with the
    workers by default, and a restarted group can read the failed attempt's addresses from it
    (pytorch#135712), which it then waits on and cannot reach."""
    restarts_allowed = os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") != "0"
    if not restarts_allowed or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    return ("warning: torchrun --max-restarts shares its rendezvous store with the workers, so a restarted group "
            "can fail to connect (pytorch#135712): launch torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1")


def fault_point(step: int, rank: int) -> None:
    """Kill this process as a failing node would, where :data:`FAULT_ENV` asks for it (tests, benchmarks)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec or restart_count():
        return
    at, _, on_rank = spec.partition(":")
    if int(at) == step and int(on_rank or 0) == rank:
        os.kill(os.getpid(), signal.SIGKILL)


def last_failure(out: Path) -> str | None:
    """The cause a failed attempt of the run logged as its last record, if it did (a process killed
    outright logs nothing; another process that lost it does)."""
    path = out / "metrics.jsonl"
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines() if path.exists() else []
    for line in reversed(lines):
        if line.strip():
            try:
                record = json.loads(line)
            except ValueError:
                return None
            return record.get("cause") if isinstance(record, dict) and record.get("event") == "failed" else None
    return None
