"""A request's claim outlives the gateway's short one once preprocess has it: a result stored
late (an outage waited out, a parked or dead-lettered record replayed) still finds the claim,
so another body under the same id is refused, never answered with the first body's result.

The gateway claims a named id for the caller's deadline and a grace; ``put_first`` only extends
a claim that still exists. ``RedisClaims.claim_routed`` extends a claim of its own fingerprint
to preprocess's ``claim_ttl_s`` (never shortening one, the value untouched)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from genwire_preprocess.stores import RedisClaims

from genwire.events import GenerationResult
from genwire.request import GenerationRequest, fingerprint
from genwire.results import (
    ResultStore,
    claim_key,
    claimed_digest,
    owner_key,
    published_digest,
    result_key,
    route_key,
)
from genwire.settings import CommonSettings

CLAIM_TTL_S = 120
"""Preprocess's claim TTL in these tests (the stack's is a day)."""
RESULT_TTL_S = 300
"""Postprocess's result TTL in these tests."""


@pytest.fixture
async def stores(infra: CommonSettings) -> AsyncIterator[tuple[RedisClaims, ResultStore]]:
    """Preprocess's claims and the shared result store on the stack's Redis."""
    claims = RedisClaims(infra.redis_url, ttl_s=CLAIM_TTL_S)
    results = ResultStore(claims.redis, ttl_s=RESULT_TTL_S)
    try:
        yield claims, results
    finally:
        await claims.close()


def _request(prompt: str, rid: str) -> GenerationRequest:
    return GenerationRequest(request_id=rid, prompt=prompt)


async def _eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 15.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not await check():  # noqa: ASYNC110 (Redis state, no event)
            await asyncio.sleep(0.05)


async def _cleanup(claims: RedisClaims, *rids: str) -> None:
    keys = [f(r) for r in rids for f in (claim_key, route_key, result_key)]
    await claims.redis.delete(*keys, *(f"{r}:gone" for r in rids))


async def test_a_late_result_keeps_another_body_out(
    stores: tuple[RedisClaims, ResultStore],
) -> None:
    """The audit's case: body A's result stored after the gateway's claim would have expired;
    body B under the same id must get idempotency_conflict, not 'answer to body A'."""
    claims, results = stores
    rid = f"hstage-late-{uuid.uuid4().hex[:8]}"
    body_a, body_b = _request("body A", rid), _request("body B", rid)
    published = body_a.model_dump_json().encode()
    try:
        # The gateway claims for 1 s (deadline + grace, shortened) with its token and digest.
        assert (await results.claim(body_a, 1, published=published)).owner
        gateway_value = await claims.redis.get(claim_key(rid))
        assert gateway_value is not None
        # A marker set after it with the same TTL: once it is gone, the gateway's TTL is over.
        await claims.redis.set(f"{rid}:gone", b"1", ex=1)
        held, _ = await claims.claim_routed(rid, fingerprint(body_a), "route")
        assert held == fingerprint(body_a)
        # Only the TTL changed: the gateway's fingerprint, token and digest are untouched.
        assert await claims.redis.get(claim_key(rid)) == gateway_value
        assert claimed_digest(gateway_value) == published_digest(published)
        assert 1 < await claims.redis.ttl(claim_key(rid)) <= CLAIM_TTL_S

        async def gateway_ttl_over() -> bool:
            return not await claims.redis.exists(f"{rid}:gone")

        await _eventually(gateway_ttl_over)
        assert await claims.redis.exists(claim_key(rid)) == 1  # preprocess's TTL holds it
        # The late result: put_first finds the claim and keeps it as long as the result.
        stored = await results.put_first(
            GenerationResult(request_id=rid, text="answer to body A", finish_reason="stop")
        )
        assert stored.text == "answer to body A"
        assert CLAIM_TTL_S < await claims.redis.ttl(claim_key(rid)) <= RESULT_TTL_S
        # Body B: refused by the gateway and by preprocess; body A's repeat gets its answer.
        other = await results.claim(body_b, 30)
        assert other.conflict and other.result is None and not other.owner
        held, _ = await claims.claim_routed(rid, fingerprint(body_b), "route")
        assert held == fingerprint(body_a)
        repeat = await results.claim(body_a, 30)
        assert repeat.result is not None and repeat.result.text == "answer to body A"
    finally:
        await _cleanup(claims, rid)


async def test_a_request_produced_straight_to_kafka_is_claimed_for_the_claim_ttl(
    stores: tuple[RedisClaims, ResultStore],
) -> None:
    """No gateway: preprocess claims the id first, for its whole TTL, and a later result keeps
    the claim at least as long as itself."""
    claims, results = stores
    rid = f"hstage-kafka-{uuid.uuid4().hex[:8]}"
    try:
        assert await claims.claim_routed(rid, "fp-a", "r") == ("fp-a", "r")
        assert await claims.redis.get(claim_key(rid)) == b"fp-a"
        assert CLAIM_TTL_S - 5 < await claims.redis.ttl(claim_key(rid)) <= CLAIM_TTL_S
        await results.put_first(GenerationResult(request_id=rid, text="a", finish_reason="stop"))
        assert CLAIM_TTL_S < await claims.redis.ttl(claim_key(rid)) <= RESULT_TTL_S
    finally:
        await _cleanup(claims, rid)


async def test_only_a_shorter_claim_of_the_same_body_is_extended(
    stores: tuple[RedisClaims, ResultStore],
) -> None:
    """Never shortened, never given an expiry it lacks, and another body's claim (its gateway
    may still free it) is left as it is."""
    claims, _ = stores
    longer, forever, theirs = (f"hstage-keep-{uuid.uuid4().hex[:8]}" for _ in range(3))
    try:
        await claims.redis.set(claim_key(longer), b"fp-a:tok:dig", ex=CLAIM_TTL_S * 10)
        assert (await claims.claim_routed(longer, "fp-a", "r"))[0] == "fp-a"
        assert await claims.redis.ttl(claim_key(longer)) > CLAIM_TTL_S
        await claims.redis.set(claim_key(forever), b"fp-a:tok")
        assert (await claims.claim_routed(forever, "fp-a", "r"))[0] == "fp-a"
        assert await claims.redis.ttl(claim_key(forever)) == -1
        await claims.redis.set(claim_key(theirs), b"fp-a:tok:dig", ex=5)
        assert (await claims.claim_routed(theirs, "fp-b", "r"))[0] == "fp-a"
        assert await claims.redis.ttl(claim_key(theirs)) <= 5
        # A fingerprint that merely starts like the holder's is another body's.
        assert (await claims.claim_routed(theirs, "fp-", "r"))[0] == "fp-a"
        assert await claims.redis.ttl(claim_key(theirs)) <= 5
        assert await claims.redis.get(claim_key(theirs)) == b"fp-a:tok:dig"
    finally:
        await _cleanup(claims, longer, forever, theirs)


async def test_the_owner_record_lives_as_long_as_the_claims_it_keeps(
    stores: tuple[RedisClaims, ResultStore],
) -> None:
    """The API key's owner record, written with the gateway's claim, is kept as long as the
    claim preprocess extends and the result postprocess stores: an id that outlived its owner
    record would be an unowned one, which its owner's own retry may not name."""
    claims, results = stores
    rid = f"hstage-owner-{uuid.uuid4().hex[:8]}"
    body = _request("body A", rid)
    try:
        claimed = await results.claim(body, 1, key_owner="alice", owner_ttl_s=2)
        assert claimed.owner and not claimed.foreign
        await claims.claim_routed(rid, fingerprint(body), "route")
        assert await claims.redis.ttl(owner_key(rid)) > CLAIM_TTL_S - 10
        await results.put_first(GenerationResult(request_id=rid, text="answer to body A"))
        assert await claims.redis.ttl(owner_key(rid)) > RESULT_TTL_S - 10
        # Alice's own retry still names it, and gets its answer.
        again = await results.claim(body, 1, key_owner="alice", owner_ttl_s=2)
        assert not again.foreign and again.result is not None
        assert again.result.text == "answer to body A"
    finally:
        await _cleanup(claims, rid)
        await claims.redis.delete(owner_key(rid))
