"""Health probes and the polling loop that waits on them (never a blind sleep)."""

from __future__ import annotations

import asyncio
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx

from genwire_stack.errors import StackError
from genwire_stack.supervise import LOG_PREFIX, START_HEADER

T = TypeVar("T")


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_PORT = 20000  # above every fixed port the stack uses (Jaeger's 16686, 13133, 10000)
_given: set[int] = set()  # ports this process handed out (two callers never get the same)
_given_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now, below the kernel's ephemeral range.

    A port the kernel picks (bind to 0) is an ephemeral one: until the server that is given it
    binds, any outgoing connection on the machine may take it as its source port, and the
    server then fails with "address already in use" (seen: Jaeger's query port in a test
    stack). Ports below the range are never given to outgoing connections; one is drawn at
    random and checked free. Where the range leaves no room below it, the kernel picks. Either
    way no port is handed out twice by this process, so N calls give N ports."""
    low = _ephemeral_low()
    if low - _LOWEST_PORT >= 1000:
        rng = random.Random()
        for _ in range(200):
            port = rng.randrange(_LOWEST_PORT, low)
            with _given_lock:
                if port in _given or not _bindable(host, port):
                    continue
                _given.add(port)
            return port
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind((host, 0))
            picked: int = sock.getsockname()[1]
        with _given_lock:
            if picked not in _given:
                _given.add(picked)
                return picked
    raise OSError(f"no free port on {host} not already handed out")


def _ephemeral_low() -> int:
    """The lowest port of the kernel's ephemeral range (32768, Linux's default, if unread)."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def tcp_open(port: int, host: str = "127.0.0.1", timeout_s: float = 0.5) -> bool:
    """True if something accepts connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def http_status(url: str, method: str = "GET", timeout_s: float = 2.0) -> int | None:
    """The status code of ``url``, or None when it does not answer."""
    try:
        with httpx.Client(timeout=timeout_s, trust_env=False) as client:
            return client.request(method, url).status_code
    except httpx.HTTPError:
        return None


def redis_ping(port: int, host: str = "127.0.0.1", timeout_s: float = 1.0) -> bool:
    """True if a Redis server answers PING on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def run_coro(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even if this thread has a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name="genwire-stack-coro")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


TAIL_BYTES = 64 * 1024
"""How much of a log's end :func:`log_tail` and :func:`last_words` read: a one-line message
needs the last lines, and a log may hold months (a 400 MB ``kafka.log`` took 2.7 s and
~940 MB of memory when read whole)."""


def _tail_lines(path: Path | str, limit: int = TAIL_BYTES) -> list[str]:
    """The lines in the last ``limit`` bytes of ``path`` (not the first, cut one); raises
    OSError when it cannot be read."""
    with Path(path).open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        start = max(0, size - limit)
        handle.seek(start)
        data = handle.read(limit)
    lines = data.decode(errors="replace").splitlines()
    return lines[1:] if start > 0 else lines


def log_tail(path: Path | str, lines: int = 1) -> str:
    """The last non-empty line(s) a component wrote to its log, for a one-line error message
    (the supervisor's own restart lines are skipped: the server's last words matter)."""
    try:
        text = _tail_lines(path)
    except OSError:
        return ""
    own = [line.strip() for line in text if line.strip() and not line.startswith(LOG_PREFIX)]
    return " | ".join(own[-lines:])[:300]


_EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception|Exit|Interrupt)\b(?::|$)")
_ERROR_WORD = re.compile(r"\b(?:error|exception|failed|fatal)\b|^E: ", re.IGNORECASE)
"""A line naming an error: pip's ``ERROR:``, Maven's ``[ERROR]``, apt's ``E:``, a Java or
Python exception line (with :data:`_EXCEPTION_LINE`)."""
_NOT_AN_ERROR = re.compile(r"^(?:\[[^\]]*\]\s*)?(?:\[?WARN(?:ING)?\b|\[notice\]|W:)", re.IGNORECASE)
"""Warnings and notices (pip's, a JDK's, Maven's, a log's ``[time] WARN``), printed after an
error as often as before it."""


def error_line(stderr: str, stdout: str = "") -> str | None:
    """The line that says why a command failed: the last line naming an error on stderr,
    else on stdout (Maven's errors go there), else stderr's last line that is not a warning
    (a tool's short message: ``All of the log directories are already formatted.``). None:
    there is none of these (the caller quotes its log)."""

    def lines(output: str) -> list[str]:
        return [line.strip() for line in output.splitlines() if line.strip()]

    for output in (stderr, stdout):
        for line in reversed(lines(output)):
            named = _ERROR_WORD.search(line) or _EXCEPTION_LINE.match(line)
            if named and not _NOT_AN_ERROR.match(line):
                return line[:300]
    rest = [line for line in lines(stderr) if not _NOT_AN_ERROR.match(line)]
    return rest[-1][:300] if rest else None


_GAVE_UP = re.compile(rf"^{re.escape(LOG_PREFIX)} \S+ (?P<said>.*\b(?:cannot run|giving up)\b.*)$")
"""The supervisor's line when it could not start the server at all (``cannot run <argv0>:
<reason>; giving up``): the only place that reason is written."""


def last_words(path: Path | str, scan: int = 60) -> str:
    """For a one-line message about a process that exited: ``last error: '<the exception line of
    its last traceback>'`` when its log ends with one (the last line is often a shutdown
    warning after it), or the supervisor's ``cannot run …; giving up``; else ``last log line:
    '<its last line>'``. Only the current run counts: what follows the last start header
    (``=== genwire: starting <name>``), never an earlier run's traceback."""
    try:
        text = _tail_lines(path)
    except OSError:
        return "last log line: ''"
    lines = [line.rstrip() for line in text if line.strip()]
    starts = [at for at, line in enumerate(lines) if line.startswith(START_HEADER)]
    if starts:
        lines = lines[starts[-1] + 1 :]
    own = [
        at
        for at, line in enumerate(lines)
        if not line.startswith(LOG_PREFIX) or _GAVE_UP.match(line)
    ]
    for at in reversed(own[-scan:]):
        line = lines[at].strip()
        gave_up = _GAVE_UP.match(line)
        if gave_up:
            return f"last error: {gave_up['said'][:300]!r}"
        if _EXCEPTION_LINE.match(line):
            found = _VALIDATION_ERROR.search(line)
            if found:  # what was refused is on the lines below it
                details = _validation_details(lines[at + 1 :], int(found.group(1)))
                return f"last error: {' '.join([line, *details])[:600]!r}"
            return f"last error: {line[:300]!r}"
    return f"last log line: {(lines[own[-1]].strip() if own else '')[:300]!r}"


_VALIDATION_ERROR = re.compile(r"ValidationError: (\d+) validation errors? for ")
"""pydantic's exception line (a setting refused at start); what was refused follows it."""


def _validation_details(lines: list[str], errors: int) -> list[str]:
    """The ``errors`` entries pydantic writes under its exception line, each a field's name
    (unindented) and its message (indented two spaces) without the ``[type=…,
    input_value=…]`` part (the values may be secrets); not its links (four spaces), nor
    anything after the last entry (a shutdown's warnings, the next run's log)."""
    details: list[str] = []
    messages = 0
    for line in lines:
        if line.startswith("    "):  # "For further information visit …"
            continue
        if line.startswith("  "):
            details.append(line.strip().split(" [type=", 1)[0])
            messages += 1
        elif messages < errors and not line.startswith(LOG_PREFIX):
            details.append(line.strip())  # the field's name (a model error has none)
        if messages >= errors or line.startswith(LOG_PREFIX):
            break
    return details


def wait_until(
    check: Callable[[], bool],
    *,
    what: str,
    timeout_s: float,
    still_running: Callable[[], bool] | None = None,
    log: Path | str | None = None,
    interval_s: float = 0.25,
) -> None:
    """Poll ``check`` until it holds; fail at once if the process died, else after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return
        if still_running is not None and not still_running():
            # One last look: a process may exit right after becoming healthy (e.g. a daemon).
            if check():
                return
            where = f"; last log line: {log_tail(log)!r}; full log: {log}" if log else ""
            raise StackError(f"{what} exited while starting{where}")
        if time.monotonic() >= deadline:
            where = f"; see {log}" if log else ""
            raise StackError(f"{what} did not become healthy within {timeout_s:.0f} s{where}")
        time.sleep(interval_s)
