"""One way to connect to Redis for every service: timeouts, retries, dead-connection checks.

Pooled connections outlive a Redis restart on the client side only: the first command on each
then fails (``Connection closed by server``). The client here retries connection errors and
timeouts on a fresh connection (capped exponential backoff with jitter), PINGs a connection
that sat idle before using it again, and never waits on a dead socket longer than the timeout.
An outage longer than the retries is the caller's to wait out (``RetryableError``).
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

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
