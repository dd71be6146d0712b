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
