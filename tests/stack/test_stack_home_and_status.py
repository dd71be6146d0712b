"""A relative ``GENWIRE_HOME`` is made absolute (the components run with the home as their
working folder), and ``genwire status`` exits 3 when a component is not running."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from genwire_stack import observe
from genwire_stack.observe import ComponentStatus, State
from genwire_stack.paths import StackPaths

from genwire.settings import CommonSettings


def test_a_relative_home_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    paths = StackPaths.from_settings(CommonSettings(home=Path("rel/h")))
    assert paths.home.is_absolute()
    assert paths.home == tmp_path.resolve() / "rel" / "h"
    assert paths.logs == tmp_path.resolve() / "rel" / "h" / "logs"
    # Seen from a child's working folder (the home), the paths still lead to the same place.
    (tmp_path / "rel" / "h").mkdir(parents=True)
    monkeypatch.chdir(paths.home)
    assert paths.run.resolve() == tmp_path.resolve() / "rel" / "h" / "run"


def _row(name: str, state: State) -> ComponentStatus:
    return ComponentStatus(
        name=name,
        title=name,
        state=state,
        pid=None,
        endpoints="http:1",
        log=f"/nowhere/{name}.log",
    )


@pytest.fixture
def cli_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``genwire`` run against a home of its own, with no other setting from the environment."""
    for name in [n for n in os.environ if n.startswith("GENWIRE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("GENWIRE_HOME", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(
    ("states", "code"),
    [
        (["running", "running"], 0),
        (["running", "external"], 0),
        (["running", "stopped"], 3),
        (["running", "not-ready"], 3),
        (["restarting"], 3),
        (["starting"], 3),
        (["unhealthy"], 3),
    ],
)
def test_status_exits_3_when_a_component_is_not_running(
    cli_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    states: list[State],
    code: int,
) -> None:
    from genwire_cli.main import main

    rows = [_row(f"c{at}", state) for at, state in enumerate(states)]
    monkeypatch.setattr(observe, "status", lambda *args, **kwargs: rows)
    assert main(["status"]) == code
    out = capsys.readouterr().out
    assert all(f"c{at}" in out for at in range(len(states))), "the table is printed either way"
    assert "genwire: layout:" in out
