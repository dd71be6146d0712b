"""Every service's HTTP port keeps an idle connection open longer than clients' pools do
(setting ``http_keep_alive_s``): a server that closed first raced a pooled client's next
request, which then failed with a reset."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from genwire.service import http
from genwire.settings import ServiceSettings
from tests.stack.support import free_port, serve_in_task

REQUEST = b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n"


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"ok": "yes"}

    return app


async def _answered_after_idle(settings: ServiceSettings, idle_s: float) -> bool:
    """Whether a second request on one connection, sent ``idle_s`` after the first answer,
    is answered (rather than met by a closed connection)."""
    server = uvicorn.Server(http.uvicorn_config(_app(), settings))
    task = await serve_in_task(server, 30)
    try:
        reader, writer = await asyncio.open_connection(settings.host, settings.port)
        try:
            for attempt in range(2):
                if attempt:
                    await asyncio.sleep(idle_s)
                try:
                    writer.write(REQUEST)
                    await writer.drain()
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                except (asyncio.IncompleteReadError, ConnectionError):
                    if attempt:
                        return False
                    raise  # the first request must be answered, or the test proves nothing
                assert head.startswith(b"HTTP/1.1 200"), head
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
            return True
        finally:
            writer.close()
    finally:
        server.should_exit = True
        await task


def _settings(keep_alive_s: int) -> ServiceSettings:
    # Explicit values: a developer's GENWIRE_* environment must not change the test.
    return ServiceSettings(host="127.0.0.1", port=free_port(), http_keep_alive_s=keep_alive_s)


@pytest.mark.slow
def test_an_idle_connection_outlives_the_clients_pool_expiry() -> None:
    # httpx (and the OpenAI SDK on it) reuse a pooled connection for up to 5 s of idleness.
    client_expiry = httpx.Limits().keepalive_expiry
    default = ServiceSettings.model_fields["http_keep_alive_s"].default
    assert client_expiry is not None and default > client_expiry
    settings = _settings(default)
    assert asyncio.run(_answered_after_idle(settings, client_expiry + 1.0))


def test_the_keep_alive_setting_is_honoured() -> None:
    assert not asyncio.run(_answered_after_idle(_settings(1), 2.0))
