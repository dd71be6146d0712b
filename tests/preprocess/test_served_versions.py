"""Triton's served versions, cached: while requests flow, a request never waits for Triton
(an answer past half its lifetime is refreshed in the background), and no answer older than
``cache_s`` is ever used."""

from __future__ import annotations

import asyncio

import httpx
from genwire_preprocess.stores import TritonVersions


class Triton:
    """``GET /v2/models/<model>``, answering ``versions``; ``hold`` keeps answers waiting."""

    def __init__(self, versions: list[str]) -> None:
        self.versions = versions
        self.asked = 0
        self.hold: asyncio.Event | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.asked += 1
        if self.hold is not None:
            await self.hold.wait()
        return httpx.Response(200, json={"name": "m", "versions": self.versions})


def versions_of(triton: Triton, cache_s: float = 2.0) -> tuple[TritonVersions, list[float]]:
    versions = TritonVersions("127.0.0.1:1", cache_s=cache_s)
    versions._client = httpx.AsyncClient(
        base_url="http://127.0.0.1:1", transport=httpx.MockTransport(triton)
    )
    now = [100.0]
    versions.clock = lambda: now[0]
    return versions, now


async def settle(versions: TritonVersions) -> None:
    """Let every background refresh finish."""
    while versions._refreshing:
        await asyncio.gather(*versions._refreshing.values())


async def test_an_aging_answer_is_refreshed_in_the_background() -> None:
    triton = Triton(["3"])
    versions, now = versions_of(triton)
    try:
        assert await versions.served("m") == "3" and triton.asked == 1  # the first: inline
        triton.versions = ["3", "4"]
        now[0] += 0.9
        assert await versions.served("m") == "3" and triton.asked == 1  # fresh: not asked
        now[0] += 0.2  # 1.1 s old: still served, refreshed meanwhile (one refresh at a time)
        triton.hold = asyncio.Event()
        assert await versions.served("m") == "3"
        assert await versions.served("m") == "3"
        await asyncio.sleep(0)
        assert triton.asked == 2
        triton.hold.set()
        await settle(versions)
        assert await versions.served("m") == "4" and triton.asked == 2
        assert await versions.listed("m") == ["3", "4"]
    finally:
        await versions.close()


async def test_an_answer_past_its_lifetime_is_never_used() -> None:
    triton = Triton(["3"])
    versions, now = versions_of(triton)
    try:
        assert await versions.served("m") == "3"
        triton.versions = ["5"]
        now[0] += 2.0  # no request for cache_s: asked inline, the old answer is not used
        assert await versions.served("m") == "5" and triton.asked == 2
    finally:
        await versions.close()


async def test_a_request_past_the_lifetime_waits_for_the_refresh_in_flight() -> None:
    triton = Triton(["3"])
    versions, now = versions_of(triton)
    try:
        assert await versions.served("m") == "3"
        triton.versions, triton.hold = ["4"], asyncio.Event()
        now[0] += 1.5
        assert await versions.served("m") == "3"  # the refresh starts
        now[0] += 1.0  # 2.5 s old now: this request waits for that refresh, asks nothing more
        waiting = asyncio.ensure_future(versions.served("m"))
        await asyncio.sleep(0)
        assert not waiting.done()
        triton.hold.set()
        assert await waiting == "4" and triton.asked == 2
    finally:
        await versions.close()


async def test_close_cancels_a_refresh_in_flight() -> None:
    triton = Triton(["3"])
    versions, now = versions_of(triton)
    assert await versions.served("m") == "3"
    triton.hold = asyncio.Event()
    now[0] += 1.5
    await versions.served("m")
    (task,) = versions._refreshing.values()
    await asyncio.sleep(0)
    await versions.close()
    await asyncio.sleep(0)
    assert task.cancelled()


async def test_requests_arriving_together_share_one_question() -> None:
    triton = Triton(["3"])
    versions, now = versions_of(triton)
    try:
        triton.hold = asyncio.Event()
        first = [asyncio.ensure_future(versions.served("m")) for _ in range(5)]
        await asyncio.sleep(0)
        triton.hold.set()
        assert await asyncio.gather(*first) == ["3"] * 5 and triton.asked == 1
        now[0] += 5.0  # expired (no traffic for a while): the next burst asks once, and waits
        triton.versions, triton.hold = ["4"], asyncio.Event()
        burst = [asyncio.ensure_future(versions.served("m")) for _ in range(5)]
        await asyncio.sleep(0)
        burst[0].cancel()  # a request cancelled meanwhile leaves the question to the others
        triton.hold.set()
        assert await asyncio.gather(*burst[1:]) == ["4"] * 4 and triton.asked == 2
    finally:
        await versions.close()
