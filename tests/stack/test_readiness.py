"""A component that runs but is not ready is shown as such, and ``genwire up`` says so.

Stand-in services (a small HTTP server answering ``/readyz`` like genwire's services, 503 with
``{"ready": false, "failed", "reasons"}``) in a temporary GENWIRE_HOME on free ports.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
from genwire_stack import StackError, down, ensure_up, format_table, status
from genwire_stack.components import Readiness, readyz
from genwire_stack.health import wait_until
from genwire_stack.manager import ComponentStatus
from genwire_stack.paths import StackPaths
from genwire_stack.process import read_record
from genwire_stack.statefile import SupervisorState, read_state, state_file

from genwire.settings import CommonSettings
from tests.stack.support import DummyService

STALLED = "partition genwire.prepared[1] stalled: committed offset unchanged for 31 s"


def test_status_shows_a_running_service_that_is_not_ready(
    home: tuple[StackPaths, CommonSettings],
) -> None:
    paths, settings = home
    svc = DummyService(paths, settings)
    catalog = {svc.name: svc}
    svc.set_verdict(True)
    ensure_up(settings=settings, catalog=catalog, model=False)

    svc.set_verdict(False, [STALLED, "dependency redis down for 12 s"])
    row = status(settings=settings, catalog=catalog)[0]
    assert (row.state, row.reason) == ("not-ready", STALLED)
    assert row.pid is not None and row.restarts == 0
    table = format_table([row])
    assert f"dummy: not-ready: {STALLED}" in table.splitlines()

    svc.set_verdict(True)
    assert status(settings=settings, catalog=catalog)[0].state == "running"
    down(settings=settings, catalog=catalog)


def test_readyz_reasons_failed_and_bare_503(home: tuple[StackPaths, CommonSettings]) -> None:
    paths, settings = home
    svc = DummyService(paths, settings)
    ensure_up(settings=settings, catalog={svc.name: svc}, model=False)
    url = f"http://127.0.0.1:{svc.port}/readyz"
    try:
        assert readyz(url) == Readiness(True, answered=True)
        svc.verdict_file.write_text('{"ready": false, "failed": "consume:x: boom\\nline 2"}')
        assert readyz(url) == Readiness(False, answered=True, reason="consume:x: boom line 2")
        svc.verdict_file.write_text('{"ready": false, "failed": null}')
        assert readyz(url) == Readiness(False, answered=True, reason="HTTP 503")
    finally:
        down(settings=settings, catalog={svc.name: svc})
    assert readyz(url) == Readiness(False, answered=False)


def test_up_fails_naming_a_service_that_never_gets_ready(
    home: tuple[StackPaths, CommonSettings],
) -> None:
    paths, settings = home
    svc = DummyService(paths, settings)
    svc.start_timeout_s = 3.0
    svc.set_verdict(False, [STALLED])
    with pytest.raises(StackError) as caught:
        ensure_up(settings=settings, catalog={svc.name: svc}, model=False)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"dummy runs but is not ready after 3 s: {STALLED}; see "), message
    assert read_record(paths.run, svc.name) is None, "what this run started was stopped again"


def test_up_does_not_pass_over_a_running_service_that_is_not_ready(
    home: tuple[StackPaths, CommonSettings],
) -> None:
    """Already running (reused), but not ready: a bounded wait, then one line; it keeps running."""
    paths, settings = home
    svc = DummyService(paths, settings)
    catalog = {svc.name: svc}
    svc.set_verdict(True)
    ensure_up(settings=settings, catalog=catalog, model=False)
    svc.set_verdict(False, [STALLED])
    svc.start_timeout_s = 2.0
    expected = re.escape(f"dummy runs but is not ready after 2 s: {STALLED}; see ")
    with pytest.raises(StackError, match=expected):
        ensure_up(settings=settings, catalog=catalog, model=False)
    record = read_record(paths.run, svc.name)
    assert record is not None and record.alive(), "a reused component is not stopped"
    svc.set_verdict(True)
    rows = ensure_up(settings=settings, catalog=catalog, model=False)
    assert [r.state for r in rows] == ["running"]
    down(settings=settings, catalog=catalog)


def test_up_fails_on_a_service_that_keeps_exiting(home: tuple[StackPaths, CommonSettings]) -> None:
    """Running under its supervisor, but crashing over and over: `up` names the exits."""
    paths, settings = home
    svc = DummyService(paths, settings)
    catalog = {svc.name: svc}
    svc.set_verdict(True)
    rows = ensure_up(settings=settings, catalog=catalog, model=False)
    pid = rows[0].pid
    assert pid is not None
    svc.set_verdict(False, exit_code=2)  # every start from now on gives up at once
    os.kill(pid, signal.SIGKILL)
    svc.start_timeout_s = 4.0
    with pytest.raises(StackError) as caught:
        ensure_up(settings=settings, catalog=catalog, model=False)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("dummy keeps exiting ("), message
    assert "last: exit code 2" in message and "'fatal: gave up'" in message
    row = status(settings=settings, catalog=catalog)[0]
    assert row.state == "restarting" and row.restarts is not None and row.restarts >= 2, row
    svc.set_verdict(True)
    wait_until(
        lambda: status(settings=settings, catalog=catalog)[0].state == "running",
        what="back once it stops giving up",
        timeout_s=30,
    )
    down(settings=settings, catalog=catalog)


def test_a_service_stuck_not_ready_is_restarted_in_the_end(
    home: tuple[StackPaths, CommonSettings],
) -> None:
    """The supervisor's last resort (services: 600 s, here 2 s) for one that never exits."""
    paths, settings = home
    svc = DummyService(paths, settings)
    svc.unready_restart_s = 2.0
    catalog = {svc.name: svc}
    svc.set_verdict(True)
    rows = ensure_up(settings=settings, catalog=catalog, model=False)
    pid = rows[0].pid
    time.sleep(1.5)
    assert status(settings=settings, catalog=catalog)[0].restarts == 0, "ready: left alone"
    svc.set_verdict(False, [STALLED])
    wait_until(
        lambda: status(settings=settings, catalog=catalog)[0].restarts == 1,
        what="a restart for being stuck",
        timeout_s=15,
        interval_s=0.1,
    )
    svc.set_verdict(True)
    state = supervisor_state_of(paths)
    assert state.last_exit is not None
    # Not ready for at least the limit (the probes' spacing and a busy machine add to it).
    unready = re.search(r"stopped: not ready for (\d+) s", state.last_exit)
    assert unready is not None and int(unready.group(1)) >= 2, state.last_exit
    assert STALLED in state.last_exit
    wait_until(
        lambda: status(settings=settings, catalog=catalog)[0].state == "running",
        what="running again",
        timeout_s=15,
    )
    row = status(settings=settings, catalog=catalog)[0]
    assert row.pid != pid and row.restarts == 1
    down(settings=settings, catalog=catalog)


def supervisor_state_of(paths: StackPaths) -> SupervisorState:
    state = read_state(state_file(paths.run, "dummy"))
    assert state is not None
    return state


def test_status_rows_carry_reason_and_restarts() -> None:
    row = ComponentStatus("x", "t", "restarting", None, "http:1", "/l", "exit code 1", 3, 42)
    lines = format_table([row]).splitlines()
    assert lines[0].split() == ["component", "state", "pid", "restarts", "endpoints", "log"]
    assert lines[1].split() == ["x", "restarting", "-", "3", "http:1", "/l"]
    assert lines[2] == "x: restarting: exit code 1"
