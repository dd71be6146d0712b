"""The limiter's scripts on the real Redis, with a short window so expiry can be watched:
all-or-nothing admission, the sliding window, the wait it reports, corrections, the day quota,
and two limiters (two gateways) sharing one count."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from genwire_gateway.limits import Limiter, LimitExceeded, TooLarge, limit_keys

from genwire.apikeys import KeyRecord, hash_key, new_key
from genwire.redisconn import connect
from genwire.settings import CommonSettings


@pytest.fixture
async def redis(infra: CommonSettings) -> AsyncIterator[Any]:
    client = connect(infra.redis_url)
    yield client
    await client.aclose()  # type: ignore[attr-defined]


def _record(**limits: Any) -> KeyRecord:
    return KeyRecord(
        name=f"lim-{uuid.uuid4().hex[:8]}", hash=hash_key(new_key()), scopes=["generate"], **limits
    )


async def _refused(limiter: Limiter, record: KeyRecord, tokens: int = 1) -> LimitExceeded:
    with pytest.raises(LimitExceeded) as info:
        await limiter.admit(record, tokens)
    return info.value


async def test_a_key_without_limits_costs_no_redis(redis: Any) -> None:
    assert await Limiter(redis).admit(_record(), 10_000) is None


async def test_rpm_window_slides_and_the_wait_is_when_room_comes_back(redis: Any) -> None:
    limiter = Limiter(redis, window_ms=1000, bucket_ms=50)
    record = _record(rpm=3)
    for _ in range(3):
        assert await limiter.admit(record, 1) is not None
    refusal = await _refused(limiter, record)
    assert refusal.code == "rate_limit_exceeded" and refusal.limit == "rpm"
    assert refusal.retry_after_s is not None and 0 < refusal.retry_after_s <= 1.05
    # The message names the wait too (docs/security.md), as the token limits' do.
    assert f"retry after {refusal.retry_after_s:.1f} s" in str(refusal)
    # Remembered: refused again without Redis until the wait has passed, with the wait left.
    again = limiter.refusal(record)
    assert again is not None and again.retry_after_s is not None
    assert again.message.endswith(f"retry after {again.retry_after_s:.1f} s")
    await asyncio.sleep(refusal.retry_after_s + 0.06)
    assert limiter.refusal(record) is None
    assert await limiter.admit(record, 1) is not None


async def test_a_refusal_charges_nothing(redis: Any) -> None:
    limiter = Limiter(redis)
    record = _record(rpm=100, tpm=50)
    assert await limiter.admit(record, 40) is not None
    refusal = await _refused(limiter, record, 20)  # over tpm: no request slot used either
    assert refusal.limit == "tpm"
    rpm_used = sum(int(v) for v in await redis.hvals(limit_keys(record.id)[0]))
    tpm_used = sum(int(v) for v in await redis.hvals(limit_keys(record.id)[1]))
    assert (rpm_used, tpm_used) == (1, 40)


async def test_corrections_give_back_and_charge_more(redis: Any) -> None:
    limiter = Limiter(redis)
    record = _record(tpm=100, tokens_per_day=1000)
    ticket = await limiter.admit(record, 90)
    assert ticket is not None
    await _refused(limiter, record, 20)
    await limiter.adjust(ticket, 10)  # used 10 of the 90 budgeted
    second = await limiter.admit(record, 80)
    assert second is not None
    await limiter.adjust(second, 85)  # used more than budgeted: charged
    assert sum(int(v) for v in await redis.hvals(limit_keys(record.id)[1])) == 95
    assert int(await redis.get(limit_keys(record.id)[2] + str(ticket.day))) == 95


async def test_tokens_per_day_and_budgets_that_can_never_pass(redis: Any) -> None:
    limiter = Limiter(redis)
    record = _record(tokens_per_day=100)
    assert await limiter.admit(record, 60) is not None
    refusal = await _refused(limiter, record, 60)
    assert refusal.code == "insufficient_quota" and refusal.limit == "tokens_per_day"
    assert refusal.retry_after_s is not None and 0 < refusal.retry_after_s <= 86_400
    with pytest.raises(TooLarge):
        await limiter.admit(record, 101)
    with pytest.raises(TooLarge):
        await limiter.admit(_record(tpm=10), 11)


async def test_two_limiters_share_one_count_under_concurrency(infra: CommonSettings) -> None:
    clients = [connect(infra.redis_url), connect(infra.redis_url)]
    try:
        limiters = [Limiter(c) for c in clients]
        record = _record(rpm=25, tpm=10_000)

        async def one(i: int) -> bool:
            try:
                return await limiters[i % 2].admit(record, 7) is not None
            except LimitExceeded:
                return False

        admitted = await asyncio.gather(*(one(i) for i in range(200)))
        assert sum(admitted) == 25
    finally:
        for c in clients:
            await c.aclose()  # type: ignore[attr-defined]


async def test_a_batch_is_charged_all_or_nothing(redis: Any) -> None:
    """``admit_all``: a batch's request slots and tokens in one admission. Without room for all
    of it nothing is charged (and single requests are not refused for its wait); one that the
    limits can never hold is ``TooLarge``, naming the limit."""
    limiter = Limiter(redis)
    record = _record(rpm=5, tpm=1000)
    assert await limiter.admit(record, 10) is not None
    with pytest.raises(LimitExceeded) as info:
        await limiter.admit_all(record, [10] * 5)
    assert info.value.limit == "rpm" and "this batch needs 5 requests, 4 are left" in str(
        info.value
    )
    assert limiter.refusal(record) is None  # a single request still fits: not remembered
    tickets = await limiter.admit_all(record, [10, 20, 30, 40])
    assert tickets is not None and [t.tokens for t in tickets] == [10, 20, 30, 40]
    rpm_used = sum(int(v) for v in await redis.hvals(limit_keys(record.id)[0]))
    tpm_used = sum(int(v) for v in await redis.hvals(limit_keys(record.id)[1]))
    assert (rpm_used, tpm_used) == (5, 110)
    with pytest.raises(TooLarge, match="5 requests per minute"):
        await limiter.admit_all(_record(rpm=5), [1] * 6)
    with pytest.raises(TooLarge, match="batch of 2 prompts is budgeted 120 tokens"):
        await limiter.admit_all(_record(tpm=100), [60, 60])
