"""Detached processes tracked by pid files, and who holds a port.

A component's pid file records the pid and the process's start time (from ``/proc``), so a
recycled pid is never mistaken for ours (the command line is no proof: Redis rewrites its own),
and stopping only ever signals the process group that genwire itself started.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from genwire import triton_admin
from genwire_stack.errors import StackError
from genwire_stack.statefile import SupervisorState, read_state, state_file
from genwire_stack.supervise import START_HEADER, rotate_log


@dataclass(frozen=True)
class PidRecord:
    """What genwire knows about a process it started."""

    name: str
    pid: int
    argv: list[str]
    log: str
    started_at: float
    start_ticks: int
    """The kernel's start time of the process (clock ticks since boot): its identity."""
    supervised: bool = False
    """``pid`` is a supervisor (:mod:`genwire_stack.supervise`) running the server as its child."""

    def alive(self) -> bool:
        """The pid runs (not a zombie) and is still the process we started."""
        return pid_alive(self.pid) and start_ticks(self.pid) == self.start_ticks


_SECRET_ARGUMENT = re.compile(rf"((?:password|{re.escape(triton_admin.HEADER)})=)[^\s,;\]]+")
"""A secret inside an argument: SCRAM passwords (``kafka-storage format --add-scram``) and the
value of Triton's admin header (``--http-restricted-api``)."""


def masked(text: str) -> str:
    """``text`` with the secrets of a command line masked, wherever they stand in it."""
    return _SECRET_ARGUMENT.sub(r"\1***", text)


def shown(argv: Sequence[str]) -> list[str]:
    """``argv`` with its secrets masked: what logs and pid records keep of a command line
    (they are not private files; the secrets stay in the secure home, 0600)."""
    return [masked(str(arg)) for arg in argv]


def pid_file(run_dir: Path, name: str) -> Path:
    """Where the record of component ``name`` lives."""
    return run_dir / f"{name}.pid"


def write_record(run_dir: Path, record: PidRecord) -> None:
    """Write atomically, so a reader never sees half a record."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = pid_file(run_dir, record.name)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record)))
    tmp.replace(path)


def read_record(run_dir: Path, name: str) -> PidRecord | None:
    """The record of ``name``, or None when there is none (or it is unreadable)."""
    try:
        raw = json.loads(pid_file(run_dir, name).read_text())
        return PidRecord(
            name=str(raw["name"]),
            pid=int(raw["pid"]),
            argv=[str(a) for a in raw["argv"]],
            log=str(raw["log"]),
            started_at=float(raw["started_at"]),
            start_ticks=int(raw["start_ticks"]),
            supervised=bool(raw.get("supervised", False)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remove_record(run_dir: Path, name: str) -> None:
    """Forget ``name`` (its process is gone or stopped), and its supervisor's state."""
    with contextlib.suppress(FileNotFoundError):
        pid_file(run_dir, name).unlink()
    with contextlib.suppress(FileNotFoundError):
        state_file(run_dir, name).unlink()


def records(run_dir: Path) -> list[PidRecord]:
    """Every readable pid record of this run dir."""
    found = [read_record(run_dir, path.stem) for path in sorted(run_dir.glob("*.pid"))]
    return [r for r in found if r is not None]


def supervisor_state(run_dir: Path, name: str) -> SupervisorState | None:
    """What the supervisor of ``name`` last recorded (None when unsupervised or never started)."""
    return read_state(state_file(run_dir, name))


def live_child(run_dir: Path, name: str) -> int | None:
    """The pid of the server a supervisor runs for ``name`` now, if it runs (verified by its
    start time, so a recycled pid never counts)."""
    state = supervisor_state(run_dir, name)
    if state is None or state.child_pid is None:
        return None
    pid = state.child_pid
    if pid_alive(pid) and start_ticks(pid) == state.child_start_ticks:
        return pid
    return None


def stop_orphan(run_dir: Path, record: PidRecord, timeout_s: float = 20.0) -> bool:
    """A supervisor that died outright (SIGKILL) leaves its child to PR_SET_PDEATHSIG's SIGTERM;
    make sure it and its group are gone before the port is needed again. True if one was left."""
    pid = live_child(run_dir, record.name)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
    _wait_gone(pid, timeout_s)
    group = record.pid if _pgid(pid) == record.pid else None
    _signal(pid, group, signal.SIGKILL)
    _wait_gone(pid, 5.0)
    return True


def _stat_fields(pid: int) -> list[str]:
    """Fields of ``/proc/<pid>/stat`` from the state on (index 0 = state), or [] if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    # The fields follow the parenthesised command name, which may contain spaces.
    return stat.rsplit(")", 1)[-1].split()


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a dead child nobody reaped yet)."""
    _reap(pid)
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] not in {"Z", "X"}


def start_ticks(pid: int) -> int:
    """When ``pid`` started (clock ticks since boot; field 22 of stat), or -1 if it is gone."""
    fields = _stat_fields(pid)
    return int(fields[19]) if len(fields) > 19 else -1


def cmdline(pid: int) -> list[str]:
    """The argv of ``pid`` (empty when it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def describe_pid(pid: int, limit: int = 80) -> str:
    """``pid 123 (cmd args…)`` for error messages."""
    cmd = " ".join(cmdline(pid)) or "?"
    if len(cmd) > limit:
        cmd = cmd[: limit - 1] + "…"
    return f"pid {pid} ({cmd})"


def _reap(pid: int) -> None:
    """Collect the exit status of our own dead child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str],
    cwd: Path,
    supervised: bool = False,
) -> PidRecord:
    """Start ``argv`` in its own session (it outlives us), output appended to ``log_path``.

    ``supervised``: ``argv`` is a supervisor's (:func:`supervised_argv`), recorded as such.
    A log over :data:`~genwire_stack.supervise.LOG_CAP_BYTES` moves to ``<log>.1`` first.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    rotate_log(log_path)  # nothing writes to it now: a rename loses no line
    with log_path.open("ab") as log:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        log.write(f"\n{START_HEADER}{name} at {stamp}: {' '.join(shown(argv))}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=dict(env),
                start_new_session=True,  # own process group: stop signals it and its children
                close_fds=True,
            )
        except OSError as exc:
            raise StackError(f"{name}: cannot run {argv[0]}: {exc.strerror}") from exc
    return PidRecord(
        name,
        proc.pid,
        shown(argv),
        str(log_path),
        time.time(),
        start_ticks(proc.pid),
        supervised=supervised,
    )


def supervised_argv(
    name: str,
    argv: Sequence[str],
    run_dir: Path,
    *,
    python: str,
    stop_timeout_s: float,
    ready_url: str | None = None,
    after_ready: Sequence[str] | None = None,
    unready: tuple[str, float] | None = None,
    probe_tls: tuple[str, str | None, str | None] | None = None,
    nice: int = 0,
    restart_args: Sequence[str] = (),
) -> list[str]:
    """The argv that runs ``argv`` under :mod:`genwire_stack.supervise`. ``probe_tls``: (CA,
    client certificate, key) of an ``https`` unready URL (None: plain HTTP); ``nice``: how far
    below the other components' CPU priority the child runs; ``restart_args``: added to
    ``argv`` when the supervisor restarts it."""
    command = [
        python,
        "-m",
        "genwire_stack.supervise",
        "--name",
        name,
        "--state",
        str(state_file(run_dir, name)),
        "--stop-timeout",
        f"{stop_timeout_s:g}",
    ]
    if ready_url is not None:
        command += ["--ready-url", ready_url]
    if after_ready:
        command += ["--after-ready-json", json.dumps(list(after_ready))]
    if unready is not None:
        command += ["--unready-url", unready[0], "--unready-restart", f"{unready[1]:g}"]
        if probe_tls is not None:
            ca, cert, key = probe_tls
            command += ["--probe-ca", ca]
            if cert is not None and key is not None:
                command += ["--probe-cert", cert, "--probe-key", key]
    if nice:
        command += ["--nice", str(nice)]
    if restart_args:
        command += ["--restart-args-json", json.dumps(list(restart_args))]
    return [*command, "--", *argv]


def terminate(record: PidRecord, timeout_s: float = 20.0) -> bool:
    """Stop what ``record`` started: SIGTERM to its process group, SIGKILL after ``timeout_s``.

    A supervised record gets SIGTERM on the supervisor alone, which passes it on to its child
    and waits for it (its ``--stop-timeout``), so nothing is signalled twice; the group gets
    SIGKILL after ``timeout_s`` all the same. Returns False when the process was already gone (or
    the pid now belongs to someone else).
    """
    if not record.alive():
        return False
    # start_new_session made the pid its group's leader; signal the group only if that holds.
    group = record.pid if _pgid(record.pid) == record.pid else None
    _signal(record.pid, None if record.supervised else group, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(record.pid):
            break
        time.sleep(0.1)
    else:
        _signal(record.pid, group, signal.SIGKILL)
        _wait_gone(record.pid, 5.0)
    if group is not None:
        # Children that ignored SIGTERM (e.g. Triton's Python stubs) must not outlive the leader.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
    return True


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _signal(pid: int, group: int | None, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group is not None:
            os.killpg(group, sig)
        else:
            os.kill(pid, sig)


def _wait_gone(pid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if nothing listens on (or holds) ``host:port``: we could bind it ourselves."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                inodes.add(inode)
    return inodes


def port_listened(port: int) -> bool:
    """Whether a socket listens on ``port`` (any address): the kernel's tables show every
    process's sockets, whoever owns them. False also where neither table can be read."""
    return bool(_listening_inodes(port))


def port_holders(port: int) -> list[int]:
    """Pids with a listening socket on ``port`` (those we may inspect; may be empty)."""
    wanted = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    if not wanted:
        return []
    holders: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in wanted:
                        holders.append(int(entry.name))
                        break
    return sorted(holders)


def group_hides_fds(pgid: int) -> bool:
    """Whether a process of group ``pgid`` keeps its fds from us (a non-dumpable process: a
    setuid or file-capability binary, one that asked for it), so that ``port_holders`` cannot
    name it even when it is ours. ``/proc/<pid>/stat`` stays readable: the group is found."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # After the command name (in parentheses, maybe with spaces): state, ppid, pgrp.
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            if int(fields[2]) != pgid:
                continue
            next((entry / "fd").iterdir(), None)
        except PermissionError:
            return True
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return False


LOCK_FILE = "stack.lock"


@contextlib.contextmanager
def locked(run_dir: Path, out: Callable[[str], None] | None = None) -> Iterator[None]:
    """Serialize stack operations of one home (two test sessions starting the stack at once).

    The holder's pid is written into the lock file. When another run holds it (a first
    ``make up`` building Jaeger, which takes minutes), say so through ``out`` (default: stderr)
    before waiting, instead of hanging without a word.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    # Not "w": opening must not truncate the pid the holder wrote.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            who = f" (pid {holder})" if holder is not None else ""
            message = f"waiting for another genwire run{who} holding {path}"
            if out is not None:
                out(message)
            else:
                print(f"genwire: {message}", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            # Emptied before the unlock: a waiter never names a pid that no longer holds it.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _lock_holder(fd: int) -> int | None:
    """The pid the lock's holder recorded (None: not written yet, or unreadable)."""
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):
        return None
