"""The audit's attacks on request ownership, replayed against ``MeteredGateway`` with the real
``ResultStore`` scripts on a private redis-server (its own port, no persistence; no stack
needed, skipped without ``redis-server``) and an in-memory producer:

1. taking ownership of an id that exists with no owner (a Kafka client's ``anon-<p>-<o>``) by
   naming it in a completion or a ``Submit``, then reading it;
2. a ``GetResult`` that waits on an id nobody knows yet, to get the answer of whoever sends it;
3. a ``Cancel`` of an id nobody knows yet, which inference would remember and apply to it;
4. a flood of waiting ``GetResult`` calls by one key.

The logic without Redis (wait slots, the queued owners of anonymous requests) is at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import pytest
from genwire_gateway import usage
from genwire_gateway.auth import PRINCIPAL, Principal
from genwire_gateway.config import GatewaySettings
from genwire_gateway.errors import PERMISSION_DENIED, RATE_LIMITED, GatewayError
from genwire_gateway.handlers import ResultStatus
from genwire_gateway.replies import WaiterRegistry
from genwire_gateway.usage import MeteredGateway, UsageMetrics
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from genwire.apikeys import SCOPE_ADMIN, SCOPE_GENERATE, KeyRecord
from genwire.events import GenerationResult, Usage
from genwire.request import GenerationRequest
from genwire.results import ResultStore, claim_key, owner_key
from tests.gateway.private_redis import needs_redis
from tests.gateway.test_handlers import FakeProducer


def _echo(request: GenerationRequest, registry: WaiterRegistry) -> None:
    """The pipeline: answers every request at once, with its owner's secret."""
    assert request.request_id is not None
    registry.resolve(_result(request.request_id, f"secret of {request.prompt}"))


def _result(rid: str, text: str) -> GenerationResult:
    counts = Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3)
    return GenerationResult(request_id=rid, text=text, finish_reason="stop", usage=counts)


def _gateway(
    redis: Redis[bytes], reply: Any = _echo, **kwargs: Any
) -> tuple[MeteredGateway, FakeProducer, ResultStore]:
    registry = WaiterRegistry()
    producer = FakeProducer(registry, reply)
    store = ResultStore(redis, ttl_s=600)
    gateway = MeteredGateway(
        GatewaySettings(result_poll_s=0.05),
        producer,
        store,
        registry,
        usage_metrics=UsageMetrics(CollectorRegistry()),
        **kwargs,
    )
    return gateway, producer, store


def _as(name: str, *scopes: str) -> None:
    record = KeyRecord(name=name, hash=name * 8, scopes=list(scopes) or [SCOPE_GENERATE])
    PRINCIPAL.set(Principal(record=record))


def _rid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def _kafka_request(redis: Redis[bytes], store: ResultStore, *, claimed: bool) -> str:
    """A request a Kafka client produced (no key owns it; preprocess names an id-less one
    ``anon-<partition>-<offset>``), answered: its result stored, its id claimed or not (a
    record without an id, or with idempotency checks off, has no claim)."""
    rid = _rid("anon-0")
    if claimed:
        await redis.set(claim_key(rid), "preprocess-fingerprint", ex=600)
    await store.put_first(_result(rid, "the kafka client's secret"))
    return rid


async def _refused(call: Any) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        await call
    assert info.value.code == PERMISSION_DENIED, info.value
    return info.value


# -- 1. an existing unowned id is not the first key's that names it ------------------------------


@needs_redis
@pytest.mark.parametrize("claimed", [True, False], ids=["claimed", "result-only"])
async def test_naming_a_kafka_clients_id_takes_no_ownership_of_it(
    redis: Redis[bytes], claimed: bool
) -> None:
    """The attack: a completion (HTTP ``Idempotency-Key``, gRPC ``request_id``) naming the id
    was answered ``idempotency_conflict``, but left the key recorded as its owner, and
    ``GetResult`` then returned the Kafka client's text. Now: refused before anything is
    claimed, no owner recorded, and the read refused."""
    gateway, producer, store = _gateway(redis)
    rid = await _kafka_request(redis, store, claimed=claimed)
    _as("mallory")
    await _refused(gateway.generate(gateway.prepare({"prompt": "x"}, request_id=rid)))
    await _refused(gateway.submit(gateway.prepare({"prompt": "x"}, request_id=rid)))
    assert await redis.exists(owner_key(rid)) == 0
    assert producer.requests == []
    await _refused(gateway.get_result(rid))
    await _refused(gateway.cancel(rid))
    assert producer.cancels() == []
    # An admin keeps reading it, and naming it does not make it the admin's either.
    _as("ops", SCOPE_ADMIN)
    status, result = await gateway.get_result(rid)
    assert status == ResultStatus.DONE and result is not None
    with contextlib.suppress(GatewayError):  # idempotency_conflict: another fingerprint
        await gateway.generate(gateway.prepare({"prompt": "x"}, request_id=rid))
    assert await redis.exists(owner_key(rid)) == 0


@needs_redis
async def test_the_store_records_an_owner_only_for_a_new_id(redis: Redis[bytes]) -> None:
    """``claim`` and ``own`` (the scripts): an owner only for an id with no owner, claim or
    result; an existing unowned id is ``foreign`` (nothing claimed) or None."""
    store = ResultStore(redis, ttl_s=600)
    taken = await _kafka_request(redis, store, claimed=True)
    request = GenerationRequest(request_id=taken, prompt="x")
    claim = await store.claim(request, 30, key_owner="mallory", owner_ttl_s=900)
    assert claim.foreign and not claim.owner and claim.result is None
    assert await store.own(taken, "mallory", 900) is None
    assert await store.owner(taken) is None
    admin = await store.claim(request, 30, key_owner="ops", owner_ttl_s=900, any_owner=True)
    assert not admin.foreign and admin.key_owner is None and await store.owner(taken) is None
    # A new id is still the first key's, in the claim or by ``own``; then the key's own again.
    for fresh in (_rid("order"), _rid("job")):
        if fresh.startswith("order"):
            mine = await store.claim(
                GenerationRequest(request_id=fresh, prompt="x"), 30, key_owner="alice"
            )
            assert mine.owner and mine.key_owner == "alice"
        else:
            assert await store.own(fresh, "alice", 900) == "alice"
        assert await store.own(fresh, "alice", 900) == "alice"
        assert await store.own(fresh, "mallory", 900) == "alice"
    assert (await store.ownership(taken)).known
    unknown = await store.ownership(_rid("nobody"))
    assert unknown.owner is None and not unknown.known


# -- 2. no wait on an id nobody knows; the owner checked again after a wait ----------------------


@needs_redis
async def test_a_wait_on_an_id_nobody_knows_cannot_catch_its_later_owners_answer(
    redis: Redis[bytes],
) -> None:
    """The attack: mallory waits (up to 600 s) on ``order-42`` before alice sends it; the
    check passed (nobody knew the id), and the wait returned alice's answer. Now: not found
    at once."""
    gateway, _, store = _gateway(redis)
    rid = _rid("order")
    _as("mallory")
    started = time.monotonic()
    waiting = asyncio.create_task(gateway.get_result(rid, wait_s=30.0))
    ended: list[float] = []
    waiting.add_done_callback(lambda _: ended.append(time.monotonic()))
    await asyncio.sleep(0.2)
    _as("alice")
    answer = await gateway.generate(gateway.prepare({"prompt": "alice"}, request_id=rid))
    await store.put_first(answer)  # as postprocess does
    status, result = await waiting
    assert (status, result) == (ResultStatus.NOT_FOUND, None)
    # Not the 30 s wait (its own end, not alice's calls after; room for a loaded machine)
    assert ended[0] - started < 10.0
    # Alice reads her own (waiting or not); mallory is refused now that the id is hers.
    assert (await gateway.get_result(rid, wait_s=1.0))[0] == ResultStatus.DONE
    _as("mallory")
    await _refused(gateway.get_result(rid, wait_s=1.0))


@needs_redis
async def test_a_result_found_after_a_wait_goes_only_to_the_ids_owner_then(
    redis: Redis[bytes],
) -> None:
    """What was checked before a wait may change while it lasts (here: mallory's record ends
    and alice's request takes the id): the answer is checked against its owner again."""
    gateway, _, store = _gateway(redis)
    rid = _rid("order")
    assert await store.own(rid, "mallory", 900) == "mallory"
    _as("mallory")
    waiting = asyncio.create_task(gateway.get_result(rid, wait_s=3.0))
    await asyncio.sleep(0.2)
    await redis.delete(owner_key(rid))
    _as("alice")
    answer = await gateway.generate(gateway.prepare({"prompt": "alice"}, request_id=rid))
    await store.put_first(answer)
    await _refused(waiting)


# -- 3. no early cancel of an id nobody knows ----------------------------------------------------


@needs_redis
async def test_a_cancel_of_an_id_nobody_knows_is_not_published(redis: Redis[bytes]) -> None:
    """The attack: mallory cancels ``order-43`` before alice sends it; inference remembers the
    cancel (600 s) and alice's request ends ``cancelled``, empty, stored for a day. Now it is
    not published (``known`` stays false); an admin's still is."""
    gateway, producer, _ = _gateway(redis)
    rid = _rid("order")
    _as("mallory")
    published = await gateway.cancel(rid, "early")
    assert producer.cancels() == []
    assert published is False
    _as("alice")
    answer = await gateway.generate(gateway.prepare({"prompt": "alice"}, request_id=rid))
    assert answer.text == "secret of alice"
    assert await gateway.cancel(rid) is True  # the owner's cancel is published
    _as("ops", SCOPE_ADMIN)
    other = _rid("order")
    assert await gateway.cancel(other) is True
    assert producer.cancels() == [rid, other]


@needs_redis
async def test_the_callers_own_anonymous_request_is_its_own_before_its_record_is_written(
    redis: Redis[bytes],
) -> None:
    """An anonymous request's owner record is written in the background: its caller's cancel
    (and read) right after the answer must not wait for it, nor be taken for an unknown id;
    another key's is refused."""
    gateway, producer, store = _gateway(redis)
    gate = asyncio.Event()
    write_all = store.own_all

    async def slow_own_all(owners: list[tuple[str, str]], ttl_s: float) -> None:
        await gate.wait()
        await write_all(owners, ttl_s)

    store.own_all = slow_own_all  # type: ignore[method-assign]
    _as("alice")
    prepared = gateway.prepare({"prompt": "alice"})
    await gateway.generate(prepared)
    rid = prepared.request_id
    assert await redis.exists(owner_key(rid)) == 0  # not written yet
    published = await gateway.cancel(rid)
    assert producer.cancels() == [rid]
    assert published is True
    _as("mallory")
    await _refused(gateway.cancel(rid))
    await _refused(gateway.get_result(rid))
    gate.set()
    await gateway.drain()
    assert await store.owner(rid) == "alice"
    _as("alice")
    await gateway.get_result(rid)  # hers: no refusal


# -- 4. waiting GetResult calls per key ----------------------------------------------------------


@needs_redis
async def test_a_key_waits_on_at_most_so_many_results_at_once(redis: Redis[bytes]) -> None:
    """``GetResult`` takes no request slot: its waits are bounded per key name instead."""
    gateway, _, store = _gateway(redis, reply=None, max_waits_per_key=2)
    ids = [_rid("job") for _ in range(3)]
    for rid in ids:
        assert await store.own(rid, "alice", 900) == "alice"
    _as("alice")
    waits = [asyncio.create_task(gateway.get_result(rid, wait_s=5.0)) for rid in ids[:2]]
    await asyncio.sleep(0.1)
    with pytest.raises(GatewayError) as info:
        await gateway.get_result(ids[2], wait_s=5.0)
    assert info.value.code == RATE_LIMITED and "GetResult" in info.value.message
    assert await gateway.get_result(ids[2]) == (ResultStatus.NOT_FOUND, None)  # no wait: no slot
    _as("bob")  # another key has slots of its own
    assert (await gateway.get_result(_rid("nobody"), wait_s=5.0))[0] == ResultStatus.NOT_FOUND
    for task in waits:
        task.cancel()
    await asyncio.gather(*waits, return_exceptions=True)
    _as("alice")
    await store.put_first(_result(ids[2], "done"))
    assert (await gateway.get_result(ids[2], wait_s=5.0))[0] == ResultStatus.DONE


# -- the logic, without Redis --------------------------------------------------------------------


def test_wait_slots_are_per_key_and_given_back() -> None:
    slots = usage.WaitSlots(2)
    counted: list[tuple[str, str]] = []

    def count(name: str, outcome: str) -> None:
        counted.append((name, outcome))

    with slots.hold("alice", count), slots.hold("alice", count):
        with pytest.raises(GatewayError) as info, slots.hold("alice", count):
            pass
        assert info.value.code == RATE_LIMITED
        with slots.hold("bob", count):
            assert (slots.held("alice"), slots.held("bob")) == (2, 1)
    assert counted == [("alice", "rate_limited")]
    assert (slots.held("alice"), slots.held("bob")) == (0, 0)
    assert slots._held == {}  # only the names waiting now


class _OwnersStore:
    """``ResultStore.own_all`` that fails or waits on a gate."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.fail = False

    async def own_all(self, owners: list[tuple[str, str]], ttl_s: float) -> None:
        await self.gate.wait()
        if self.fail:
            raise ConnectionError("redis down")


async def test_queued_owners_are_known_until_their_write_ends() -> None:
    """``OwnerWriter.queued``: the anonymous requests' owners not written yet (queued, or in
    a write in flight); forgotten once the write ends, whether it worked or not."""
    store = _OwnersStore()
    writer = usage.OwnerWriter(store, lambda: 900.0)  # type: ignore[arg-type]
    writer.add("a-1", "alice")
    await asyncio.sleep(0)  # the write of a-1 is in flight
    writer.add("a-2", "alice")  # queued for the next write
    assert (writer.queued("a-1"), writer.queued("a-2"), writer.queued("b")) == (
        "alice",
        "alice",
        None,
    )
    store.fail = True
    store.gate.set()
    await writer.flushed(1.0)
    assert writer.queued("a-1") is None and writer.queued("a-2") is None
