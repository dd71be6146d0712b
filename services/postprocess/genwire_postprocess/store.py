"""Where results are kept for callers: Redis, first result wins (SET NX), with a TTL."""

from __future__ import annotations

from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from genwire.errors import RetryableError
from genwire.events import GenerationResult
from genwire.redisconn import REDIS, connect
from genwire.request import ErrorCode, result_key


class ResultStore(Protocol):
    """Stores a result unless one exists; returns the one that is stored."""

    async def put_first(self, result: GenerationResult) -> GenerationResult: ...


class RedisResultStore:
    """``genwire:result:<request_id>`` → GenerationResult JSON, ``SET NX EX ttl``."""

    def __init__(self, url: str, ttl_s: int, timeout_s: float = 2.0) -> None:
        self.redis: Redis[bytes] = connect(url, timeout_s=timeout_s)
        self.ttl_s = ttl_s

    async def put_first(self, result: GenerationResult) -> GenerationResult:
        """Store ``result``, or return the earlier one (a redelivery never changes the answer).

        One exception: an ``unavailable`` error (a dependency stayed down through every replay)
        was never an answer, so a real result of a later replay (``genwire dlq replay``)
        replaces it.
        """
        key = result_key(result.request_id)
        value = result.model_dump_json(exclude_none=True)
        try:
            if await self.redis.set(key, value, nx=True, ex=self.ttl_s):
                return result
            existing = await self.redis.get(key)
            if existing is None:  # expired in between: ours is as good
                return result
            stored = GenerationResult.model_validate_json(existing)
            if _replaceable(stored) and result.error is None:
                await self.redis.set(key, value, xx=True, ex=self.ttl_s)
                return result
        except RedisError as exc:  # the consumer waits the outage out (never an error result)
            raise RetryableError(f"redis: {exc}", dependency=REDIS) from None
        return stored

    async def close(self) -> None:
        """Close the connection pool."""
        await self.redis.aclose()  # type: ignore[attr-defined]  # types-redis predates it


def _replaceable(stored: GenerationResult) -> bool:
    return stored.error is not None and stored.error.code == ErrorCode.UNAVAILABLE
