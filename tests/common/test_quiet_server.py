"""The services' uvicorn server sleeps until asked to stop, instead of waking ten times a second
to look (docs/benchmarks.md, *The idle stack's wake-ups*)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from genwire_stack.health import free_port

from genwire.service import http, quiet_server
from genwire.settings import ServiceSettings


def _server(port: int, **kw: Any) -> quiet_server.QuietServer:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"pong": True}

    return quiet_server.QuietServer(http.uvicorn_config(app, ServiceSettings(port=port)), **kw)


def _ticks(server: quiet_server.QuietServer) -> list[int]:
    """Record the counter of every ``on_tick`` call uvicorn's loop makes."""
    seen: list[int] = []
    on_tick = server.on_tick

    async def counted(counter: int) -> bool:
        seen.append(counter)
        return await on_tick(counter)

    server.on_tick = counted  # type: ignore[method-assign]
    return seen


async def _until_started(server: uvicorn.Server) -> None:
    for _ in range(2000):  # 20 s
        if server.started:
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("the server did not start")


def test_a_stop_from_another_thread_wakes_the_server_without_its_tick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a tick of a minute, nothing but the stop can end the wait: set from another
    thread (as uvicorn's signal handler may), serving ends well before the tick. Meanwhile the
    idle server did not wake once after its first tick (uvicorn's own loop: 10 times a second)."""
    monkeypatch.setattr(quiet_server, "TICK_S", 60.0)
    port = free_port()
    server = _server(port)
    ticks = _ticks(server)

    async def main() -> int:
        serving = asyncio.create_task(server.serve())
        await _until_started(server)
        async with httpx.AsyncClient() as client:
            reply = await client.get(f"http://127.0.0.1:{port}/ping")
        assert reply.json() == {"pong": True} and "date" in reply.headers
        await asyncio.sleep(0.5)
        idle_ticks = len(ticks)
        threading.Thread(target=setattr, args=(server, "should_exit", True)).start()
        async with asyncio.timeout(30):  # the tick would take 60 s
            await serving
        return idle_ticks

    idle_ticks = asyncio.run(main())
    assert idle_ticks == 1
    assert ticks[-1] % 10 == 0  # the stop's tick, uvicorn's once-a-second work included


def test_every_tick_does_uvicorns_once_a_second_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn refreshes the Date header when its counter is a multiple of 10 (its 1 s at 0.1 s
    a tick); each of ours is a second, so each must count as one."""
    monkeypatch.setattr(quiet_server, "TICK_S", 0.05)
    server = _server(free_port())
    refreshed: list[bool] = []
    on_tick = server.on_tick

    async def cleared_then_ticked(counter: int) -> bool:
        server.server_state.default_headers = []  # what only this tick's work can put back
        should_exit = await on_tick(counter)
        refreshed.append(any(n == b"date" for n, _ in server.server_state.default_headers))
        return should_exit

    server.on_tick = cleared_then_ticked  # type: ignore[method-assign]

    async def main() -> None:
        serving = asyncio.create_task(server.serve())
        await _until_started(server)
        for _ in range(200):  # 10 s at most
            if len(refreshed) >= 4:
                break
            await asyncio.sleep(0.05)
        server.should_exit = True
        await serving

    asyncio.run(main())
    assert len(refreshed) >= 4 and all(refreshed)


def test_a_stop_asked_before_the_main_loop_ends_serving_without_it() -> None:
    """The flag reads back what was set before any loop exists (uvicorn checks it after its
    start-up and returns without a main loop)."""
    server = _server(free_port())
    ticks = _ticks(server)

    async def main() -> None:
        server.should_exit = True  # before serve: no loop to wake yet
        async with asyncio.timeout(30):
            await server.serve()

    asyncio.run(main())
    assert server.should_exit and not ticks


def test_the_end_of_its_stop_condition_stops_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """``serve`` stops a service on its runtime's failure this way: the condition's end wakes
    the main loop (a tick of a minute would not), and a condition still pending when the server
    stops otherwise is cancelled."""
    monkeypatch.setattr(quiet_server, "TICK_S", 60.0)
    pending: list[asyncio.Future[None]] = []

    async def main() -> None:
        failure = asyncio.Event()
        server = _server(free_port(), stop_when=failure.wait)
        serving = asyncio.create_task(server.serve())
        await _until_started(server)
        asyncio.get_running_loop().call_later(0.2, failure.set)
        async with asyncio.timeout(30):
            await serving
        assert server.should_exit

        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pending.append(never)
        other = _server(free_port(), stop_when=lambda: never)
        serving = asyncio.create_task(other.serve())
        await _until_started(other)
        other.should_exit = True
        async with asyncio.timeout(30):
            await serving

    asyncio.run(main())
    assert pending[0].cancelled()
