"""A request's records in Redis: its result (written by postprocess, read by the gateway) and
its idempotency claim (set by the gateway and by preprocess).

- ``genwire:result:<request_id>`` → GenerationResult JSON. Postprocess stores it ``SET NX`` with
  a TTL: the first result wins, so a redelivery never changes the answer. The gateway reads it
  when a result reached no waiter (it landed before the waiter registered, or on another
  instance's watch).
- ``genwire:claim:<request_id>`` → the fingerprint (``genwire.request.fingerprint``) of the
  first request with that id. A named request (the caller chose its id) is claimed by the
  gateway before it is published: the first caller owns it and publishes; a repeat finds the
  stored result, or waits for the one in flight; a different request under the same id is
  refused. Preprocess claims every request the same way, so a Kafka client that reuses an id
  is refused like a gateway caller. Anonymous gateway requests skip the claim here: nothing can
  repeat them.
- ``genwire:route:<request_id>`` → the route (version, arm, shadow, policy revision) preprocess
  resolved first (SET NX in the claim's round trip, same TTL): a redelivery or a repeat is
  prepared for that version even if the policy changed in between.
- ``genwire:owner:<request_id>`` → the name of the API key whose caller sent the request (SET
  NX, by the gateway, before it publishes). ``GetResult`` and ``Cancel`` of a request another
  key owns are refused unless the caller has the ``admin`` scope (docs/security.md).
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from genwire.errors import RetryableError
from genwire.events import GenerationResult
from genwire.redisconn import REDIS, connect
from genwire.request import ErrorCode, GenerationRequest, fingerprint

RESULT_KEY_PREFIX = "genwire:result:"
"""Redis key of a stored result: ``genwire:result:<request_id>`` → GenerationResult JSON."""

CLAIM_KEY_PREFIX = "genwire:claim:"
"""``genwire:claim:<request_id>`` → the fingerprint of the first request with that id (SET NX):
a later request with the same id and another fingerprint is an ``idempotency_conflict``."""


ROUTE_KEY_PREFIX = "genwire:route:"
"""``genwire:route:<request_id>`` → the route preprocess resolved first for the request (model
version, arm, shadow, policy revision; SET NX beside the claim, in the same round trip): a
redelivery reuses it, whatever the policy says by then."""


OWNER_KEY_PREFIX = "genwire:owner:"
"""``genwire:owner:<request_id>`` → the name of the API key that sent the request (SET NX)."""


def owner_key(request_id: str) -> str:
    """The Redis key of a request id's owning API key name."""
    return f"{OWNER_KEY_PREFIX}{request_id}"


def result_key(request_id: str) -> str:
    """The Redis key under which postprocess stores the result of ``request_id`` (SET NX, TTL)."""
    return f"{RESULT_KEY_PREFIX}{request_id}"


def claim_key(request_id: str) -> str:
    """The Redis key of a request id's idempotency claim."""
    return f"{CLAIM_KEY_PREFIX}{request_id}"


def route_key(request_id: str) -> str:
    """The Redis key of the route preprocess resolved first for ``request_id``."""
    return f"{ROUTE_KEY_PREFIX}{request_id}"


def claimed_fingerprint(value: bytes | str) -> str:
    """The fingerprint in a claim's value (``<fingerprint>`` or ``<fingerprint>:<owner token>``:
    the gateway adds a token of its own, so a retried ``SET NX`` still tells it that it won)."""
    text = value.decode() if isinstance(value, bytes) else value
    return text.split(":", 1)[0]


@dataclass(frozen=True)
class ClaimOutcome:
    """What a named request found in Redis."""

    owner: bool
    """This call claimed the id: it must publish the request."""
    result: GenerationResult | None = None
    """The id already has a stored result: answer with it."""
    conflict: bool = False
    """The id was claimed by a different request."""


class ResultStore:
    """Results (and the gateway's claims) in one Redis database.

    ``ttl_s`` is how long a result is kept (postprocess), and how long the claim of a finished
    named request is kept (gateway): as long as its result, so a repeat is answered with it.
    """

    def __init__(self, redis: Redis[bytes], *, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s

    @classmethod
    def connect(cls, url: str, *, ttl_s: int, timeout_s: float = 2.0) -> ResultStore:
        """A store on its own connection pool (``close`` closes it)."""
        return cls(connect(url, timeout_s=timeout_s), ttl_s=ttl_s)

    async def close(self) -> None:
        """Close the connection pool."""
        await self.redis.aclose()  # type: ignore[attr-defined]  # types-redis predates it

    # -- results (postprocess writes, the gateway reads) -------------------------------------

    async def get(self, request_id: str) -> GenerationResult | None:
        """The stored result of ``request_id``, if any."""
        raw = await self.redis.get(result_key(request_id))
        return None if raw is None else GenerationResult.model_validate_json(raw)

    async def put_first(self, result: GenerationResult) -> GenerationResult:
        """Store ``result``, or return the earlier one (a redelivery never changes the answer).

        One exception: an ``unavailable`` error (a dependency stayed down through every replay)
        was never an answer, so a real result of a later replay (``genwire dlq replay``)
        replaces it. A Redis failure is a ``RetryableError`` (the consumer waits it out).
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

    # -- claims of named requests (the gateway) ----------------------------------------------

    async def claim(self, request: GenerationRequest, ttl_s: float) -> ClaimOutcome:
        """Claim a request for ``ttl_s`` in one round trip: result?, claim it, whose is it?"""
        assert request.request_id is not None
        rid = request.request_id
        mine = fingerprint(request)
        # A token of this call: the Redis client retries a command that timed out, so a SET NX
        # that succeeded but answered late fails on the retry; the token still says we won.
        value = f"{mine}:{uuid.uuid4().hex[:16]}"
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(result_key(rid))
        pipe.set(claim_key(rid), value, nx=True, ex=max(1, math.ceil(ttl_s)))
        pipe.get(claim_key(rid))
        stored, _, holder = await pipe.execute()
        if holder is not None and claimed_fingerprint(holder) != mine:
            return ClaimOutcome(owner=False, conflict=True)
        if stored is not None:
            return ClaimOutcome(owner=False, result=GenerationResult.model_validate_json(stored))
        return ClaimOutcome(owner=holder is not None and holder.decode() == value)

    async def keep(self, request_id: str) -> None:
        """The request finished: keep its claim (its fingerprint) as long as results are kept."""
        await self.redis.expire(claim_key(request_id), self.ttl_s)

    async def release(self, request_id: str) -> None:
        """Drop a claim whose request was never published, so a retry may publish it."""
        await self.redis.delete(claim_key(request_id))

    # -- owners (the API key that sent a request; the gateway) -------------------------------

    async def own(self, request_id: str, name: str, ttl_s: float) -> str:
        """Record ``name`` as the owner of ``request_id`` unless one is recorded; returns the
        owner (``name``, or the earlier one). Kept ``ttl_s`` (the result's TTL and then some)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(owner_key(request_id), name, nx=True, ex=max(1, math.ceil(ttl_s)))
        pipe.get(owner_key(request_id))
        _, holder = await pipe.execute()
        return name if holder is None else holder.decode()

    async def owner(self, request_id: str) -> str | None:
        """The name of the API key that sent ``request_id`` (None: none recorded)."""
        raw = await self.redis.get(owner_key(request_id))
        return None if raw is None else raw.decode()

    async def known(self, request_id: str) -> bool:
        """Whether the id was claimed (accepted here and not expired)."""
        return bool(await self.redis.exists(claim_key(request_id)))


def _replaceable(stored: GenerationResult) -> bool:
    return stored.error is not None and stored.error.code == ErrorCode.UNAVAILABLE
