"""The event loop a service runs on (``genwire.service.loop``, setting ``event_loop``)."""

from __future__ import annotations

import asyncio
import sys

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from genwire.service import loop
from genwire.settings import ServiceSettings

uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed in this venv")


async def _which() -> str:
    return loop.describe()


def test_auto_and_uvloop_run_on_uvloop_asyncio_on_asyncio() -> None:
    for name in ("auto", "uvloop", "asyncio"):
        assert loop.run(_which(), name) == loop.label(name)  # the label says what runs
    assert [loop.label(name) for name in ("auto", "uvloop", "asyncio")] == [
        "uvloop",
        "uvloop",
        "asyncio",
    ]


def test_without_uvloop_auto_falls_back_and_uvloop_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert loop.loop_factory("auto") is None
    assert loop.run(_which(), "auto") == "asyncio" == loop.label("auto")
    with pytest.raises(RuntimeError, match="uvloop is not installed"):
        loop.loop_factory("uvloop")
    with pytest.raises(RuntimeError, match="uvloop is not installed"):
        loop.label("uvloop")


def test_an_unknown_loop_is_refused() -> None:
    with pytest.raises(ValueError, match="expected one of"):
        loop.loop_factory("trio")
    with pytest.raises(ValidationError):
        ServiceSettings(event_loop="trio")  # type: ignore[arg-type]


def test_the_setting_defaults_to_auto_and_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert ServiceSettings().event_loop == "auto"

    class Stage(ServiceSettings):
        model_config = SettingsConfigDict(env_prefix="GENWIRE_TESTSTAGE_")

    monkeypatch.setenv("GENWIRE_TESTSTAGE_EVENT_LOOP", "asyncio")
    assert Stage().event_loop == "asyncio"


def test_run_returns_the_result_and_closes_its_loop() -> None:
    seen: list[asyncio.AbstractEventLoop] = []

    async def main() -> int:
        seen.append(asyncio.get_running_loop())
        await asyncio.sleep(0)
        return 7

    assert loop.run(main(), "uvloop") == 7
    assert seen[0].is_closed()


def test_serve_runs_the_service_on_the_configured_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """``serve`` (every service's ``run``) hands its coroutine to the loop the settings name."""
    from fastapi import FastAPI

    from genwire.service import http

    asked: list[str] = []

    class Server:
        should_exit = False

        def __init__(self, config: object, **_: object) -> None:
            pass

        async def serve(self) -> None:
            asked.append(loop.describe())

    from genwire.service import quiet_server

    monkeypatch.setattr(quiet_server, "QuietServer", Server)
    for name, expected in (("asyncio", "asyncio"), ("uvloop", "uvloop")):
        http.serve(FastAPI(), ServiceSettings(event_loop=name))  # type: ignore[arg-type]
        assert asked.pop() == expected


def test_every_service_parses_http_with_h11_whatever_else_is_installed() -> None:
    """h11 bounds a request's headers; httptools, uvicorn's choice whenever it is installed,
    bounds none (docs/benchmarks.md, Round 8)."""
    from fastapi import FastAPI
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from genwire.service import http

    config = http.uvicorn_config(FastAPI(), ServiceSettings())
    config.load()
    assert config.http_protocol_class is H11Protocol
