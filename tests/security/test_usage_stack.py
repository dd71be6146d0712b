"""Usage and ownership on the REAL running stack (gateway and postprocess as deployed).

- a request produced straight to ``genwire.requests`` is metered by postprocess, attributed to
  its ``genwire_principal`` header (else ``kafka``), once;
- a gateway request is metered once, by the gateway (postprocess emits nothing for it);
- ``GetResult`` and ``Cancel`` of another key's request are PERMISSION_DENIED unless the
  caller is an admin; a named id another key owns cannot be reused.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer
from genwire_cli.usage_cli import read_usage
from genwire_gateway.client import GenwireClient, GenwireClientError

from genwire.apikeys import resolve_api_key
from genwire.settings import CommonSettings
from genwire.telemetry import semconv as sc
from genwire.topics import Topic
from genwire.usage import KAFKA_PRINCIPAL, SOURCE_GATEWAY, SOURCE_KAFKA, UsageEvent

from .conftest import MakeKey

GATEWAY_GRPC = "127.0.0.1:50051"
MODEL = "genwire-gpt"


@pytest.fixture(scope="module")
async def producer(stack: CommonSettings) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap_servers)
    await p.start()
    yield p
    await p.stop()


async def _produce(producer: AIOKafkaProducer, principal: str | None) -> str:
    """A request straight to genwire.requests, as a Kafka client sends it."""
    rid = f"usage-{uuid.uuid4().hex[:12]}"
    body = {"prompt": f"Once upon a time {rid}", "max_tokens": 3, "model": MODEL}
    headers = [(sc.HEADER_PRINCIPAL, principal.encode())] if principal else []
    await producer.send_and_wait(
        Topic.REQUESTS, json.dumps(body).encode(), key=rid.encode(), headers=headers
    )
    return rid


async def _usage_of(stack: CommonSettings, since_ms: float, *rids: str) -> list[UsageEvent]:
    """Every usage event of ``rids`` once each has at least one."""
    async with asyncio.timeout(90):
        while True:
            found = await read_usage(stack.kafka_bootstrap_servers, since_ms)
            events = [e for e in found if e.request_id in rids]
            if {e.request_id for e in events} == set(rids):
                return events
            await asyncio.sleep(0.5)


async def test_kafka_clients_requests_are_metered_once_by_postprocess(
    stack: CommonSettings, producer: AIOKafkaProducer, make_key: MakeKey
) -> None:
    since = time.time() * 1000.0 - 1000
    key, record = await make_key()
    async with GenwireClient(GATEWAY_GRPC, api_key=key) as client:  # through the gateway
        through_gateway = (await client.generate("Once upon a time", max_tokens=3)).request_id
    named = await _produce(producer, "team-kafka")
    anonymous = await _produce(producer, None)
    # The gateway request finished before the Kafka ones were sent: by the time theirs are
    # readable, an event postprocess would have emitted for it is too.
    events = await _usage_of(stack, since, named, anonymous, through_gateway)
    by_id: dict[str, list[UsageEvent]] = {}
    for e in events:
        by_id.setdefault(e.request_id, []).append(e)
    assert [len(v) for v in by_id.values()] == [1, 1, 1]
    (n,), (a,), (g,) = by_id[named], by_id[anonymous], by_id[through_gateway]
    assert (n.key_name, n.source, n.model) == ("team-kafka", SOURCE_KAFKA, MODEL)
    assert n.prompt_tokens > 0 and n.total_tokens == n.prompt_tokens + n.completion_tokens
    assert n.model_version and n.finish_reason and n.latency_ms > 0
    assert (a.key_name, a.source) == (KAFKA_PRINCIPAL, SOURCE_KAFKA)
    assert (g.key_name, g.source, g.key_id) == (record.name, SOURCE_GATEWAY, record.id)


async def test_only_the_owners_key_or_an_admin_reads_or_cancels_a_request(
    stack: CommonSettings, producer: AIOKafkaProducer, make_key: MakeKey
) -> None:
    owner_key, _ = await make_key()
    other_key, _ = await make_key()
    async with (
        GenwireClient(GATEWAY_GRPC, api_key=owner_key) as owner,
        GenwireClient(GATEWAY_GRPC, api_key=other_key) as other,
        GenwireClient(GATEWAY_GRPC, api_key=resolve_api_key()) as admin,
    ):
        rid = await owner.submit("Once upon a time", max_tokens=3)
        for call in (other.get_result(rid, wait_s=1.0), other.cancel(rid)):
            with pytest.raises(GenwireClientError) as info:
                await call
            assert info.value.status == "PERMISSION_DENIED"
            assert "not sent with this API key" in info.value.message
        assert (await owner.get_result(rid, wait_s=30)).status == "done"
        assert (await admin.get_result(rid)).status == "done"
        # A named id another key owns cannot be reused to read its answer.
        with pytest.raises(GenwireClientError) as info:
            await other.generate("Once upon a time", max_tokens=3, request_id=rid)
        assert info.value.status == "PERMISSION_DENIED"
        # An id nobody knows is still just not found.
        assert (await other.get_result(f"nobody-{uuid.uuid4().hex}")).status == "not_found"
        # A Kafka client's request belongs to no key: an admin's to read.
        kafka_rid = await _produce(producer, "team-kafka")
        assert (await admin.get_result(kafka_rid, wait_s=30)).status == "done"
        with pytest.raises(GenwireClientError) as info:
            await other.get_result(kafka_rid)
        assert info.value.status == "PERMISSION_DENIED"
        assert await owner.cancel(rid)  # the owner may (a finished request: a no-op)
