"""``ResultStore``'s one-round-trip scripts against a private Redis server (its own port and
directory, no persistence; no stack needed): the gateway's claim with its owner record, and
postprocess's ``put_first`` keeping the id's claim as long as the result."""

from __future__ import annotations

import uuid

import pytest
from redis.asyncio import Redis

from genwire.errors import RetryableError
from genwire.events import GenerationResult
from genwire.redisconn import REDIS
from genwire.request import GenerationRequest, fingerprint
from genwire.results import ResultStore, claim_key, claimed_fingerprint, owner_key, result_key

from .private_redis import needs_redis

pytestmark = needs_redis


def _request(prompt: str = "hi") -> GenerationRequest:
    return GenerationRequest(request_id=f"rs-{uuid.uuid4().hex[:10]}", prompt=prompt)


def _result(rid: str, text: str = "done") -> GenerationResult:
    return GenerationResult(request_id=rid, text=text, finish_reason="stop")


async def test_a_claim_is_one_round_trip_that_owns_waits_or_refuses(redis: Redis[bytes]) -> None:
    store = ResultStore(redis, ttl_s=600)
    request = _request()
    rid = request.request_id or ""
    first = await store.claim(request, 30)
    assert first.owner and not first.conflict and first.result is None
    assert claimed_fingerprint(await redis.get(claim_key(rid)) or b"") == fingerprint(request)
    assert 0 < await redis.ttl(claim_key(rid)) <= 30
    again = await store.claim(request, 30)  # a repeat in flight: waits, does not publish
    assert not again.owner and not again.conflict and again.result is None
    other = await store.claim(request.model_copy(update={"prompt": "another"}), 30)
    assert other.conflict and not other.owner
    await redis.set(result_key(rid), _result(rid).model_dump_json())
    done = await store.claim(request, 30)
    assert done.result is not None and done.result.text == "done" and not done.owner


async def test_a_claim_records_its_key_and_refuses_another_keys_id(redis: Redis[bytes]) -> None:
    store = ResultStore(redis, ttl_s=600)
    request = _request()
    rid = request.request_id or ""
    mine = await store.claim(request, 30, key_owner="team-a", owner_ttl_s=900)
    assert mine.owner and mine.key_owner == "team-a" and not mine.foreign
    assert await store.owner(rid) == "team-a"
    assert 600 < await redis.ttl(owner_key(rid)) <= 900
    # Another key, same id: refused before anything is claimed or read.
    fresh = _request()
    await store.own(fresh.request_id or "", "team-a", 900)
    theirs = await store.claim(fresh, 30, key_owner="team-b", owner_ttl_s=900)
    assert theirs.foreign and theirs.key_owner == "team-a" and not theirs.owner
    assert await redis.exists(claim_key(fresh.request_id or "")) == 0
    # An admin may use it (and the owner stays the first key).
    admin = await store.claim(fresh, 30, key_owner="ops", owner_ttl_s=900, any_owner=True)
    assert admin.owner and not admin.foreign and admin.key_owner == "team-a"
    # The same key repeating its own id is not refused.
    repeat = await store.claim(request, 30, key_owner="team-a", owner_ttl_s=900)
    assert not repeat.foreign and not repeat.owner and not repeat.conflict


async def test_storing_a_result_keeps_its_claim_as_long(redis: Redis[bytes]) -> None:
    """The gateway's in-flight claim (deadline + grace) becomes the result's TTL when the
    result is stored: no round trip of the gateway after the result."""
    store = ResultStore(redis, ttl_s=600)
    request = _request()
    rid = request.request_id or ""
    assert (await store.claim(request, 30)).owner
    stored = await store.put_first(_result(rid))
    assert stored.text == "done"
    assert 30 < await redis.ttl(claim_key(rid)) <= 600
    # A redelivery gets the first result; a longer claim (preprocess's own TTL) is not cut.
    await redis.expire(claim_key(rid), 5000)
    again = await store.put_first(_result(rid, text="other"))
    assert again.text == "done"
    assert await redis.ttl(claim_key(rid)) > 600
    # A result whose id nobody claimed (a Kafka client without idempotency checks) creates
    # no claim.
    lone = f"rs-{uuid.uuid4().hex[:10]}"
    await store.put_first(_result(lone))
    assert await redis.exists(claim_key(lone)) == 0
    assert 0 < await redis.ttl(result_key(lone)) <= 600


async def test_owners_of_anonymous_requests_go_in_one_write(redis: Redis[bytes]) -> None:
    store = ResultStore(redis, ttl_s=600)
    ids = [f"rs-{uuid.uuid4().hex[:10]}" for _ in range(3)]
    await store.own(ids[0], "earlier", 900)
    await store.own_all([(rid, "team-a") for rid in ids], 900)
    assert [await store.owner(rid) for rid in ids] == ["earlier", "team-a", "team-a"]
    assert 0 < await redis.ttl(owner_key(ids[2])) <= 900


async def test_a_full_redis_is_a_dependency_to_wait_for_not_an_answer(redis: Redis[bytes]) -> None:
    """At ``maxmemory`` with no eviction (the Kubernetes manifest's Redis), a result that cannot
    be stored is a ``RetryableError`` naming Redis: the record waits (and /readyz says why);
    what is stored is still read."""
    store = ResultStore(redis, ttl_s=600)
    kept = f"rs-{uuid.uuid4().hex[:10]}"
    await store.put_first(_result(kept))
    await redis.config_set("maxmemory-policy", "noeviction")
    await redis.config_set("maxmemory", "1")  # below what is used: every write refused
    try:
        late = f"rs-{uuid.uuid4().hex[:10]}"
        with pytest.raises(RetryableError) as refused:
            await store.put_first(_result(late))
        assert refused.value.dependency == REDIS and "maxmemory" in str(refused.value)
        assert await redis.exists(result_key(late)) == 0
        stored = await store.get(kept)
        assert stored is not None and stored.text == "done"
    finally:
        await redis.config_set("maxmemory", "0")
    assert (await store.put_first(_result(late))).text == "done"  # room again: stored
