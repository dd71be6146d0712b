"""The HTTP API's wait for an answer: a client's hang-up cancels the work and answers
``cancelled``; the server's own cancel of the request stays a cancel (nothing blames the client).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from fastapi import Request
from genwire_gateway.errors import CANCELLED, GatewayError
from genwire_gateway.http_api import _unless_disconnected


class _Client:
    """The ASGI side of a request whose body is read: ``receive`` waits for a hang-up."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}


def _request(client: _Client) -> Request:
    return cast(Request, client)


class _Work:
    """Work that answers when told to, and records whether it was cancelled."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.started = asyncio.Event()
        self.cancelled = False

    async def run(self) -> str:
        self.started.set()
        try:
            return await self.answer
        except asyncio.CancelledError:
            self.cancelled = True
            raise


async def test_the_work_answers() -> None:
    work = _Work()
    waiting = asyncio.create_task(_unless_disconnected(_request(_Client()), work.run()))
    await work.started.wait()
    work.answer.set_result("text")
    assert await waiting == "text"
    assert not work.cancelled


async def test_a_hang_up_cancels_the_work_and_answers_cancelled() -> None:
    client, work = _Client(), _Work()
    waiting = asyncio.create_task(_unless_disconnected(_request(client), work.run()))
    await work.started.wait()
    client.gone.set()
    with pytest.raises(GatewayError) as caught:
        await waiting
    assert caught.value.code == CANCELLED
    assert work.cancelled


async def test_the_servers_cancel_stays_a_cancel_and_ends_the_work() -> None:
    work = _Work()
    waiting = asyncio.create_task(_unless_disconnected(_request(_Client()), work.run()))
    await work.started.wait()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert work.cancelled  # ended before the handler's cancel went on


async def test_a_hang_up_answers_though_the_works_clean_up_hangs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("genwire_gateway.http_api.WORK_CANCEL_S", 0.05)
    client, released = _Client(), asyncio.Event()
    started, cleaning = asyncio.Event(), asyncio.Event()

    async def stuck_clean_up() -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cleaning.set()
            await released.wait()  # e.g. a downstream cancel waiting for a broker that is down
            raise
        return "never"

    waiting = asyncio.create_task(_unless_disconnected(_request(client), stuck_clean_up()))
    await started.wait()
    client.gone.set()
    with pytest.raises(GatewayError) as caught:
        await asyncio.wait_for(waiting, timeout=5)
    assert caught.value.code == CANCELLED
    assert cleaning.is_set()
    released.set()  # the clean-up goes on alone and ends
