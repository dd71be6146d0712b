"""What preprocess asks of others: Redis (idempotency claims and the first route of each
request) and Triton (the served version).

Both are behind small protocols so the handlers stay pure and their unit tests need neither.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol
from urllib.parse import quote

import httpx
from redis.asyncio import Redis
from redis.exceptions import RedisError

from genwire.errors import RetryableError
from genwire.policy import numbered_versions
from genwire.redisconn import REDIS, connect
from genwire.results import claim_key, claimed_fingerprint, owner_key, route_key

log = logging.getLogger(__name__)


class Claims(Protocol):
    """Idempotency claims: the first fingerprint stored for a request id wins."""

    async def claim(self, request_id: str, fingerprint: str) -> str:
        """Store ``fingerprint`` unless the id has one; return the one that is stored."""
        ...

    async def claim_routed(
        self, request_id: str, fingerprint: str, route: str
    ) -> tuple[str, str | None]:
        """``claim``, and store ``route`` (an encoded ``Route``) unless the id has one, in the
        same round trip; returns the stored fingerprint and the stored route (None only from a
        store that cannot keep routes)."""
        ...

    async def holder(self, request_id: str) -> str | None:
        """The claim that holds ``request_id`` (its value: ``genwire.results.claimed_fingerprint``
        and ``claimed_digest`` read it), or None: a look, nothing is stored."""
        ...


class ServedVersions(Protocol):
    """Which version of a model the model server serves now."""

    async def served(self, model: str) -> str | None:
        """The served version, or None when it cannot be told (the repository decides)."""
        ...


_CLAIM_ROUTED = """
-- KEYS: claim, route, owner. ARGV: fingerprint, route, TTL. Returns {claim's value, stored route}.
redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'NX', 'EX', ARGV[3])
local held = redis.call('GET', KEYS[1])
if held and string.match(held, '^[^:]*') == ARGV[1] then
  local ttl = tonumber(ARGV[3])
  for _, key in ipairs({KEYS[1], KEYS[3]}) do
    local left = redis.call('TTL', key)
    if left >= 0 and left < ttl then redis.call('EXPIRE', key, ttl) end
  end
end
return {held, redis.call('GET', KEYS[2])}
"""
"""``claim_routed`` as one command (EVALSHA): the same four commands as a pipeline, parsed as one
reply (0.1 ms less per request through redis-py; docs/benchmarks.md, *A stage's critical
path*), and atomic.

A claim of this request's fingerprint that expires sooner than the TTL (the gateway's: the
caller's deadline and a grace) is extended to it, its value untouched (the gateway's token
and digest stay), never shortened, never given an expiry it lacks (``put_first``'s rule): a
result stored after the gateway's claim would have expired (an outage waited out, a parked
record replayed) still finds the claim, and ``put_first`` keeps it as long as the result, so
another body under the id is refused instead of answered with this one's result. Another
request's claim is left as it is (its gateway may still free it). The id's owner record (the
API key that sent it, if any) is kept as long, by the same rule: a claim outliving it would be
an id no key owns, which its owner's own retry may not name (``genwire.results._CLAIM``)."""


class RedisClaims:
    """``genwire:claim:<request_id>`` → fingerprint, ``SET NX EX ttl`` (shared with the gateway;
    ``claim_routed`` extends a shorter claim of the same fingerprint to ``ttl``);
    ``genwire:route:<request_id>`` → the first route (preprocess only), same TTL."""

    def __init__(self, url: str, ttl_s: int, timeout_s: float = 2.0) -> None:
        self.redis: Redis[bytes] = connect(url, timeout_s=timeout_s)
        self.ttl_s = ttl_s
        self._claim_routed = self.redis.register_script(_CLAIM_ROUTED)

    async def claim(self, request_id: str, fingerprint: str) -> str:
        """One round trip: set if absent, then read what is there."""
        key = claim_key(request_id)
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.set(key, fingerprint, nx=True, ex=self.ttl_s)
            pipe.get(key)
            _, holder = await pipe.execute()
        except RedisError as exc:  # the consumer waits the outage out
            raise RetryableError(f"redis: {exc}", dependency=REDIS) from None
        return fingerprint if holder is None else claimed_fingerprint(bytes(holder))

    async def claim_routed(
        self, request_id: str, fingerprint: str, route: str
    ) -> tuple[str, str | None]:
        """One round trip: claim the id and record its route (both ``SET NX``), keep a claim
        of ``fingerprint`` at least ``ttl_s`` (``_CLAIM_ROUTED``), read both."""
        try:
            holder, stored = await self._claim_routed(
                keys=[claim_key(request_id), route_key(request_id), owner_key(request_id)],
                args=[fingerprint, route, self.ttl_s],
            )
        except RedisError as exc:  # the consumer waits the outage out
            raise RetryableError(f"redis: {exc}", dependency=REDIS) from None
        held = fingerprint if holder is None else claimed_fingerprint(bytes(holder))
        return held, None if stored is None else bytes(stored).decode()

    async def holder(self, request_id: str) -> str | None:
        """One GET: the claim holding the id (a refused record's only question)."""
        try:
            held = await self.redis.get(claim_key(request_id))
        except RedisError as exc:  # the consumer waits the outage out
            raise RetryableError(f"redis: {exc}", dependency=REDIS) from None
        return None if held is None else bytes(held).decode(errors="replace")

    async def close(self) -> None:
        """Close the connection pool."""
        await self.redis.aclose()  # type: ignore[attr-defined]  # types-redis predates it


class TritonVersions:
    """Triton's model metadata (``GET /v2/models/<model>``), cached for ``cache_s``.

    Triton unreachable, restarting or not serving the model now: the version it served last;
    None when it never told (the repository's newest version is used).

    A request never waits for a refresh while traffic flows: an answer older than half of
    ``cache_s`` is still used and refreshed in the background, so it is never used once older
    than ``cache_s`` — the same staleness bound as an inline refresh. Only an answer past
    ``cache_s`` (no request for that long) is waited for, as is the first one. One question
    per model at a time, however many requests need the answer.
    """

    def __init__(self, http_url: str, cache_s: float = 2.0, timeout_s: float = 1.0) -> None:
        base = http_url if "://" in http_url else f"http://{http_url}"
        self._client = httpx.AsyncClient(base_url=base, timeout=timeout_s, trust_env=False)
        self._cache_s = cache_s
        self._cache: dict[str, tuple[float, list[str] | None]] = {}
        self._refreshing: dict[str, asyncio.Task[list[str] | None]] = {}
        self.clock: Callable[[], float] = time.monotonic

    async def served(self, model: str) -> str | None:
        """The highest version Triton lists for ``model``."""
        listed = await self.listed(model)
        return listed[-1] if listed else None

    async def listed(self, model: str) -> list[str] | None:
        """Every version Triton serves of ``model``, ascending (None: it never told)."""
        hit = self._cache.get(model)
        if hit is not None:
            age = self.clock() - hit[0]
            if age < self._cache_s:
                if age >= self._cache_s / 2:
                    self._refresh(model)
                return hit[1]
        # Requests arriving together share one question (a cancelled one leaves it running).
        return await asyncio.shield(self._refresh(model))

    def _refresh(self, model: str) -> asyncio.Task[list[str] | None]:
        """The refresh of ``model`` in flight, else a new one."""
        task = self._refreshing.get(model)
        if task is None:
            task = asyncio.create_task(self._ask(model))
            self._refreshing[model] = task
            task.add_done_callback(self._refreshed)
        return task

    def _refreshed(self, task: asyncio.Task[list[str] | None]) -> None:
        for model, running in list(self._refreshing.items()):
            if running is task:
                del self._refreshing[model]
        if not task.cancelled() and task.exception() is not None:
            log.warning("refreshing Triton's served versions failed: %r", task.exception())

    async def _ask(self, model: str) -> list[str] | None:
        """Ask Triton now and cache the answer."""
        now = self.clock()
        hit = self._cache.get(model)
        # Triton unreachable, restarting or reloading the model: the versions it served last,
        # not None (the repository's newest may be built but never served: it would fail).
        versions = hit[1] if hit is not None else None
        try:
            response = await self._client.get(f"/v2/models/{quote(model, safe='')}")
            if response.status_code == 200:
                listed = numbered_versions(response.json().get("versions") or [])
                versions = listed or versions
        except (httpx.HTTPError, httpx.InvalidURL, ValueError):
            pass
        if versions is not None:  # "never told" is asked again: a load may follow at once
            self._cache[model] = (now, versions)
        return versions

    async def close(self) -> None:
        """Close the HTTP client (a refresh in flight is cancelled first)."""
        tasks = list(self._refreshing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.aclose()
