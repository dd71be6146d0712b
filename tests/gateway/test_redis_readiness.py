"""The gateway's readiness follows Redis, also while no call touches it (anonymous requests do
not): its probe PINGs Redis, here through a proxy the test cuts and restores."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest
from genwire_stack.health import free_port

from genwire.apikeys import auth_headers
from genwire.settings import CommonSettings

from .harness import start_gateway, stop_gateway

pytestmark = pytest.mark.integration


class _Cut:
    """A TCP proxy to Redis on a fixed port that can be cut (listener and connections closed)
    and restored."""

    def __init__(self, target: str) -> None:
        url = urlsplit(target)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 6379
        self.listen = free_port()
        self.url = f"redis://127.0.0.1:{self.listen}{url.path}"
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.listen)

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._open):
            w.close()
        await self._server.wait_closed()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(self.host, self.port)
        self._open |= {writer, up_w}

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(copy(reader, up_w), copy(up_r, writer))
        self._open -= {writer, up_w}


@contextlib.asynccontextmanager
async def _proxy(target: str) -> AsyncIterator[_Cut]:
    cut = _Cut(target)
    await cut.restore()
    try:
        yield cut
    finally:
        with contextlib.suppress(Exception):
            await cut.cut()


async def _readiness(http: httpx.AsyncClient, ready: bool, within_s: float) -> str:
    """Wait until /readyz says ``ready``; the last answer's body."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    while True:
        answer = await http.get("/readyz")
        if (answer.status_code == 200) == ready or loop.time() > end:
            assert (answer.status_code == 200) == ready, answer.text
            return answer.text
        await asyncio.sleep(0.2)


async def test_the_gateway_is_not_ready_while_redis_is_down(
    infra: CommonSettings, requests_topic: str, reply_topic: str
) -> None:
    async with _proxy(infra.redis_url) as redis:
        gateway = await start_gateway(
            infra,
            requests_topic,
            reply_topic,
            f"{reply_topic}.redis-probe",
            redis_url=redis.url,
            redis_probe_s=0.2,
            redis_timeout_s=0.5,
            unready_after_s=0.5,
        )
        try:
            async with httpx.AsyncClient(
                base_url=gateway.http_url, timeout=10, headers=auth_headers()
            ) as http:
                await _readiness(http, True, 30)
                await redis.cut()
                body = await _readiness(http, False, 15)
                assert "redis unavailable" in body
                await redis.restore()
                await _readiness(http, True, 15)
        finally:
            await stop_gateway(gateway)
