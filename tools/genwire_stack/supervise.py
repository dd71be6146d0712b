"""A small supervisor: run one process, restart it whenever it exits unexpectedly.

``genwire up`` starts every component it runs as::

    python -m genwire_stack.supervise --name preprocess --state RUN/preprocess.state.json -- ARGV...

The supervisor is the leader of the process group ``genwire up`` created (its pid is the pid
file's); the child runs in the same group, so a signal to the group reaches both. The child is
restarted after any exit the supervisor did not ask for (a crash, a SIGKILL, a service that gave
up and exited non-zero, even exit code 0), after a capped exponential backoff: 1 s, doubling to
30 s, back to 1 s once a child ran 60 s before exiting. Each restart writes one line into the
component's log (the supervisor's stdout is that log, shared with the child). A log past
``--log-cap`` (64 MiB) is moved to ``<log>.1`` and started anew, at a restart and while the
child runs.

SIGTERM (or SIGINT/SIGHUP) to the supervisor stops it: it passes SIGTERM on to the child, waits up
to ``--stop-timeout`` seconds, SIGKILLs whatever is left of the group, and exits 0. The child gets
``PR_SET_PDEATHSIG`` (SIGTERM), so a supervisor killed outright does not leave it running, and the
supervisor is a child subreaper, so processes the child started (Triton's Python stubs) are
collected and killed with it instead of lingering. Between events it sleeps on its signals
(SIGCHLD, the stop signals) through a wakeup pipe, not on a timer: an idle supervisor wakes
only for a ``--unready-url`` probe and once a minute (a safety net); after a restart, every
0.2 s until ``--ready-url`` answers.

The state file (JSON, replaced atomically on every change) says what runs now: the child's pid
and start time, the restart count, the last exit; :mod:`genwire_stack.statefile` reads it. With
``--ready-url`` and ``--after-ready-json``, each *restart* (not the first start: ``genwire up``
does that one itself) waits until the URL answers 200 and then runs the given argv once, e.g. to
bring back the models `genwire model load` served into a restarted Triton. ``--restart-args-json``
adds arguments to the child's own argv on restarts only (Triton: load the default model as it
starts).

With ``--unready-url`` and ``--unready-restart S`` (services: 600 s, twice the default outage
budget), a child whose ``/readyz`` has not answered 200 for S seconds is stopped and restarted:
the last resort for a service stuck not-ready that never exits by itself. An ``https`` URL is
probed over TLS: ``--probe-ca`` is the CA its certificate is checked against, and ``--probe-cert``
/ ``--probe-key`` the client certificate an mTLS server (the gateway of ``--secure mtls``) asks
for.

Only the standard library is imported here: a supervisor costs a few MB and no startup time.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import os
import select
import shutil
import signal
import ssl
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from genwire.tls import client_context
from genwire_stack.statefile import (
    BACKOFF_FIRST_S,
    SupervisorState,
    describe_exit,
    proc_start_ticks,
    write_state,
)

BACKOFF_MAX_S = 30.0
HEALTHY_RESET_S = 60.0
"""A child that ran this long before exiting counts as healthy: the backoff starts again at 1 s."""
STOP_TIMEOUT_S = 20.0
POLL_S = 0.2
"""How often the loop looks again while waiting on something no signal announces: an
after-restart step's ready URL answering."""
IDLE_WAIT_S = 60.0
"""The longest the loop sleeps with nothing due: a child's exit (SIGCHLD) and a stop request
wake it at once, so this is only a safety net (it polled every ``POLL_S`` before: 5 wake-ups a
second per supervisor, docs/benchmarks.md *The supervisors' wait*)."""
UNREADY_PROBE_S = 5.0
"""How often ``--unready-url`` is polled."""
LOG_PREFIX = "=== genwire supervisor:"
"""Every line the supervisor writes into the log starts with this (``log_tail`` skips them)."""
START_HEADER = "=== genwire: starting "
"""The line ``genwire up`` writes into a component's log before each start
(``process.spawn``): what comes before it is an earlier run's (``health.last_words``)."""
LOG_CAP_BYTES = 64 * 1024 * 1024
"""A component's log larger than this moves to ``<log>.1`` (replacing an older one): when
``genwire up`` starts it (:func:`rotate_log`), and while its supervisor runs it
(``Supervisor._cap_log``). Without a cap a log grew for as long as the home lived (a 400 MB
``kafka.log`` seen), and the disk with it."""

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def rotated(path: Path) -> Path:
    """Where the earlier part of log ``path`` is kept: ``<name>.log.1``."""
    return path.with_name(f"{path.name}.1")


def rotate_log(path: Path, cap: int = LOG_CAP_BYTES) -> bool:
    """Move ``path`` to ``<path>.1`` (replacing an older one) when it is larger than ``cap``,
    before a writer opens it anew; True when it did."""
    try:
        if path.stat().st_size <= cap:
            return False
        os.replace(path, rotated(path))
    except OSError:  # none yet, or a folder we may not write in: keep appending
        return False
    return True


def _prctl(option: int, value: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(option, value, 0, 0, 0)


def _die_with_parent(parent: int) -> None:
    """In the forked child, before exec: SIGTERM when the supervisor dies."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        # Not a SIGTERM to itself: until exec this child still has the supervisor's Python
        # handlers, which would catch it and leave the child running unsupervised.
        os._exit(128 + signal.SIGTERM)


AUTOGROUP = Path("/proc/self/autogroup")


def lower_priority(nice: int) -> None:
    """In the forked child, before exec: run ``nice`` below the supervisor's nice value (a
    refusal leaves it where it is; the supervisor's group setting still applies)."""
    if nice > 0:
        with contextlib.suppress(OSError):
            os.nice(nice)


def lower_session_group(nice: int, autogroup: Path = AUTOGROUP) -> str | None:
    """Where the kernel schedules sessions as groups (autogroups), the group's weight is what
    competes with the other components' sessions: set this session's group to ``nice``. Only
    a session leader does it (``genwire up`` starts every supervisor in a session of its own),
    so a supervisor started by hand never lowers its caller's terminal session. Returns why it
    was not applied (None: applied, or no autogroups here, where the nice value does it)."""
    if nice <= 0 or not autogroup.exists():
        return None
    if os.getsid(0) != os.getpid():
        return "not a session leader: the session's group is left as it is"
    reason = ""
    for _ in range(3):  # unprivileged writes are rate-limited system-wide
        try:
            autogroup.write_text(str(nice), encoding="ascii")
            return None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            time.sleep(0.2)
    return f"the session's group was not lowered: {reason}"


def _prepare_child(parent: int, nice: int) -> None:
    _die_with_parent(parent)
    lower_priority(nice)


def _group_members(pgid: int) -> list[int]:
    """Pids of the processes in process group ``pgid`` (except the calling process)."""
    members: list[int] = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if len(fields) > 2 and fields[0] not in {"Z", "X"} and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _children(parent: int) -> list[int]:
    """Pids whose parent is ``parent`` (alive, not zombies)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if len(fields) > 1 and fields[0] not in {"Z", "X"} and int(fields[1]) == parent:
            found.append(int(entry.name))
    return found


class Supervisor:
    """Runs ``argv`` until told to stop, restarting it with backoff."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        state_path: Path,
        *,
        stop_timeout_s: float = STOP_TIMEOUT_S,
        ready_url: str | None = None,
        after_ready: Sequence[str] | None = None,
        backoff_first_s: float = BACKOFF_FIRST_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        healthy_after_s: float = HEALTHY_RESET_S,
        unready_url: str | None = None,
        unready_restart_s: float | None = None,
        probe_context: ssl.SSLContext | None = None,
        nice: int = 0,
        restart_args: Sequence[str] = (),
        log_cap: int = LOG_CAP_BYTES,
    ) -> None:
        self.name = name
        self.log_cap = log_cap
        """The largest its log (its own stdout, shared with the child) grows before rotation."""
        self.restart_args = list(restart_args)
        """Added to ``argv`` when the child is started again (not the first time)."""
        self.nice = nice
        """How far below the supervisor's CPU priority the child runs (``lower_priority``)."""
        self.probe_context = probe_context
        """TLS of an ``https`` ``unready_url`` (its CA, a client certificate for mTLS)."""
        self.backoff_first_s = backoff_first_s
        self.backoff_max_s = backoff_max_s
        self.healthy_after_s = healthy_after_s
        self.unready_url = unready_url
        self.unready_restart_s = unready_restart_s
        self.unready_since: float | None = None
        self.unready_reason = ""
        self.next_probe = 0.0
        self.restart_requested: str | None = None
        self.kill_at = 0.0
        self.argv = list(argv)
        self.state_path = state_path
        self.stop_timeout_s = stop_timeout_s
        self.ready_url = ready_url
        self.after_ready = list(after_ready) if after_ready else None
        self.state = SupervisorState(
            name=name, supervisor_pid=os.getpid(), backoff_s=backoff_first_s
        )
        self.child: subprocess.Popen[bytes] | None = None
        self.hook: subprocess.Popen[bytes] | None = None
        self.hook_pending = False
        self.stopping = False
        self._wakeup: int | None = None
        """The read end of the pipe ``signal.set_wakeup_fd`` writes a byte to for each signal."""

    # -- signals -------------------------------------------------------------------------------

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        if not self.stopping:
            self.stopping = True
            # Told to stop: the child gets the same request (a group signal may have sent it
            # already; SIGTERM twice is harmless to every component genwire runs).
            if self.child is not None and self.child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.child.pid, signal.SIGTERM)

    # -- logging and state ---------------------------------------------------------------------

    def say(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        line = f"{LOG_PREFIX} {stamp} {self.name}: {text}\n"
        with contextlib.suppress(OSError):
            os.write(sys.stdout.fileno(), line.encode())

    def save(self) -> None:
        with contextlib.suppress(OSError):
            write_state(self.state_path, self.state)

    def _cap_log(self) -> None:
        """Keep the log under ``log_cap``: once larger, its content moves to ``<log>.1`` and the
        log starts empty again. The child writes on through the same descriptor, so the file is
        copied, then truncated in place (a rename would leave the child writing to ``.1``);
        lines written between the two are lost. Only for the log ``genwire up`` opened for us:
        a regular file in append mode (a truncated non-append file would be written on at the
        old offset), still at the path it was opened at."""
        try:
            held = os.fstat(1)
            if not stat.S_ISREG(held.st_mode) or held.st_size <= self.log_cap:
                return
            if not fcntl.fcntl(1, fcntl.F_GETFL) & os.O_APPEND:
                return
            path = Path(os.readlink("/proc/self/fd/1"))
            on_disk = path.stat()
            if (on_disk.st_dev, on_disk.st_ino) != (held.st_dev, held.st_ino):
                return  # renamed or replaced meanwhile: not ours to rotate any more
        except OSError:
            return
        spare = path.with_name(f".{path.name}.1.{os.getpid()}.tmp")
        try:
            shutil.copyfile("/proc/self/fd/1", spare)  # sendfile: no copy in our memory
            os.replace(spare, rotated(path))
            os.ftruncate(1, 0)
        except OSError:  # a full disk: keep appending rather than lose what is there
            with contextlib.suppress(OSError):
                spare.unlink()
            return
        self.say(f"log larger than {self.log_cap} bytes: its earlier part is in {rotated(path)}")

    # -- the loop ------------------------------------------------------------------------------

    def _on_child(self, signum: int, _frame: FrameType | None) -> None:
        """Nothing to do here: the signal's byte on the wakeup pipe ends ``_sleep``."""

    def _listen(self) -> None:
        """Signals wake ``_sleep``: Python's C handler writes a byte to the wakeup pipe for
        every signal with a Python handler (SIGCHLD needs one for that), so a signal that
        arrives just before the wait is not missed either."""
        read, write = os.pipe()  # both non-inheritable: no child gets them
        os.set_blocking(read, False)
        os.set_blocking(write, False)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        self._wakeup = read
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGCHLD, self._on_child)

    def _sleep(self, timeout_s: float) -> None:
        """Up to ``timeout_s``, less if a signal comes (a child exited, a stop request)."""
        assert self._wakeup is not None, "_listen first"
        select.select([self._wakeup], [], [], max(timeout_s, 0.0))
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wakeup, 512):
                pass

    def _due_in(self) -> float:
        """Seconds until the loop has work that no signal announces."""
        if self.hook_pending and self.hook is None:
            return POLL_S  # the after-restart step waits for a URL to answer
        if self.unready_url is None or self.unready_restart_s is None:
            return IDLE_WAIT_S
        now = time.monotonic()
        if self.restart_requested is None:
            return min(IDLE_WAIT_S, max(self.next_probe - now, 0.0))
        # Stopping an unready child: SIGKILL at kill_at; after it, its exit (SIGCHLD) is due.
        return self.kill_at - now if now < self.kill_at else IDLE_WAIT_S

    def run(self) -> int:
        self._listen()
        refused = lower_session_group(self.nice)  # the group outlives the child's restarts
        if refused:
            self.say(f"--nice {self.nice}: {refused}")
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        first = True
        while not self.stopping:
            if not self._start_child(first):
                return 1
            first = False
            status = self._wait_child()
            if self.stopping:
                break
            self._schedule_restart(status)
            self._backoff()
        self._stop()
        return 0

    def _start_child(self, first: bool) -> bool:
        me = os.getpid()
        self._cap_log()  # a child that crash-loops writes its trace on every start
        try:
            self.child = subprocess.Popen(
                self.argv if first else [*self.argv, *self.restart_args],
                stdin=subprocess.DEVNULL,
                close_fds=True,
                # Single-threaded here: preexec_fn is safe.
                preexec_fn=lambda: _prepare_child(me, self.nice),  # noqa: PLW1509
            )
        except (OSError, subprocess.SubprocessError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            self.say(f"cannot run {self.argv[0]}: {reason}; giving up")
            self.state.phase = "stopped"
            self.state.last_exit = f"cannot run: {reason}"
            self.save()
            return False
        self.state.phase = "running"
        self.state.child_pid = self.child.pid
        self.state.child_start_ticks = proc_start_ticks(self.child.pid)
        self.state.child_started_at = time.time()
        self.state.next_start_at = None
        self.save()
        self.hook_pending = not first and self.after_ready is not None
        self.unready_since = None
        self.restart_requested = None
        return True

    def _wait_child(self) -> int:
        """Wait until the child exits; returns its wait status. Reaps adopted orphans meanwhile."""
        assert self.child is not None
        while True:
            status = self._reap()
            if status is not None:
                return status
            if self.stopping:
                return 0
            self._cap_log()  # a server running for weeks writes on and on
            self._tend_hook()
            self._watch_readiness()
            self._sleep(self._due_in())

    def _reap(self) -> int | None:
        """Collect every dead child of ours; the wait status of the main child if it was one."""
        found: int | None = None
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return found
            if pid == 0:
                return found
            if self.child is not None and pid == self.child.pid:
                self.child.returncode = os.waitstatus_to_exitcode(status)
                found = status
            elif self.hook is not None and pid == self.hook.pid:
                self.hook.returncode = os.waitstatus_to_exitcode(status)
                self.say(f"after-restart step exited with code {self.hook.returncode}")
                self.hook = None

    def _tend_hook(self) -> None:
        """After a restart: once the child answers ``ready_url``, run ``after_ready`` once."""
        if not self.hook_pending or self.hook is not None or self.after_ready is None:
            return
        if self.ready_url is not None and not _answers(self.ready_url):
            return
        self.hook_pending = False
        self.say(f"ready again; running {' '.join(self.after_ready)}")
        with contextlib.suppress(OSError):
            self.hook = subprocess.Popen(
                self.after_ready, stdin=subprocess.DEVNULL, close_fds=True, process_group=0
            )

    def _watch_readiness(self) -> None:
        """The last resort for a server that stays up but never gets (back) to ready: after
        ``unready_restart_s`` of 503s (or silence) from ``unready_url``, SIGTERM it; the exit
        is then an ordinary restart. Services exit by themselves when they give up; this only
        catches one that does not."""
        if self.unready_url is None or self.unready_restart_s is None or self.child is None:
            return
        now = time.monotonic()
        if self.restart_requested is not None:
            if now >= self.kill_at and self.child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.child.pid, signal.SIGKILL)
            return
        if now < self.next_probe:
            return
        ready, reason = _probe(self.unready_url, self.probe_context)
        # Spaced from the probe's end: a slow answer (up to its timeouts) leaves a full gap.
        spacing = min(UNREADY_PROBE_S, max(0.5, self.unready_restart_s / 5))
        self.next_probe = time.monotonic() + spacing
        if ready:
            self.unready_since = None
            return
        if self.unready_since is None:
            self.unready_since = now
        self.unready_reason = reason
        if now - self.unready_since < self.unready_restart_s:
            return
        self.restart_requested = f"not ready for {now - self.unready_since:.0f} s ({reason})"
        self.kill_at = now + self.stop_timeout_s
        self.say(f"pid {self.child.pid} {self.restart_requested}; stopping it to restart it")
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.child.pid, signal.SIGTERM)

    def _schedule_restart(self, status: int) -> None:
        assert self.child is not None
        now = time.time()
        started = self.state.child_started_at or now
        uptime = now - started
        if uptime >= self.healthy_after_s:
            self.state.backoff_s = self.backoff_first_s
        delay = self.state.backoff_s
        self.state.restarts += 1
        self.state.last_exit = describe_exit(status)
        if self.restart_requested is not None:
            self.state.last_exit = f"{self.state.last_exit}, stopped: {self.restart_requested}"
        self.state.last_exit_at = now
        self.state.phase = "backoff"
        self.state.child_pid = None
        self.state.child_start_ticks = None
        self.state.next_start_at = now + delay
        self.state.backoff_s = min(delay * 2, self.backoff_max_s)
        self._kill_leftovers(signal.SIGKILL)
        # The log line first, then the state: whoever sees the new count finds the line too.
        self.say(
            f"pid {self.child.pid} ended with {self.state.last_exit} after {uptime:.1f} s; "
            f"restart {self.state.restarts} in {delay:g} s"
        )
        self.save()

    def _backoff(self) -> None:
        deadline = self.state.next_start_at or time.time()
        while not self.stopping and time.time() < deadline:
            self._reap()
            self._sleep(deadline - time.time())

    def _stop(self) -> None:
        self.state.phase = "stopping"
        self.save()
        deadline = time.monotonic() + self.stop_timeout_s
        if self.child is not None and self.child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child.pid, signal.SIGTERM)
            while self.child.returncode is None and time.monotonic() < deadline:
                self._reap()
                if self.child.returncode is None:
                    self._sleep(deadline - time.monotonic())  # its exit wakes this
            if self.child.returncode is None:
                self.say(
                    f"pid {self.child.pid} still runs {self.stop_timeout_s:.0f} s after "
                    "SIGTERM; killing it"
                )
        if self.hook is not None and self.hook.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.hook.pid, signal.SIGKILL)
        self._kill_leftovers(signal.SIGKILL)
        self._reap()
        self.state.phase = "stopped"
        self.state.child_pid = None
        self.state.child_start_ticks = None
        self.save()

    def _kill_leftovers(self, sig: signal.Signals) -> None:
        """Everything left in our process group but us: a dead child's children, a stuck child.

        Only when the supervisor leads its own group (as ``genwire up`` starts it): run from a
        shell, the group is the shell's, and only our own children are fair game.
        """
        me = os.getpid()
        if os.getpgrp() == me:
            victims = _group_members(me)
        else:
            victims = [pid for pid in _children(me) if self.hook is None or pid != self.hook.pid]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def probe_context(
    ca: str | None, cert: str | None = None, key: str | None = None
) -> ssl.SSLContext | None:
    """The client TLS context of the probe: ``ca`` trusted (host name checked), ``cert`` and
    ``key`` presented; None when no file is given (the system's CAs for an https URL)."""
    if ca is None and cert is None:
        return None
    return client_context(ca, cert, key)


def _probe(url: str, context: ssl.SSLContext | None = None) -> tuple[bool, str]:
    """(ready, first reason) from a ``/readyz``-style URL: 200, or 503 with JSON reasons;
    ``context``: the TLS of an ``https`` URL."""
    try:
        with urllib.request.urlopen(url, timeout=2.0, context=context) as response:
            return int(response.status) == 200, ""
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read() or b"{}")
        except ValueError:
            body = {}
        reasons = body.get("reasons") if isinstance(body, dict) else None
        if isinstance(reasons, list) and reasons:
            return False, " ".join(str(reasons[0]).split())[:200]
        failed = body.get("failed") if isinstance(body, dict) else None
        return False, " ".join(str(failed).split())[:200] if failed else f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError):
        return False, "no answer"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m genwire_stack.supervise --name N --state FILE [...] -- ARGV...``."""
    parser = argparse.ArgumentParser(prog="python -m genwire_stack.supervise")
    parser.add_argument("--name", required=True)
    parser.add_argument("--state", required=True, type=Path, help="the JSON state file")
    parser.add_argument("--stop-timeout", type=float, default=STOP_TIMEOUT_S)
    parser.add_argument("--ready-url", default=None, help="after a restart: wait for HTTP 200")
    parser.add_argument(
        "--after-ready-json", default=None, help="after a restart, once ready: run this argv"
    )
    parser.add_argument(
        "--restart-args-json", default=None, help="on a restart: add these to the command"
    )
    parser.add_argument("--backoff-first", type=float, default=BACKOFF_FIRST_S)
    parser.add_argument("--backoff-max", type=float, default=BACKOFF_MAX_S)
    parser.add_argument(
        "--healthy-after",
        type=float,
        default=HEALTHY_RESET_S,
        help="a child that ran this long before exiting resets the backoff",
    )
    parser.add_argument("--unready-url", default=None, help="a /readyz to watch")
    parser.add_argument(
        "--unready-restart",
        type=float,
        default=None,
        metavar="S",
        help="restart the child once --unready-url has not answered 200 for S seconds",
    )
    parser.add_argument("--probe-ca", default=None, help="CA of an https --unready-url")
    parser.add_argument("--probe-cert", default=None, help="client certificate for it (mTLS)")
    parser.add_argument("--probe-key", default=None, help="private key of --probe-cert")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        choices=range(20),
        metavar="0-19",
        help="run the child this far below the other components' CPU priority: its nice value, "
        "and its session's group (shared with this supervisor) where the kernel has autogroups "
        "(default 0)",
    )
    parser.add_argument(
        "--log-cap",
        type=int,
        default=LOG_CAP_BYTES,
        metavar="BYTES",
        help="when its log (this process's stdout) grows past this, move its content to "
        "<log>.1 and start it anew (default: 64 MiB)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if (args.probe_cert is None) != (args.probe_key is None):
        parser.error("--probe-cert and --probe-key go together")
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        parser.error("nothing to run: give the command after --")
    after = json.loads(args.after_ready_json) if args.after_ready_json else None
    supervisor = Supervisor(
        args.name,
        command,
        args.state,
        stop_timeout_s=args.stop_timeout,
        ready_url=args.ready_url,
        after_ready=[str(a) for a in after] if after else None,
        backoff_first_s=args.backoff_first,
        backoff_max_s=args.backoff_max,
        healthy_after_s=args.healthy_after,
        unready_url=args.unready_url,
        unready_restart_s=args.unready_restart,
        probe_context=probe_context(args.probe_ca, args.probe_cert, args.probe_key),
        nice=args.nice,
        restart_args=[str(a) for a in json.loads(args.restart_args_json or "[]")],
        log_cap=args.log_cap,
    )
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
