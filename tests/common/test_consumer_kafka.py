"""EventConsumer against the real broker: commit after output, DLQ, retries, redelivery."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from genwire.errors import GenwireError, RetryableError
from genwire.events import Event, GenerationResult, PreparedRequest, dump
from genwire.kafka import EventConsumer, EventProducer
from genwire.kafka import consumer as consumer_module
from genwire.telemetry import semconv as sc
from genwire.topics import Topic

from .support import _committed, _prepared, _read

# Each test runs on both clients of the data path (``kafka_client``, tests/conftest.py).
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("kafka_client")]


def _consumer(
    bootstrap: str,
    topic: str,
    producer: EventProducer,
    handler: object,
    group: str,
    failure_events: object = None,
    **options: Any,
) -> EventConsumer[PreparedRequest]:
    return EventConsumer(
        topic=topic,
        group_id=group,
        model=PreparedRequest,
        handler=handler,  # type: ignore[arg-type]
        producer=producer,
        bootstrap_servers=bootstrap,
        stage="test",
        concurrency=8,
        outage_budget_s=5.0,
        retry_backoff_s=0.01,
        failure_events=failure_events,  # type: ignore[arg-type]
        **options,
    )


async def test_outputs_published_then_committed_and_bad_input_dead_lettered(
    env: tuple[str, str, EventProducer], kafka_client: str
) -> None:
    bootstrap, topic, producer = env
    run = uuid.uuid4().hex[:8]
    attempts: dict[str, int] = {}

    async def handler(event: PreparedRequest) -> Event:
        attempts[event.request_id] = attempts.get(event.request_id, 0) + 1
        if event.request_id.endswith("flaky") and attempts[event.request_id] < 3:
            raise RetryableError("not yet")
        return GenerationResult(request_id=event.request_id, text="done")

    def failure_events(record: ConsumerRecord[bytes, bytes], err: GenwireError) -> Sequence[Event]:
        rid = (record.key or b"").decode()
        return [GenerationResult(request_id=rid, error={"code": err.code, "message": err.message})]

    good, flaky, bad = f"{run}-good", f"{run}-flaky", f"{run}-bad"
    for rid in (good, flaky):
        await (await producer.send(topic, dump(_prepared(rid)), key=rid.encode()))
    await (await producer.send(topic, b"{not json", key=bad.encode()))
    group = f"test-{run}"
    consumer = _consumer(bootstrap, topic, producer, handler, group, failure_events)
    clients = {
        "aiokafka": ("AIOKafkaConsumer", "AIOKafkaProducer"),
        "librdkafka": ("RdConsumer", "RdProducer"),
    }
    assert (type(consumer._consumer).__name__, type(producer._producer).__name__) == clients[
        kafka_client
    ]
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    try:
        results = await _read(bootstrap, Topic.RESULTS, {k.encode() for k in (good, flaky, bad)})
        dead = await _read(bootstrap, Topic.DLQ, {bad.encode()})
    finally:
        await consumer.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    by_key = {r.key: GenerationResult.model_validate_json(r.value) for r in results}
    assert by_key[good.encode()].text == "done"
    assert by_key[flaky.encode()].text == "done" and attempts[flaky] == 3
    assert by_key[bad.encode()].error is not None
    assert by_key[bad.encode()].error.code == "invalid_message"
    headers = dict(dead[0].headers)
    assert dead[0].value == b"{not json"
    assert headers[sc.HEADER_DLQ_CODE] == b"invalid_message"
    assert headers[sc.HEADER_DLQ_TOPIC] == topic.encode()
    assert b"json" in headers[sc.HEADER_DLQ_REASON].lower()
    assert await _committed(bootstrap, group, topic) == 3


async def test_a_record_stopped_mid_handling_is_redelivered(
    env: tuple[str, str, EventProducer],
) -> None:
    bootstrap, topic, producer = env
    rid = f"redeliver-{uuid.uuid4().hex[:8]}"
    await (await producer.send(topic, dump(_prepared(rid)), key=rid.encode()))
    group = f"test-{rid}"
    seen = asyncio.Event()

    async def stuck(event: PreparedRequest) -> None:
        seen.set()
        await asyncio.Event().wait()  # a crash mid-record: never finishes

    first = _consumer(bootstrap, topic, producer, stuck, group)
    await first.start()
    task = asyncio.create_task(first.run())
    await asyncio.wait_for(seen.wait(), 30)
    await first.stop(timeout_s=0.2)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert await _committed(bootstrap, group, topic) == 0

    got: asyncio.Queue[str] = asyncio.Queue()

    async def ok(event: PreparedRequest) -> None:
        await got.put(event.request_id)

    second = _consumer(bootstrap, topic, producer, ok, group)
    await second.start()
    task = asyncio.create_task(second.run())
    try:
        assert await asyncio.wait_for(got.get(), 30) == rid
    finally:
        await second.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert await _committed(bootstrap, group, topic) == 1


async def test_a_record_that_ignores_its_cancel_is_left_uncommitted_and_named(
    env: tuple[str, str, EventProducer],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(consumer_module, "RECORDS_CANCEL_S", 0.2)
    bootstrap, topic, producer = env
    rid = f"deaf-{uuid.uuid4().hex[:8]}"
    await (await producer.send(topic, dump(_prepared(rid)), key=rid.encode()))
    seen, release = asyncio.Event(), asyncio.Event()

    async def deaf(event: PreparedRequest) -> None:
        seen.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await release.wait()  # a lost cancel: runs on

    # A short drain: librdkafka's stop revokes the partition, whose drain waits for the same
    # record once more (the stop's own bound is what this test is about).
    consumer = _consumer(bootstrap, topic, producer, deaf, f"test-{rid}", drain_timeout_s=0.2)
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    await asyncio.wait_for(seen.wait(), 30)
    left = set(consumer._tasks)
    try:
        with caplog.at_level(logging.WARNING, logger="genwire.kafka.consumer"):
            async with asyncio.timeout(15):
                await consumer.stop(timeout_s=0.2)
    finally:
        release.set()
        await asyncio.wait(left, timeout=5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    messages = [r.getMessage() for r in caplog.records if "stopping" in r.getMessage()]
    assert len(messages) == 1
    assert messages[0].startswith(f"stopping: 1 record(s) of {topic}-")
    assert messages[0].endswith("still running 0.2 s after their cancel; left uncommitted")
    assert await _committed(bootstrap, f"test-{rid}", topic) == 0


async def test_without_root_spans_only_records_with_a_trace_context_are_traced(
    env: tuple[str, str, EventProducer],
) -> None:
    bootstrap, topic, producer = env
    run = uuid.uuid4().hex[:8]
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    handled: list[str] = []

    async def handler(event: PreparedRequest) -> Event:
        handled.append(event.request_id)
        # What it publishes is traced like the record: the heartbeat's output starts no trace.
        return GenerationResult(request_id=event.request_id, text="ok")

    parent = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    plain, traced = f"{run}-heartbeat", f"{run}-cancel"
    # As heartbeats go (traced=False: no span, no trace headers), and one with a context.
    await (await producer.send(topic, dump(_prepared(plain)), key=plain.encode(), traced=False))
    await (
        await producer.send(
            topic,
            dump(_prepared(traced)),
            key=traced.encode(),
            headers=[("traceparent", parent.encode())],
            traced=False,
        )
    )
    traced_producer = EventProducer(bootstrap, tracer=provider.get_tracer("test"))
    await traced_producer.start()
    consumer = _consumer(
        bootstrap,
        topic,
        traced_producer,
        handler,
        f"test-{run}",
        tracer=provider.get_tracer("test"),
        root_spans=False,
    )
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    try:
        await _read(bootstrap, Topic.RESULTS, {plain.encode(), traced.encode()})
    finally:
        await consumer.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await traced_producer.stop()
    assert sorted(handled) == sorted([plain, traced])  # both handled, one traced
    spans = exporter.get_finished_spans()
    assert {s.context.trace_id for s in spans} == {int("ab" * 16, 16)}  # one trace: the cancel's
    assert {(s.attributes or {}).get(sc.MESSAGING_MESSAGE_KEY) for s in spans} == {traced}
