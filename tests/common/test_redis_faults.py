"""Redis clients through faults, against the real Redis: a restart's dead connections, and a
command that succeeded but answered too late (retried by the client)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlparse

import pytest
from genwire_preprocess.stores import RedisClaims

from genwire.redisconn import connect
from genwire.request import GenerationRequest, fingerprint
from genwire.results import _CLAIM, ResultStore
from genwire.settings import CommonSettings


async def test_connections_killed_by_a_restart_cost_no_command(infra: CommonSettings) -> None:
    """After Redis restarts, every pooled connection is dead on the client side: the first
    command on each must reconnect and succeed, not fail (issue 9, item 3)."""
    redis = connect(infra.redis_url, timeout_s=1.0)
    admin = connect(infra.redis_url)
    key = f"genwire:test:{uuid.uuid4().hex}"
    try:
        await asyncio.gather(*(redis.set(f"{key}:{i}", i) for i in range(8)))  # a full pool
        mine = {int(c["id"]) for c in await admin.client_list() if c.get("name") != "admin"}
        await admin.client_setname("admin")
        for client_id in mine:
            with contextlib.suppress(Exception):
                await admin.client_kill_filter(_id=client_id)
        values = await asyncio.gather(*(redis.get(f"{key}:{i}") for i in range(8)))
        assert values == [str(i).encode() for i in range(8)]
    finally:
        await redis.delete(*(f"{key}:{i}" for i in range(8)))
        await redis.aclose()  # type: ignore[attr-defined]
        await admin.aclose()  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def _late_proxy(target: str, delay_s: float) -> AsyncIterator[str]:
    """A TCP proxy to Redis that holds back the reply to the first SET ... NX (or claim
    script) for ``delay_s`` (Redis executed it: only the answer is late, as in an fsync
    stall)."""
    url = urlparse(target)
    delayed = asyncio.Event()

    async def pipe(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(url.hostname, url.port or 6379)
        saw_nx = asyncio.Event()

        async def up() -> None:
            while data := await client_r.read(65536):
                # A SET NX, or the gateway's claim script (it names the claim key).
                claims = b"NX" in data.upper() or b"genwire:claim:" in data
                if claims and not delayed.is_set():
                    saw_nx.set()
                server_w.write(data)
                await server_w.drain()

        async def down() -> None:
            while data := await server_r.read(65536):
                if saw_nx.is_set() and not delayed.is_set():
                    delayed.set()
                    await asyncio.sleep(delay_s)
                client_w.write(data)
                await client_w.drain()

        await asyncio.gather(up(), down(), return_exceptions=True)
        client_w.close()
        server_w.close()

    server = await asyncio.start_server(pipe, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}{url.path}"
        assert delayed.is_set(), "the proxy never saw the SET NX it was to delay"
    finally:
        server.close()


async def test_a_claim_whose_answer_came_too_late_is_still_ours(infra: CommonSettings) -> None:
    """The client retries the timed-out claim; its SET NX then fails because the first one
    did succeed. The gateway must still know it owns the request (or nobody publishes it)."""
    request = GenerationRequest(request_id=f"late-{uuid.uuid4().hex[:8]}", prompt="hi")
    # The claim script cached first: else the delayed answer is EVALSHA's NOSCRIPT (nothing
    # ran, no late success to recover from) and the test passes without testing it.
    direct = connect(infra.redis_url)
    try:
        await direct.script_load(_CLAIM)  # type: ignore[no-untyped-call]
    finally:
        await direct.aclose()  # type: ignore[attr-defined]
    async with _late_proxy(infra.redis_url, delay_s=2.0) as url:
        redis = connect(url, timeout_s=0.5)
        try:
            outcome = await ResultStore(redis, ttl_s=60).claim(request, 30)
        finally:
            await redis.aclose()  # type: ignore[attr-defined]
    assert outcome.owner and not outcome.conflict and outcome.result is None


async def test_preprocess_and_gateway_claims_agree(infra: CommonSettings) -> None:
    """One key, one fingerprint: a gateway claim is accepted by preprocess for the same body
    and refused for another."""
    request = GenerationRequest(request_id=f"agree-{uuid.uuid4().hex[:8]}", prompt="hi")
    redis = connect(infra.redis_url)
    claims = RedisClaims(infra.redis_url, ttl_s=60)
    try:
        assert (await ResultStore(redis, ttl_s=60).claim(request, 30)).owner
        mine = fingerprint(request)
        assert await claims.claim(request.request_id or "", mine) == mine
        other = fingerprint(request.model_copy(update={"prompt": "another"}))
        assert await claims.claim(request.request_id or "", other) == mine
    finally:
        await redis.aclose()  # type: ignore[attr-defined]
        await claims.close()


pytestmark = pytest.mark.integration
