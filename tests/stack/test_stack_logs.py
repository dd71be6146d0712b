"""Component logs: capped (moved to ``<name>.log.1`` past the cap, at a start and while the
server runs), read from their end only for a one-line message, and quoted from the current
run only, the supervisor's ``cannot run …; giving up`` included."""

from __future__ import annotations

import os
import signal
import sys
import tracemalloc
from pathlib import Path

import pytest
from genwire_stack import StackError, ensure_up
from genwire_stack.health import last_words, log_tail, wait_until
from genwire_stack.paths import StackPaths
from genwire_stack.process import pid_alive, spawn, supervised_argv
from genwire_stack.statefile import read_state, state_file
from genwire_stack.supervise import LOG_CAP_BYTES, LOG_PREFIX

from genwire.settings import CommonSettings
from tests.stack.support import HttpServer

YESTERDAY = (
    "Traceback (most recent call last):\n"
    '  File "x.py", line 1, in <module>\n'
    "ConnectionRefusedError: [Errno 111] Connection refused (yesterday's run)\n"
    "=== genwire supervisor: 2026-12-05T10:00:00+0000 jaeger: stopping\n"
)


def test_last_words_reads_only_the_end_of_a_large_log(tmp_path: Path) -> None:
    """A 50 MB log: the message costs a few kB of memory, not the file (a 400 MB kafka.log
    took ~940 MB and 2.7 s to be read whole for one line)."""
    log = tmp_path / "kafka.log"
    line = b"[2026-12-06 12:00:00,000] INFO [Broker id=1] all is well, nothing to see here\n"
    block = line * (1024 * 1024 // len(line))
    with log.open("wb") as handle:
        while handle.tell() < 50 * 1024 * 1024:
            handle.write(block)
        handle.write(
            b"Traceback (most recent call last):\n"
            b"java.lang.RuntimeException: Failed to bind to 127.0.0.1:9092\n"
            b"=== genwire supervisor: 2026-12-06T12:00:00+0000 kafka: pid 9 ended with "
            b"exit code 1 after 0.5 s; restart 1 in 1 s\n"
        )
    tracemalloc.start()
    try:
        words = last_words(log)
        tail = log_tail(log)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert words == "last error: 'java.lang.RuntimeException: Failed to bind to 127.0.0.1:9092'"
    assert tail == "java.lang.RuntimeException: Failed to bind to 127.0.0.1:9092"
    assert peak < 5 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"


def test_a_log_over_the_cap_is_rotated_before_a_start(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "kafka.log"
    log.parent.mkdir()
    older = tmp_path / "logs" / "kafka.log.1"
    older.write_text("the run before last\n")
    with log.open("wb") as handle:
        handle.write(b"last run's output\n")
        handle.truncate(LOG_CAP_BYTES + 1)  # sparse: no 64 MiB written
    record = spawn(
        "kafka",
        [sys.executable, "-c", "print('started anew', flush=True)"],
        log_path=log,
        env=dict(os.environ),
        cwd=tmp_path,
    )
    wait_until(lambda: not pid_alive(record.pid), what="the stand-in to exit", timeout_s=20)
    assert older.stat().st_size == LOG_CAP_BYTES + 1, "the older .1 is replaced"
    assert older.open("rb").read(18) == b"last run's output\n"
    text = log.read_text()
    assert text.count("=== genwire: starting kafka") == 1 and "started anew" in text
    assert log.stat().st_size < 4096


def test_a_log_under_the_cap_is_appended_to(tmp_path: Path) -> None:
    log = tmp_path / "web.log"
    log.write_text("earlier run\n")
    record = spawn("web", [sys.executable, "-c", "pass"], log_path=log, env={}, cwd=tmp_path)
    wait_until(lambda: not pid_alive(record.pid), what="the stand-in to exit", timeout_s=20)
    assert log.read_text().startswith("earlier run\n")
    assert not (tmp_path / "web.log.1").exists()


def test_the_supervisor_caps_the_log_while_its_server_runs_and_at_a_restart(
    tmp_path: Path,
) -> None:
    """A server that runs for weeks writes on through the supervisor's log: past the cap the
    content moves to ``.1`` and the log starts again, while it runs; a restart checks too."""
    log = tmp_path / "logs" / "chatty.log"
    cap = 4096
    argv = supervised_argv(
        "chatty",
        [sys.executable, "-c", "import time; print('child up', flush=True); time.sleep(600)"],
        tmp_path / "run",
        python=sys.executable,
        stop_timeout_s=5,
    )
    at = argv.index("--")
    argv[at:at] = ["--log-cap", str(cap), "--backoff-first", "0.1"]
    record = spawn("chatty", argv, log_path=log, env=dict(os.environ), cwd=tmp_path)
    state_path = state_file(tmp_path / "run", "chatty")
    try:

        def child() -> int | None:
            state = read_state(state_path)
            return state.child_pid if state is not None else None

        wait_until(
            lambda: child() is not None and "child up" in log.read_text(),
            what="the child",
            timeout_s=20,
        )
        first = child()
        assert first is not None
        with log.open("ab") as handle:  # the server's months of output, in one go
            handle.write(b"x" * 100 + b"\n" + b"chatter\n" * (2 * cap // 8))
        os.kill(record.pid, signal.SIGCHLD)  # wakes it (else: within a minute)
        rotated = log.with_name("chatty.log.1")
        wait_until(rotated.exists, what="the log moved to .1", timeout_s=10)
        assert "chatter" in rotated.read_text() and "child up" in rotated.read_text()
        assert log.stat().st_size < cap
        assert f"{LOG_PREFIX}" in log.read_text() and "chatty.log.1" in log.read_text()

        with log.open("ab") as handle:
            handle.write(b"more chatter\n" * (2 * cap // 13))
        os.kill(first, signal.SIGKILL)  # a crash: the restart finds the log over the cap
        wait_until(
            lambda: child() not in (None, first) and "child up" in log.read_text(),
            what="the restarted child",
            timeout_s=20,
        )
        assert "more chatter" in rotated.read_text()
        assert log.stat().st_size < cap
    finally:
        os.killpg(record.pid, signal.SIGKILL)


def test_last_words_quote_only_the_current_run_and_the_supervisors_giving_up(
    tmp_path: Path,
) -> None:
    """Yesterday's traceback, a start header, then the supervisor could not run the binary at
    all: that reason, not yesterday's error."""
    log = tmp_path / "jaeger.log"
    log.write_text(
        YESTERDAY + "=== genwire: starting jaeger at 2026-12-06T12:00:00+0000: python -m "
        "genwire_stack.supervise --name jaeger -- rel/h/opt/jaeger-2.13.0/jaeger\n"
        "=== genwire supervisor: 2026-12-06T12:00:00+0000 jaeger: cannot run "
        "rel/h/opt/jaeger-2.13.0/jaeger: No such file or directory; giving up\n"
    )
    assert last_words(log) == (
        "last error: 'jaeger: cannot run rel/h/opt/jaeger-2.13.0/jaeger: No such file or "
        "directory; giving up'"
    )


def test_last_words_never_quote_an_earlier_runs_traceback(tmp_path: Path) -> None:
    log = tmp_path / "web.log"
    log.write_text(
        YESTERDAY + "\n=== genwire: starting web at 2026-12-06T12:00:00+0000: web\n"
        "listening on 8080\n"
        "shutting down: told to\n"
        "=== genwire supervisor: 2026-12-06T12:00:01+0000 web: pid 9 ended with exit code 0\n"
    )
    assert last_words(log) == "last log line: 'shutting down: told to'"
    log.write_text(YESTERDAY + "=== genwire: starting web at 2026-12-06T12:00:00+0000: web\n")
    assert last_words(log) == "last log line: ''"


class Missing(HttpServer):
    """Its binary is gone (an install into a path that does not exist)."""

    def command(self) -> list[str]:
        return [str(self.paths.opt / "jaeger-2.13.0" / "jaeger"), "--config", "x.yaml"]


def test_up_names_why_the_supervisor_could_not_run_the_server(
    home: tuple[StackPaths, CommonSettings],
) -> None:
    paths, settings = home
    jaeger = Missing(paths, settings, "jaeger", phase=1)
    jaeger.log.parent.mkdir(parents=True)
    jaeger.log.write_text(YESTERDAY)
    with pytest.raises(StackError) as caught:
        ensure_up(settings=settings, catalog={"jaeger": jaeger}, model=False)
    message = str(caught.value)
    assert message.startswith(
        "jaeger (test http server) exited while starting (cannot run: No such file or directory)"
    ), message
    assert f"cannot run {paths.opt}/jaeger-2.13.0/jaeger: No such file or directory" in message
    assert "yesterday" not in message and "\n" not in message


def test_a_pydantic_error_is_still_quoted_with_its_details(tmp_path: Path) -> None:
    """What tests/common/test_settings.py checks, within the current run's lines."""
    log = tmp_path / "preprocess.log"
    log.write_text(
        YESTERDAY + "=== genwire: starting preprocess at 2026-12-06T12:00:00+0000: x\n"
        "pydantic_core._pydantic_core.ValidationError: 1 validation error for Settings\n"
        "concurrency\n"
        "  Input should be greater than or equal to 1 [type=greater_than_equal, input_value=0]\n"
        "    For further information visit https://errors.pydantic.dev\n"
        f"{LOG_PREFIX} 2026-12-06T12:00:01+0000 preprocess: pid 9 ended with exit code 1\n"
    )
    assert last_words(log) == (
        "last error: 'pydantic_core._pydantic_core.ValidationError: 1 validation error for "
        "Settings concurrency Input should be greater than or equal to 1'"
    )


def test_an_unreadable_log_has_no_last_words(tmp_path: Path) -> None:
    assert last_words(tmp_path / "none.log") == "last log line: ''"
    assert log_tail(tmp_path / "none.log") == ""
