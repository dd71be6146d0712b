"""A fresh start is ready only when its own server answers: a stranger on the port (a distro
``redis-server`` that apt's postinst started) must not pass for ours while ours crash-loops
with "Address already in use", and a server that appears while genwire installs is found
before the start, not after it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from genwire_stack import StackError, ensure_up, manager, status
from genwire_stack.component import Readiness
from genwire_stack.health import http_status, wait_until
from genwire_stack.paths import StackPaths
from genwire_stack.process import PidRecord, read_record, start_ticks
from genwire_stack.statefile import SupervisorState, state_file, write_state

from genwire.settings import CommonSettings
from tests.stack.support import HttpServer


@pytest.fixture
def strangers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Servers the test starts itself, playing someone else's; stopped at the end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait(5)


def _stranger(port: int, started: list[subprocess.Popen[bytes]]) -> None:
    """An HTTP server on ``port`` that genwire did not start (answers like ours would)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started.append(proc)
    wait_until(
        lambda: http_status(f"http://127.0.0.1:{port}/", timeout_s=0.5) == 200,
        what="the stranger",
        timeout_s=20,
    )


class AlwaysReady(HttpServer):
    """Its probe is answered, by whoever holds the port."""

    def readiness(self) -> Readiness:
        return Readiness(True, answered=True)


def test_a_fresh_start_whose_server_keeps_exiting_is_not_ready_while_a_stranger_answers(
    home: tuple[StackPaths, CommonSettings],
) -> None:
    """The supervisor (a stand-in process here) runs and its state says its server exited 3
    times; the probe is answered all the same."""
    paths, settings = home
    component = AlwaysReady(paths, settings, "redis", phase=1)
    supervisor = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        record = PidRecord(
            "redis",
            supervisor.pid,
            [],
            str(component.log),
            time.time(),
            start_ticks(supervisor.pid),
            supervised=True,
        )
        write_state(
            state_file(paths.run, "redis"),
            SupervisorState(
                name="redis",
                supervisor_pid=supervisor.pid,
                phase="backoff",
                restarts=3,
                last_exit="exit code 1",
            ),
        )
        component.log.parent.mkdir(parents=True)
        component.log.write_text(
            "=== genwire: starting redis at 2026-12-06T12:00:00+0000: redis-server\n"
            "# Could not create server TCP listening socket 127.0.0.1:6379: bind: Address "
            "already in use\n"
            "=== genwire supervisor: 2026-12-06T12:00:00+0000 redis: pid 12 ended with exit "
            "code 1 after 0.0 s; restart 3 in 4 s\n"
        )
        with pytest.raises(StackError) as caught:
            manager._await_ready(component, record, paths, fresh=True)
    finally:
        supervisor.kill()
        supervisor.wait(5)
    message = str(caught.value)
    assert message.startswith("redis (test http server) exited while starting (exit code 1)")
    assert "Address already in use" in message and "\n" not in message


def test_up_fails_when_its_own_server_cannot_bind_while_a_stranger_answers(
    home: tuple[StackPaths, CommonSettings], strangers: list[subprocess.Popen[bytes]]
) -> None:
    """The stranger takes the port after the port checks (here: while the component is
    prepared), so genwire's supervisor starts a server that fails to bind, again and again."""
    paths, settings = home

    class Squatted(HttpServer):
        def prepare(self) -> None:
            _stranger(self.port, strangers)

    web = Squatted(paths, settings, "web", phase=1)
    with pytest.raises(StackError) as caught:
        ensure_up(settings=settings, catalog={"web": web}, model=False)
    message = str(caught.value)
    assert message.startswith("web (test http server) exited while starting (exit code 1)")
    assert "Address already in use" in message and "\n" not in message
    assert read_record(paths.run, "web") is None, "what this run started is stopped again"
    assert strangers[0].poll() is None, "the stranger is left alone"


def test_a_server_that_the_install_started_on_the_port_stops_up_before_the_start(
    home: tuple[StackPaths, CommonSettings], strangers: list[subprocess.Popen[bytes]]
) -> None:
    """The port is checked again after installing: apt's postinst starts the distro's server."""
    paths, settings = home

    class InstalledAndStarted(HttpServer):
        done = False

        def installed(self) -> bool:
            return self.done

        def install(self) -> None:
            _stranger(self.port, strangers)
            self.done = True

    web = InstalledAndStarted(paths, settings, "web", phase=1)
    with pytest.raises(StackError) as caught:
        ensure_up(settings=settings, catalog={"web": web}, model=False)
    message = str(caught.value)
    assert f"port {web.port} (web http) is already in use by pid {strangers[0].pid}" in message
    assert "genwire did not start" in message
    assert not web.log.exists() or "=== genwire: starting web" not in web.log.read_text()
    assert read_record(paths.run, "web") is None


def test_an_adoptable_server_that_the_install_started_is_reused_as_external(
    home: tuple[StackPaths, CommonSettings], strangers: list[subprocess.Popen[bytes]]
) -> None:
    """As an existing Redis found before the install is: reused, shown as external, not
    started a second time."""
    paths, settings = home

    class DistroServer(HttpServer):
        adoptable = True
        done = False

        def installed(self) -> bool:
            return self.done

        def install(self) -> None:
            _stranger(self.port, strangers)
            self.done = True

    web = DistroServer(paths, settings, "web", phase=1)
    said: list[str] = []
    rows = ensure_up(settings=settings, catalog={"web": web}, model=False, out=said.append)
    assert [(r.name, r.state) for r in rows] == [("web", "external")]
    assert read_record(paths.run, "web") is None
    assert any(line.startswith("web: reusing the one already running") for line in said), said


def test_an_adoptable_server_running_before_up_is_still_reused(
    home: tuple[StackPaths, CommonSettings], strangers: list[subprocess.Popen[bytes]]
) -> None:
    paths, settings = home
    web = HttpServer(paths, settings, "web", phase=1)
    web.adoptable = True
    _stranger(web.port, strangers)
    rows = ensure_up(settings=settings, catalog={"web": web}, model=False)
    assert [(r.name, r.state) for r in rows] == [("web", "external")]
    assert status(settings=settings, catalog={"web": web})[0].state == "external"


def test_a_stale_state_file_is_not_read_as_a_fresh_starts_exits(
    home: tuple[StackPaths, CommonSettings],
) -> None:
    """An earlier run's state (3 restarts) left in the run dir: the new start is judged on its
    own, not failed at once."""
    paths, settings = home
    web = HttpServer(paths, settings, "web", phase=1)
    write_state(
        state_file(paths.run, "web"),
        SupervisorState(name="web", supervisor_pid=1, phase="backoff", restarts=3),
    )
    rows = ensure_up(settings=settings, catalog={"web": web}, model=False)
    assert [(r.name, r.state, r.restarts) for r in rows] == [("web", "running", 0)]
    assert http_status(f"http://127.0.0.1:{web.port}/") == 200


def test_a_stranger_answering_while_our_server_still_starts_is_not_taken_for_it(
    home: tuple[StackPaths, CommonSettings], strangers: list[subprocess.Popen[bytes]]
) -> None:
    """Our server runs but has not bound yet (a JVM loading): the probe's answer comes from a
    process outside its supervisor's group, so it is not taken as ours."""
    paths, settings = home

    class Slow(HttpServer):
        def command(self) -> list[str]:
            return [sys.executable, "-c", "import time; time.sleep(600)"]

        def prepare(self) -> None:
            _stranger(self.port, strangers)

    web = Slow(paths, settings, "web", phase=1)
    web.start_timeout_s = 2.0
    with pytest.raises(StackError) as caught:
        ensure_up(settings=settings, catalog={"web": web}, model=False)
    message = str(caught.value)
    assert message.startswith("web (test http server) did not start within 2 s: its port answers")
    assert f"port {web.port} is held by pid {strangers[0].pid}" in message
    assert "which genwire did not start" in message and "\n" not in message
    assert read_record(paths.run, "web") is None


def test_a_stranger_whose_process_genwire_cannot_see_is_not_taken_for_ours(
    home: tuple[StackPaths, CommonSettings],
    strangers: list[subprocess.Popen[bytes]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A non-root `genwire up` cannot read another user's fds (a distro ``redis-server``,
    ``docker-proxy``): ``port_holders`` finds nobody, though the port's listener is there in
    the kernel's table. Our server (a JVM, say) takes 2 s to try its bind and fails: the
    stranger's answers meanwhile must not make the start look ready."""
    paths, settings = home
    monkeypatch.setattr(manager, "port_holders", lambda port: [])

    class SlowBind(HttpServer):
        def command(self) -> list[str]:
            return [
                sys.executable,
                "-c",
                "import sys, time; time.sleep(2); "
                "print('bind: Address already in use', flush=True); sys.exit(1)",
            ]

        def prepare(self) -> None:
            _stranger(self.port, strangers)

    web = SlowBind(paths, settings, "web", phase=1)
    with pytest.raises(StackError) as caught:
        ensure_up(settings=settings, catalog={"web": web}, model=False)
    message = str(caught.value)
    assert message.startswith("web (test http server) exited while starting (exit code 1)")
    assert "Address already in use" in message
    assert read_record(paths.run, "web") is None


def test_whose_listener_it_is(
    home: tuple[StackPaths, CommonSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listener of our group passes; one nobody can be seen holding does not; a port nothing
    listens on (or tables that cannot be read) claims nothing."""
    paths, settings = home
    web = HttpServer(paths, settings, "web", phase=1)
    ours = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        # Unsupervised: its own pid leads the group whose listeners count as ours.
        record = PidRecord("web", ours.pid, [], str(web.log), time.time(), start_ticks(ours.pid))
        monkeypatch.setattr(manager, "port_listened", lambda port: True)
        monkeypatch.setattr(manager, "port_holders", lambda port: [ours.pid])
        assert manager._not_ours(web, record, None) is None
        monkeypatch.setattr(manager, "port_holders", lambda port: [])
        assert manager._not_ours(web, record, None) == (
            f"port {web.port} is held by a process genwire cannot see (another user's), which "
            "genwire did not start"
        )
        # One of ours keeps its fds from us (non-dumpable: setuid, file capabilities): its
        # listener cannot be told from a stranger's, so nothing is claimed.
        monkeypatch.setattr(manager, "group_hides_fds", lambda pgid: pgid == ours.pid)
        assert manager._not_ours(web, record, None) is None
        monkeypatch.setattr(manager, "group_hides_fds", lambda pgid: False)
        monkeypatch.setattr(manager, "port_listened", lambda port: False)
        assert manager._not_ours(web, record, None) is None
    finally:
        ours.kill()
        ours.wait(5)


def test_a_group_whose_process_is_readable_hides_nothing() -> None:
    """Our own processes' fds are readable (dumpable): ``group_hides_fds`` says so, and a
    group nobody is in hides nothing either."""
    from genwire_stack.process import group_hides_fds

    assert group_hides_fds(os.getpgid(os.getpid())) is False
    assert group_hides_fds(2**22 + 12345) is False
