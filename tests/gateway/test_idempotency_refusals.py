"""A different request under an Idempotency-Key whose request was refused is still a conflict
(an id carries one request: the refused one's late records, redeliveries, cancels and usage
stay its own), but the 409 quotes that refusal, so the caller learns why the key is used up
and that a corrected request needs a new one. Against a private Redis server."""

from __future__ import annotations

import uuid

import pytest
from genwire_gateway.handlers import _conflict
from redis.asyncio import Redis

from genwire.events import ErrorInfo, GenerationResult
from genwire.request import ErrorCode, GenerationRequest
from genwire.results import ResultStore, result_key

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


async def test_a_different_request_under_a_refused_key_is_a_conflict_quoting_the_refusal(
    redis: Redis[bytes],
) -> None:
    store = ResultStore(redis, ttl_s=86_400)
    refused, fixed = _pair()
    rid = refused.request_id or ""
    assert (await store.claim(refused, 30)).owner
    await store.put_first(_refusal(rid, ErrorCode.CONTEXT_LENGTH_EXCEEDED))
    repeat = await store.claim(refused, 30)  # its own repeat: the stored refusal, again
    assert repeat.result is not None and repeat.result.error is not None
    assert not repeat.owner and not repeat.conflict
    other = await store.claim(fixed, 30)
    assert other.conflict and not other.owner and await redis.exists(result_key(rid)) == 1
    assert other.result is None  # the other request's result is not this caller's
    error = _conflict(rid, other.refused)
    assert error.code == ErrorCode.IDEMPOTENCY_CONFLICT
    assert "context_length_exceeded: refused: context_length_exceeded" in error.message
    assert "new key" in error.message


@pytest.mark.parametrize("answered", [True, False])
async def test_a_conflict_with_an_answer_or_one_in_flight_quotes_nothing(
    redis: Redis[bytes], answered: bool
) -> None:
    """Another request's text is never quoted, nor is anything while it is in flight."""
    store = ResultStore(redis, ttl_s=86_400)
    first, other = _pair()
    rid = first.request_id or ""
    assert (await store.claim(first, 30)).owner
    if answered:
        await store.put_first(GenerationResult(request_id=rid, text="secret", finish_reason="stop"))
    outcome = await store.claim(other, 30)
    assert outcome.conflict and not outcome.owner
    assert outcome.result is None and outcome.refused is None
    message = _conflict(rid, outcome.refused).message
    assert message == f"request id {rid!r} was already used for a different request"
