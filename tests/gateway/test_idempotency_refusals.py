"""An Idempotency-Key whose request preprocess refused before it ran (context too long, no such
model, a token id out of range...) is not used up: a different request takes it in the claim's
script, as it may after a 400 the gateway finds itself (the IETF idempotency-key draft, Stripe);
the refused request's own repeat still gets its refusal. Against a private Redis server."""

from __future__ import annotations

import uuid

import pytest
from genwire_preprocess.stores import RedisClaims
from redis.asyncio import Redis

from genwire.events import ErrorInfo, GenerationResult
from genwire.request import ErrorCode, GenerationRequest, fingerprint
from genwire.results import (
    RETAKABLE,
    ResultStore,
    claim_key,
    claimed_fingerprint,
    result_key,
    route_key,
)

from .private_redis import needs_redis

pytestmark = needs_redis


def _pair() -> tuple[GenerationRequest, GenerationRequest]:
    """A refused request and the different one its caller sends next under the same key."""
    rid = f"idem-{uuid.uuid4().hex[:10]}"
    refused = GenerationRequest(request_id=rid, prompt="hello " * 300, max_tokens=2)
    return refused, GenerationRequest(request_id=rid, prompt="hello", max_tokens=2)


def _refusal(rid: str, code: str) -> GenerationResult:
    error = ErrorInfo(code=code, message=f"refused: {code}", param="prompt")
    return GenerationResult(request_id=rid, finish_reason="error", error=error)


async def _refused(store: ResultStore, request: GenerationRequest, code: str) -> None:
    """The gateway claims and publishes ``request``; preprocess records its route and refuses
    it; postprocess stores the refusal (the claim now lives as long as it)."""
    rid = request.request_id or ""
    assert (await store.claim(request, 30)).owner
    await store.redis.set(route_key(rid), "1|control||0", ex=600)
    await store.put_first(_refusal(rid, code))


@pytest.mark.parametrize("code", sorted(RETAKABLE))
async def test_a_different_request_takes_a_key_refused_before_it_ran(
    redis: Redis[bytes], code: str
) -> None:
    store = ResultStore(redis, ttl_s=86_400)
    refused, fixed = _pair()
    rid = refused.request_id or ""
    await _refused(store, refused, code)
    repeat = await store.claim(refused, 30)  # its own repeat: the stored refusal, again
    assert repeat.result is not None and repeat.result.error is not None
    assert repeat.result.error.code == code and not repeat.owner and not repeat.conflict

    taken = await store.claim(fixed, 30)
    assert taken.owner and not taken.conflict and taken.result is None
    assert claimed_fingerprint(await redis.get(claim_key(rid)) or b"") == fingerprint(fixed)
    assert 0 < await redis.ttl(claim_key(rid)) <= 30  # in flight again: the caller's deadline
    assert await redis.exists(result_key(rid), route_key(rid)) == 0
    late = await store.claim(refused, 30)  # the id is the new request's now
    assert late.conflict and not late.owner


async def test_preprocess_claims_the_new_request_as_the_holder(
    redis: Redis[bytes], redis_url: str
) -> None:
    """The new request's record claims in preprocess as the holder (a new route recorded);
    the refused one's, redelivered, does not."""
    store = ResultStore(redis, ttl_s=86_400)
    refused, fixed = _pair()
    rid = refused.request_id or ""
    await _refused(store, refused, ErrorCode.CONTEXT_LENGTH_EXCEEDED)
    assert (await store.claim(fixed, 30)).owner
    claims = RedisClaims(redis_url, ttl_s=600)
    try:
        held, route = await claims.claim_routed(rid, fingerprint(fixed), "2|control||0")
        assert held == fingerprint(fixed) and route == "2|control||0"
        held, _ = await claims.claim_routed(rid, fingerprint(refused), "1|control||0")
        assert held != fingerprint(refused)
    finally:
        await claims.close()


@pytest.mark.parametrize(
    "code",
    [ErrorCode.CONTENT_FILTERED, ErrorCode.UNAVAILABLE, ErrorCode.DEADLINE_EXCEEDED, None],
)
async def test_other_outcomes_still_hold_their_key(
    redis: Redis[bytes], code: ErrorCode | None
) -> None:
    """A filtered prompt (another request must not get round the filter), a server-side
    failure (its own request's real result replaces it), an expired deadline and an answer
    keep the key: a different request under it is a conflict."""
    store = ResultStore(redis, ttl_s=86_400)
    first, other = _pair()
    rid = first.request_id or ""
    assert (await store.claim(first, 30)).owner
    if code is None:
        await store.put_first(GenerationResult(request_id=rid, text="hi", finish_reason="stop"))
    else:
        await store.put_first(_refusal(rid, code))
    outcome = await store.claim(other, 30)
    assert outcome.conflict and not outcome.owner
    assert await redis.exists(result_key(rid)) == 1


async def test_a_refusal_in_flight_or_of_another_key_is_not_taken(redis: Redis[bytes]) -> None:
    """In flight (no result yet): a conflict, as before. Another API key's id: ``foreign``,
    nothing read or taken, refusal or not."""
    store = ResultStore(redis, ttl_s=86_400)
    first, other = _pair()
    rid = first.request_id or ""
    assert (await store.claim(first, 30, key_owner="team-a", owner_ttl_s=900)).owner
    assert (await store.claim(other, 30, key_owner="team-a", owner_ttl_s=900)).conflict
    await store.put_first(_refusal(rid, ErrorCode.CONTEXT_LENGTH_EXCEEDED))
    theirs = await store.claim(other, 30, key_owner="team-b", owner_ttl_s=900)
    assert theirs.foreign and not theirs.owner
    assert await redis.exists(result_key(rid)) == 1
    mine = await store.claim(other, 30, key_owner="team-a", owner_ttl_s=900)
    assert mine.owner and mine.key_owner == "team-a"
