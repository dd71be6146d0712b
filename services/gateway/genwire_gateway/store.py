"""Redis: stored results (written by postprocess) and the gateway's idempotency claims.

A named request (the caller chose its id) is claimed with ``SET NX`` before it is published:
the first caller owns it and publishes; a repeat finds the stored result, or waits for the one
in flight. The claim holds a fingerprint of the request, so reusing an id for a different
request is refused instead of answered with someone else's result. Anonymous requests (id
assigned here) skip Redis here: nothing can repeat them. The claim key and the fingerprint are
``genwire.request``'s: preprocess claims every request the same way, so a Kafka client that
reuses an id is refused like a gateway caller.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

from redis.asyncio import Redis

from genwire.events import GenerationResult
from genwire.request import (
    GenerationRequest,
    claim_key,
    claimed_fingerprint,
    fingerprint,
    result_key,
)


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
    """Reads results and manages claims in one Redis database."""

    def __init__(self, redis: Redis[bytes], *, claim_ttl_s: int) -> None:
        self._redis = redis
        self._claim_ttl_s = claim_ttl_s

    async def get(self, request_id: str) -> GenerationResult | None:
        """The stored result of ``request_id``, if any."""
        raw = await self._redis.get(result_key(request_id))
        return None if raw is None else GenerationResult.model_validate_json(raw)

    async def claim(self, request: GenerationRequest, ttl_s: float) -> ClaimOutcome:
        """Claim a request for ``ttl_s`` in one round trip: result?, claim it, whose is it?"""
        assert request.request_id is not None
        rid = request.request_id
        mine = fingerprint(request)
        # A token of this call: the Redis client retries a command that timed out, so a SET NX
        # that succeeded but answered late fails on the retry; the token still says we won.
        value = f"{mine}:{uuid.uuid4().hex[:16]}"
        pipe = self._redis.pipeline(transaction=False)
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
        await self._redis.expire(claim_key(request_id), self._claim_ttl_s)

    async def release(self, request_id: str) -> None:
        """Drop a claim whose request was never published, so a retry may publish it."""
        await self._redis.delete(claim_key(request_id))

    async def known(self, request_id: str) -> bool:
        """Whether the id was claimed (accepted here and not expired)."""
        return bool(await self._redis.exists(claim_key(request_id)))
