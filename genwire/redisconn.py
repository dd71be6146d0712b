"""One way to connect to Redis for every service: timeouts, retries, dead-connection checks.

Pooled connections outlive a Redis restart on the client side only: the first command on each
then fails (``Connection closed by server``). The client here retries connection errors and
timeouts on a fresh connection (capped exponential backoff with jitter), PINGs a connection
that sat idle before using it again, and never waits on a dead socket longer than the timeout.
An outage longer than the retries is the caller's to wait out (``RetryableError``).
"""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from genwire.health import Dependencies

REDIS = "redis"
"""The dependency name of Redis in readiness reasons, logs and metrics."""


def connect(url: str, *, timeout_s: float = 2.0, retries: int = 3) -> Redis[bytes]:
    """A pooled client for ``url`` (no I/O until the first command)."""
    return Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        socket_keepalive=True,
        health_check_interval=10,
        retry=Retry(EqualJitterBackoff(cap=1.0, base=0.05), retries),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


async def watch(redis: Redis[bytes], dependencies: Dependencies, interval_s: float) -> None:
    """PING Redis every ``interval_s`` and report it down or back: for a service whose calls
    need Redis but whose work may not touch it for a while (the gateway's anonymous requests
    do not), so that readiness says it is down whether or not a call failed on it. (Stages
    learn it from their records' retries.) A PING answers while Redis refuses writes (out of
    memory): that fails the calls, not this.

    ``Dependencies`` forgets an outage with no failure for ``forget_after_s``: while Redis is
    down, a PING is given a third of that and the next comes at most that much later, so the
    outage is reported again before it could be forgotten, whatever the interval and the
    client's own retries."""
    while True:
        bound = dependencies.forget_after_s / 3
        try:
            async with asyncio.timeout(bound):
                await redis.ping()
        except TimeoutError:
            dependencies.failed(REDIS, f"no answer to PING within {bound:g} s")
            await asyncio.sleep(min(interval_s, bound))
        except Exception as exc:  # any failure to answer is an outage, whatever its class
            dependencies.failed(REDIS, exc)
            await asyncio.sleep(min(interval_s, bound))
        else:
            dependencies.recovered(REDIS)
            await asyncio.sleep(interval_s)
