"""A supervisor's state file: what it runs now, how often it restarted it, how it last ended.

The supervisor (:mod:`genwire_stack.supervise`) replaces the file atomically on every change;
``genwire status``, the stack manager and the tests read it with :func:`read_state`.
Only the standard library is imported here, as in the supervisor.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

BACKOFF_FIRST_S = 1.0
"""The first restart's delay; it doubles up to the supervisor's cap."""

SupervisorPhase = str
"""``running`` (a child runs), ``backoff`` (waiting to restart it), ``stopping``, ``stopped``."""


@dataclass
class SupervisorState:
    """What one supervisor is doing, as its state file records it."""

    name: str
    supervisor_pid: int
    phase: SupervisorPhase = "running"
    child_pid: int | None = None
    child_start_ticks: int | None = None
    """The kernel's start time of the child (clock ticks since boot): its identity."""
    child_started_at: float | None = None
    restarts: int = 0
    last_exit: str | None = None
    """``exit code 1``, ``signal 9 (SIGKILL)``: how the previous child ended."""
    last_exit_at: float | None = None
    next_start_at: float | None = None
    """While in ``backoff``: when the next child starts (epoch seconds)."""
    backoff_s: float = BACKOFF_FIRST_S
    """The delay before the next restart."""
    updated_at: float = field(default_factory=time.time)


def state_file(run_dir: Path, name: str) -> Path:
    """Where the supervisor of component ``name`` keeps its state."""
    return run_dir / f"{name}.state.json"


def write_state(path: Path, state: SupervisorState) -> None:
    """Replace the state file atomically: a reader sees the old or the new state, never half."""
    state.updated_at = time.time()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(state)))
    tmp.replace(path)


def read_state(path: Path) -> SupervisorState | None:
    """The state in ``path``, or None when there is none (or it is unreadable)."""
    try:
        raw = json.loads(path.read_text())
        known = set(SupervisorState.__dataclass_fields__)
        return SupervisorState(**{k: v for k, v in raw.items() if k in known})
    except (OSError, ValueError, TypeError):
        return None


def proc_start_ticks(pid: int) -> int:
    """When ``pid`` started (field 22 of ``/proc/<pid>/stat``), or -1 when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[19]) if len(fields) > 19 else -1


def describe_exit(status: int) -> str:
    """``exit code 3`` or ``signal 9 (SIGKILL)`` from a ``waitpid`` status."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "?"
        return f"signal {number} ({name})"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
