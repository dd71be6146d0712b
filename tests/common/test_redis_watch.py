"""``genwire.redisconn.watch``: a PING that fails reports Redis down, one that answers back."""

from __future__ import annotations

import asyncio

from genwire.health import Dependencies
from genwire.redisconn import REDIS, watch


class _Redis:
    def __init__(self) -> None:
        self.down = False
        self.pings = 0

    async def ping(self) -> bool:
        self.pings += 1
        if self.down:
            raise ConnectionError("Connection refused")
        return True


async def test_a_failed_ping_makes_readiness_say_redis_and_an_answer_clears_it() -> None:
    redis = _Redis()
    deps = Dependencies("gateway", unready_after_s=0.0)
    task = asyncio.ensure_future(watch(redis, deps, 0.01))  # type: ignore[arg-type]
    try:
        await asyncio.sleep(0.05)
        assert deps.reasons() == [] and redis.pings >= 2
        redis.down = True
        await asyncio.sleep(0.05)
        (reason,) = deps.reasons()
        assert reason.startswith(f"{REDIS} unavailable") and "Connection refused" in reason
        redis.down = False
        await asyncio.sleep(0.05)
        assert deps.reasons() == [] and deps.down_for(REDIS) is None
    finally:
        task.cancel()


class _Hung(_Redis):
    async def ping(self) -> bool:
        self.pings += 1
        if self.down:
            await asyncio.Event().wait()  # a Redis that never answers (its retries included)
        return True


async def test_an_outage_is_reported_again_before_it_could_be_forgotten() -> None:
    """With a probe interval far longer than the outage memory (``forget_after_s``), and a
    PING that never answers, readiness still says Redis is down for as long as it is."""
    redis = _Hung()
    redis.down = True
    # A PING is given a third of the memory and the next comes a third later: reported again
    # a third of the memory before it would be forgotten. 0.3 s of that (not 0.1 s) for a
    # stall of the loaded machine between a check and the report that was due before it.
    deps = Dependencies("gateway", unready_after_s=0.0, forget_after_s=0.9)
    task = asyncio.ensure_future(watch(redis, deps, 60.0))  # type: ignore[arg-type]
    try:
        await asyncio.sleep(0.35)  # the first PING's bound (0.3 s) has passed
        for _ in range(30):  # 3 s: over three times the memory
            (reason,) = deps.reasons()
            assert "no answer to PING within 0.3 s" in reason
            await asyncio.sleep(0.1)
    finally:
        task.cancel()
