"""A private redis-server per test module, for tests of Redis scripts that need no stack (the
stack's Redis is the integration tests'): fixtures ``redis_url`` and ``redis``, registered by
the conftest of the folders that use them."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.gateway.harness import free_port

REDIS_SERVER = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server for this module (stopped at the end)."""
    assert REDIS_SERVER is not None
    port = free_port()
    workdir: Path = tmp_path_factory.mktemp("redis")
    argv = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    proc = subprocess.Popen(
        [*argv, "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis[bytes]]:
    client: Redis[bytes] = Redis.from_url(redis_url)
    async with asyncio.timeout(10):
        while True:  # the server may still be starting
            try:
                await client.ping()
                break
            except Exception:
                await asyncio.sleep(0.05)
    yield client
    await client.aclose()  # type: ignore[attr-defined]
