"""Start, reuse, stop and failure paths of the stack manager, on throwaway components.

These run real processes (small Python HTTP servers) in a temporary GENWIRE_HOME on free ports,
so they never touch the shared stack on the fixed ports.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from genwire_stack import StackError, down, ensure_up, status
from genwire_stack.components import Jaeger, Kafka
from genwire_stack.health import http_status, wait_until
from genwire_stack.paths import StackPaths
from genwire_stack.process import pid_alive, read_record

from genwire.settings import CommonSettings
from tests.stack.support import HttpServer, free_port


class Crasher(HttpServer):
    """Exits at once, as a misconfigured server would."""

    def command(self) -> list[str]:
        return [sys.executable, "-c", "import sys; print('bad config'); sys.exit(3)"]


@pytest.fixture
def home(tmp_path: Path) -> Iterator[tuple[StackPaths, CommonSettings]]:
    settings = CommonSettings(home=tmp_path)
    paths = StackPaths.from_settings(settings)
    yield paths, settings
    # Whatever a failed assertion left running in this home goes away with it.
    for record_file in paths.run.glob("*.pid"):
        record = read_record(paths.run, record_file.stem)
        if record is not None and record.alive():
            os.kill(record.pid, 9)


def test_up_reuses_running_and_down_stops_by_pid(home: tuple[StackPaths, CommonSettings]) -> None:
    paths, settings = home
    web = HttpServer(paths, settings, "web", phase=1)
    catalog = {"web": web}

    first = ensure_up(settings=settings, catalog=catalog, model=False)
    assert [(r.name, r.state) for r in first] == [("web", "running")]
    pid = first[0].pid
    assert pid is not None and pid_alive(pid)

    again = ensure_up(settings=settings, catalog=catalog, model=False)
    assert again[0].pid == pid, "a second up must reuse the running process"

    assert down(settings=settings, catalog=catalog) == ["web"]
    assert not pid_alive(pid)
    assert status(settings=settings, catalog=catalog)[0].state == "stopped"
    assert (paths.logs / "web.log").read_text().count("=== genwire: starting web") == 1


def test_a_failed_start_stops_what_this_run_started(
    home: tuple[StackPaths, CommonSettings],
) -> None:
    paths, settings = home
    web = HttpServer(paths, settings, "web", phase=1)
    bad = Crasher(paths, settings, "bad", phase=2)

    with pytest.raises(StackError) as caught:
        ensure_up(settings=settings, catalog={"web": web, "bad": bad}, model=False)

    message = str(caught.value)
    assert "bad" in message and "exited while starting" in message and "\n" not in message
    assert "bad config" in message, "the error should quote the log's last line"
    # The server started earlier in the same run was stopped again: nothing half-started.
    assert read_record(paths.run, "web") is None
    assert http_status(f"http://127.0.0.1:{web.port}/", timeout_s=0.5) is None


def test_port_held_by_a_stranger_stops_up_before_installing(
    home: tuple[StackPaths, CommonSettings],
) -> None:
    paths, settings = home
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        kafka = Kafka(paths, settings, port=port, controller_port=free_port())
        with pytest.raises(StackError) as caught:
            ensure_up(["kafka"], settings=settings, catalog={"kafka": kafka}, model=False)

    message = str(caught.value)
    assert f"port {port} (kafka broker) is already in use by pid {os.getpid()}" in message
    assert "genwire did not start" in message and "\n" not in message
    assert not paths.opt.exists(), "nothing may be downloaded when a port is taken"
    assert read_record(paths.run, "kafka") is None


def test_a_stale_pid_file_is_not_mistaken_for_a_running_server(
    home: tuple[StackPaths, CommonSettings],
) -> None:
    paths, settings = home
    web = HttpServer(paths, settings, "web", phase=1)
    catalog = {"web": web}
    rows = ensure_up(settings=settings, catalog=catalog, model=False)
    pid = rows[0].pid
    record = read_record(paths.run, "web")
    assert pid is not None and record is not None
    os.killpg(record.pid, 9)  # supervisor and server die behind genwire's back; the files stay
    wait_until(lambda: not pid_alive(pid) and not record.alive(), what="both gone", timeout_s=10)
    assert read_record(paths.run, "web") is not None

    rows = ensure_up(settings=settings, catalog=catalog, model=False)
    assert rows[0].state == "running" and rows[0].pid != pid
    assert rows[0].restarts == 0, "a new supervisor, not a restart"
    down(settings=settings, catalog=catalog)


def test_unknown_component_names_are_an_error(home: tuple[StackPaths, CommonSettings]) -> None:
    _, settings = home
    with pytest.raises(StackError, match="unknown component"):
        ensure_up(["kafak"], settings=settings, model=False)


def test_missing_prerequisites_name_what_to_install(
    home: tuple[StackPaths, CommonSettings], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    paths, settings = home
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(StackError, match=r"`java` not found on PATH: install a JDK"):
        Kafka(paths, settings).install()
    with pytest.raises(StackError, match=r"`go` not found on PATH: install the Go toolchain"):
        Jaeger(paths, settings).install()


def test_cli_reports_a_taken_port_in_one_line(infra: CommonSettings, tmp_path: Path) -> None:
    """`genwire up` in another home finds 9092 held by the shared Kafka, which it did not start."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENWIRE_")}
    env["GENWIRE_HOME"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "genwire_cli", "up", "--only", "kafka"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("genwire up: error: port 9092 (kafka broker) is already in use by")
    assert "then run `make up` again" in lines[0]
    assert not (tmp_path / "opt").exists()
