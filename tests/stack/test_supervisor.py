"""The supervisor every component runs under: restarts, backoff, stopping, no leftovers.

Real processes throughout: the supervisor (``python -m genwire_stack.supervise``) runs small
Python children in a temporary run dir, and the stack manager runs stand-in components in a
temporary GENWIRE_HOME, so nothing here touches the shared stack; the last tests SIGKILL a real
service and Triton of the shared stack and wait for them to come back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from genwire_stack import (
    DEFAULT_MODEL,
    child_pid,
    down,
    ensure_up,
    format_table,
    restart_count,
    status,
    supervisor_state,
)
from genwire_stack.components import SERVICE_PORTS
from genwire_stack.health import http_status, wait_until
from genwire_stack.paths import StackPaths
from genwire_stack.process import pid_alive, read_record
from genwire_stack.statefile import SupervisorState, read_state, state_file
from genwire_stack.supervise import LOG_PREFIX

from genwire.settings import CommonSettings
from tests.stack.support import HttpServer, free_port


class Supervised:
    """``python -m genwire_stack.supervise`` started by hand, as ``genwire up`` does."""

    def __init__(self, tmp: Path, child: list[str], *extra: str) -> None:
        self.state_path = tmp / "run" / "child.state.json"
        self.log = tmp / "child.log"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "genwire_stack.supervise",
                    "--name",
                    "child",
                    "--state",
                    str(self.state_path),
                    *extra,
                    "--",
                    *child,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(self.state_path.exists, what="the supervisor's state", timeout_s=10)

    def state(self) -> SupervisorState:
        state = read_state(self.state_path)
        assert state is not None, f"no state file; log: {self.log.read_text()}"
        return state

    def wait(self, what: str, check: object, timeout_s: float = 15.0) -> None:
        assert callable(check)
        wait_until(lambda: bool(check()), what=what, timeout_s=timeout_s, interval_s=0.05)

    def child(self) -> int:
        self.wait("a child", lambda: self.state().child_pid)
        pid = self.state().child_pid
        assert pid is not None
        return pid

    def said(self, line: str) -> bool:
        return line in self.log.read_text().splitlines()

    def restart_lines(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if line.startswith(LOG_PREFIX)]

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[list[Supervised]]:
    started: list[Supervised] = []
    yield started
    for one in started:
        one.close()


SLEEPER = [sys.executable, "-c", "import time; print('child up', flush=True); time.sleep(600)"]


def test_a_killed_child_is_restarted_and_counted(
    tmp_path: Path, supervised: list[Supervised]
) -> None:
    sup = Supervised(tmp_path, SLEEPER)
    supervised.append(sup)
    first = sup.child()
    assert sup.state().restarts == 0 and sup.state().phase == "running"

    os.kill(first, signal.SIGKILL)
    sup.wait("the restart", lambda: sup.state().child_pid not in (None, first))
    state = sup.state()
    assert state.restarts == 1
    assert state.last_exit == "signal 9 (SIGKILL)"
    assert state.child_pid is not None and pid_alive(state.child_pid)
    assert sup.proc.poll() is None, "the supervisor itself keeps running"
    lines = sup.restart_lines()
    assert len(lines) == 1, lines  # one line per restart
    assert f"pid {first} ended with signal 9 (SIGKILL)" in lines[0]
    assert "restart 1 in 1 s" in lines[0]
    # The state file is replaced atomically: never a temporary file left beside it.
    assert [p.name for p in sup.state_path.parent.iterdir()] == [sup.state_path.name]


def _wakeups(pid: int) -> int:
    """Voluntary context switches of a single-threaded process: how often it went to sleep."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError(f"no voluntary_ctxt_switches for pid {pid}")


def test_an_idle_supervisor_sleeps_until_a_signal_and_still_restarts_at_once(
    tmp_path: Path, supervised: list[Supervised]
) -> None:
    """It waits on signals (SIGCHLD, a stop), not on a timer: polling every 0.2 s, it woke 10
    times in these 2 s. A child's death still wakes it."""
    sup = Supervised(tmp_path, SLEEPER)
    supervised.append(sup)
    first = sup.child()
    sup.wait("the child's start", lambda: sup.said("child up"))
    time.sleep(0.5)  # settled: the state written, the child's start done
    before = _wakeups(sup.proc.pid)
    time.sleep(2.0)
    assert _wakeups(sup.proc.pid) - before <= 2
    os.kill(first, signal.SIGKILL)
    sup.wait("the restart", lambda: sup.state().child_pid not in (None, first))
    assert sup.state().restarts == 1


def test_backoff_doubles_up_to_the_cap_and_resets_after_a_healthy_run(
    tmp_path: Path, supervised: list[Supervised]
) -> None:
    flag = tmp_path / "healthy"
    # Exits at once with code 3 until the flag exists, then stays up for 1.5 s before exiting.
    child = [
        sys.executable,
        "-c",
        f"import os, sys, time\nif os.path.exists({str(flag)!r}): time.sleep(1.5)\nsys.exit(3)",
    ]
    sup = Supervised(
        tmp_path,
        child,
        "--backoff-first",
        "0.2",
        "--backoff-max",
        "0.8",
        "--healthy-after",
        "1",
    )
    supervised.append(sup)
    sup.wait("four restarts", lambda: sup.state().restarts >= 4)
    delays = [line.rsplit(" in ", 1)[1] for line in sup.restart_lines()]
    assert delays[:4] == ["0.2 s", "0.4 s", "0.8 s", "0.8 s"], delays
    assert sup.state().last_exit == "exit code 3"

    flag.touch()  # the next child runs 1.5 s (> --healthy-after): the backoff starts over
    seen = len(sup.restart_lines())
    sup.wait("a healthy run's exit", lambda: "after 1." in sup.restart_lines()[-1], 10)
    healthy = next(line for line in sup.restart_lines()[seen:] if "after 1." in line)
    assert healthy.endswith("in 0.2 s"), healthy


def test_stop_passes_sigterm_on_and_does_not_restart(
    tmp_path: Path, supervised: list[Supervised]
) -> None:
    marker = tmp_path / "got-sigterm"
    child = [
        sys.executable,
        "-c",
        "import signal, sys, time\n"
        f"def bye(*_):\n    open({str(marker)!r}, 'w').close()\n    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\nprint('up', flush=True)\ntime.sleep(600)",
    ]
    sup = Supervised(tmp_path, child)
    supervised.append(sup)
    pid = sup.child()
    # Its handler installed (it says so after): a child's start can take > 0.3 s when loaded.
    sup.wait("the child's handler", lambda: sup.said("up"))
    os.kill(sup.proc.pid, signal.SIGTERM)  # the supervisor alone, as `genwire down` does
    assert sup.proc.wait(15) == 0
    assert marker.exists(), "the child never got SIGTERM"
    assert not pid_alive(pid)
    state = sup.state()
    assert state.phase == "stopped" and state.restarts == 0 and state.child_pid is None
    assert sup.restart_lines() == []


def test_a_stuck_child_is_killed_after_the_stop_timeout(
    tmp_path: Path, supervised: list[Supervised]
) -> None:
    child = [
        sys.executable,
        "-c",
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('up', flush=True)\ntime.sleep(600)",
    ]
    sup = Supervised(tmp_path, child, "--stop-timeout", "1")
    supervised.append(sup)
    pid = sup.child()
    sup.wait("the child ignoring SIGTERM", lambda: sup.said("up"))  # else SIGTERM ends it
    began = time.monotonic()
    os.kill(sup.proc.pid, signal.SIGTERM)
    assert sup.proc.wait(10) == 0
    assert 0.9 < time.monotonic() - began < 5
    wait_until(lambda: not pid_alive(pid), what="the stuck child gone", timeout_s=5)


def test_a_dead_childs_own_children_do_not_linger(
    tmp_path: Path, supervised: list[Supervised]
) -> None:
    grandchild_file = tmp_path / "grandchild.pid"
    # The child starts a grandchild (as tritonserver starts its Python stubs), then waits.
    child = [
        sys.executable,
        "-c",
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(grandchild_file)!r}, 'w').write(str(p.pid))\ntime.sleep(600)",
    ]
    sup = Supervised(tmp_path, child)
    supervised.append(sup)
    first = sup.child()
    wait_until(grandchild_file.exists, what="the grandchild", timeout_s=10)
    grandchild = int(grandchild_file.read_text())
    assert pid_alive(grandchild)
    os.kill(first, signal.SIGKILL)  # the grandchild is orphaned: the supervisor adopts it
    wait_until(lambda: not pid_alive(grandchild), what="the orphan killed", timeout_s=10)


def test_a_supervisor_killed_outright_takes_its_child_along(
    tmp_path: Path, supervised: list[Supervised]
) -> None:
    sup = Supervised(tmp_path, SLEEPER)
    supervised.append(sup)
    pid = sup.child()
    os.kill(sup.proc.pid, signal.SIGKILL)  # no chance to stop the child: PDEATHSIG does
    sup.proc.wait(5)
    wait_until(lambda: not pid_alive(pid), what="the orphaned child gone", timeout_s=10)


def test_after_a_restart_the_ready_step_runs_once_ready(
    tmp_path: Path, supervised: list[Supervised]
) -> None:
    port = free_port()
    done = tmp_path / "after-ready-ran"
    step = [sys.executable, "-c", f"open({str(done)!r}, 'a').write('ran\\n')"]
    server = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    sup = Supervised(
        tmp_path,
        server,
        "--ready-url",
        f"http://127.0.0.1:{port}/",
        "--after-ready-json",
        json.dumps(step),
    )
    supervised.append(sup)
    first = sup.child()
    wait_until(lambda: http_status(f"http://127.0.0.1:{port}/") == 200, what="up", timeout_s=10)
    time.sleep(0.5)
    assert not done.exists(), "the first start is genwire up's business, not the supervisor's"
    os.kill(first, signal.SIGKILL)
    wait_until(done.exists, what="the after-restart step", timeout_s=15)
    time.sleep(0.5)
    assert done.read_text() == "ran\n"
    assert any("after-restart step exited with code 0" in x for x in sup.restart_lines())


def test_restart_arguments_are_added_on_restarts_only(
    tmp_path: Path, supervised: list[Supervised]
) -> None:
    # Triton's restart loads the default model as it starts (`--load-model`); `genwire up`'s
    # first start does not (it loads it itself, outside the stack's lock, when asked to).
    seen = tmp_path / "argv"
    child = [
        sys.executable,
        "-c",
        f"import sys, time; open({str(seen)!r}, 'a').write(repr(sys.argv[1:]) + '\\n'); "
        "time.sleep(600)",
    ]
    sup = Supervised(tmp_path, child, "--restart-args-json", json.dumps(["--load-model", "m"]))
    supervised.append(sup)
    first = sup.child()
    sup.wait("the first start", lambda: seen.exists() and seen.read_text())
    os.kill(first, signal.SIGKILL)
    sup.wait("the restart", lambda: len(seen.read_text().splitlines()) == 2)
    assert seen.read_text().splitlines() == ["[]", "['--load-model', 'm']"]


def test_the_manager_runs_components_supervised(home: tuple[StackPaths, CommonSettings]) -> None:
    paths, settings = home
    web = HttpServer(paths, settings, "web", phase=1)
    catalog = {"web": web}
    rows = ensure_up(settings=settings, catalog=catalog, model=False)
    record = read_record(paths.run, "web")
    assert record is not None and record.supervised
    pid = rows[0].pid
    assert pid is not None and pid != record.pid, "the row shows the server, not its supervisor"
    assert rows[0].supervisor_pid == record.pid and rows[0].restarts == 0
    assert os.getpgid(pid) == record.pid, "the server runs in its supervisor's process group"
    assert child_pid("web", settings) == pid

    os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: status(settings=settings, catalog=catalog)[0].state == "restarting",
        what="restarting",
        timeout_s=5,
        interval_s=0.05,
    )
    row = status(settings=settings, catalog=catalog)[0]
    assert row.reason is not None and "signal 9 (SIGKILL)" in row.reason
    wait_until(
        lambda: status(settings=settings, catalog=catalog)[0].state == "running",
        what="running again",
        timeout_s=15,
    )
    row = status(settings=settings, catalog=catalog)[0]
    assert row.restarts == 1 and row.pid not in (None, pid)
    assert "restarts" in format_table([row]).splitlines()[0]

    assert down(settings=settings, catalog=catalog) == ["web"]
    assert row.pid is not None and not pid_alive(row.pid) and not pid_alive(record.pid)
    assert not state_file(paths.run, "web").exists()


def test_down_stops_what_the_run_dir_records_beyond_the_layout(
    home: tuple[StackPaths, CommonSettings],
) -> None:
    """An instance of an earlier scale (or a helper's) is stopped by a plain ``down()``."""
    paths, settings = home
    web = HttpServer(paths, settings, "preprocess-7", phase=4)
    rows = ensure_up(settings=settings, catalog={"preprocess-7": web}, model=False)
    pid = rows[0].pid
    assert pid is not None
    assert down(settings=settings) == ["preprocess-7"]
    assert not pid_alive(pid) and read_record(paths.run, "preprocess-7") is None


# -- the shared stack: a real service and Triton come back by themselves -------------------------


def test_a_killed_service_comes_back_ready_by_itself(stack: CommonSettings) -> None:
    name = "postprocess"
    before = restart_count(name, stack)
    pid = child_pid(name, stack)
    assert before is not None and pid is not None, "services run under a supervisor"
    state = supervisor_state(name, stack)
    assert state is not None and state.child_pid == pid

    os.kill(pid, signal.SIGKILL)
    began = time.monotonic()
    url = f"http://127.0.0.1:{SERVICE_PORTS[name]}/readyz"
    wait_until(lambda: child_pid(name, stack) not in (None, pid), what="a new pid", timeout_s=10)
    wait_until(lambda: http_status(url) == 200, what=f"{name} ready again", timeout_s=90)
    took = time.monotonic() - began
    # At least this one restart (a restart runs the code on disk: a half-edited file in a
    # shared clone can add a few, each backed off and logged).
    after = restart_count(name, stack)
    assert after is not None and after >= before + 1
    row = next(r for r in status([name], settings=stack))
    assert row.state == "running" and row.restarts == after, row
    log = Path(row.log).read_text().splitlines()
    assert any(f"pid {pid} ended with signal 9 (SIGKILL)" in line for line in log[-200:])
    print(f"{name} ready again {took:.1f} s after SIGKILL")


@pytest.mark.slow
def test_a_killed_triton_comes_back_with_the_default_model_loaded(stack: CommonSettings) -> None:
    before = restart_count("triton", stack)
    pid = child_pid("triton", stack)
    assert before is not None and pid is not None
    base = f"http://{stack.triton_http_url}"

    os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: child_pid("triton", stack) not in (None, pid), what="a new Triton", timeout_s=15
    )

    def model_ready() -> bool:
        with httpx.Client(timeout=2, trust_env=False) as http:
            try:
                return http.get(f"{base}/v2/models/{DEFAULT_MODEL}/ready").status_code == 200
            except httpx.HTTPError:
                return False

    wait_until(model_ready, what=f"{DEFAULT_MODEL} loaded again", timeout_s=180)
    after = restart_count("triton", stack)
    assert after is not None and after >= before + 1
    # The services find it again (inference calls Triton on every request).
    ready = f"http://127.0.0.1:{SERVICE_PORTS['inference']}/readyz"
    wait_until(lambda: http_status(ready) == 200, what="inference ready", timeout_s=60)


def _nice_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def test_the_child_runs_below_the_supervisors_priority_with_nice(
    tmp_path: Path, supervised: list[Supervised]
) -> None:
    if _nice_of(os.getpid()) + 5 > 19:
        pytest.skip("this runner is already within 5 of the lowest priority (nice 19)")
    sup = Supervised(tmp_path, SLEEPER, "--nice", "5")
    supervised.append(sup)
    child = sup.child()
    assert _nice_of(child) == _nice_of(sup.proc.pid) + 5
    autogroup = Path(f"/proc/{child}/autogroup")
    refused = [line for line in sup.restart_lines() if "--nice" in line]
    if autogroup.exists() and not refused:  # the session's group, the supervisor's too
        assert autogroup.read_text().split()[-1] == "5"
        assert Path(f"/proc/{sup.proc.pid}/autogroup").read_text() == autogroup.read_text()
    os.kill(child, signal.SIGKILL)  # a restarted child is lowered again, not twice
    sup.wait("the restart", lambda: sup.state().child_pid not in (None, child))
    again = sup.child()
    assert _nice_of(again) == _nice_of(sup.proc.pid) + 5


def test_lowering_the_priority_never_stops_the_child_from_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from genwire_stack import supervise

    steps: list[int] = []
    monkeypatch.setattr(supervise.os, "nice", steps.append)
    supervise.lower_priority(0)
    supervise.lower_priority(7)
    assert steps == [7]

    def refused(step: int) -> int:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(supervise.os, "nice", refused)
    supervise.lower_priority(7)  # refused: the child starts all the same

    group = tmp_path / "autogroup"
    group.write_text("/autogroup-1 nice 0\n")
    monkeypatch.setattr(supervise.os, "getsid", lambda pid: -1)
    assert "not a session leader" in (supervise.lower_session_group(5, group) or "")
    assert group.read_text() == "/autogroup-1 nice 0\n"  # a caller's session left alone
    monkeypatch.setattr(supervise.os, "getsid", lambda pid: os.getpid())
    assert supervise.lower_session_group(5, group) is None
    assert group.read_text() == "5"
    assert supervise.lower_session_group(5, tmp_path / "none") is None  # no autogroups here
    monkeypatch.setattr(supervise.time, "sleep", lambda s: None)
    assert "not lowered" in (supervise.lower_session_group(5, tmp_path) or "")  # a directory


def test_the_stack_hands_triton_its_restart_arguments_through_the_supervisor(
    home: tuple[StackPaths, CommonSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    from genwire_stack import manager, supervise
    from genwire_stack.servers import Redis, Triton

    paths, settings = home
    launched: dict[str, list[str]] = {}

    def spawn(name: str, argv: list[str], **_: object) -> object:
        launched[name] = list(argv)
        raise _Launched

    monkeypatch.setattr(manager, "spawn", spawn)
    for component in (Triton(paths, settings), Redis(paths, settings)):
        with pytest.raises(_Launched):
            manager._launch(component, paths)
    restart_args, command = _as_the_supervisor_reads_it(supervise, launched["triton"])
    assert restart_args == ["--load-model", DEFAULT_MODEL, "--exit-on-error", "false"]
    assert "--load-model" not in command  # the first start loads nothing (genwire up does)
    assert _as_the_supervisor_reads_it(supervise, launched["redis"])[0] == []


class _Launched(Exception):
    """What the stubbed ``spawn`` raises: the argv is all the test needs."""


def _as_the_supervisor_reads_it(module: Any, argv: list[str]) -> tuple[list[str], list[str]]:
    """(restart arguments, child command) of ``python -m genwire_stack.supervise ...``, as
    its own ``main`` parses them into a ``Supervisor``."""
    seen: list[Any] = []

    class Parsed(Exception):
        pass

    def run(self: Any) -> int:
        seen.append(self)
        raise Parsed

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module.Supervisor, "run", run)
        with pytest.raises(Parsed):
            module.main(argv[argv.index("genwire_stack.supervise") + 1 :])
    return seen[0].restart_args, seen[0].argv


def test_triton_is_supervised_below_the_other_components(
    home: tuple[StackPaths, CommonSettings],
) -> None:
    from genwire_stack.process import supervised_argv
    from genwire_stack.servers import Triton

    paths, settings = home
    assert Triton(paths, settings).nice() == 10  # the default
    assert Triton(paths, CommonSettings(home=paths.home, triton_nice=0)).nice() == 0
    argv = supervised_argv(
        "triton", ["tritonserver"], paths.run, python="py", stop_timeout_s=5, nice=10
    )
    assert argv[argv.index("--nice") + 1] == "10" and argv[-2:] == ["--", "tritonserver"]
    plain = supervised_argv("x", ["x"], paths.run, python="py", stop_timeout_s=5)
    assert "--nice" not in plain
    with pytest.raises(ValueError):
        CommonSettings(triton_nice=20)
