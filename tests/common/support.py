"""Kafka helpers shared by the consumer tests (real broker)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord
from genwire_stack.health import run_coro

from genwire.events import PreparedRequest, Sampling
from genwire.kafka import EventConsumer, EventProducer, ensure_topics
from genwire.kafka.admin import delete_topics
from genwire.kafka.consumer import FETCH_MAX_WAIT_MS
from genwire.kafka_security import client_options
from genwire.settings import CommonSettings
from genwire.topics import TopicSpec


def _prepared(rid: str) -> PreparedRequest:
    return PreparedRequest(request_id=rid, model="m", input_ids=[1], sampling=Sampling())


async def _read(
    bootstrap: str, topic: str, keys: set[bytes], timeout_s: float = 30.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read ``topic`` from the beginning until a record for every key arrived."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    found: list[ConsumerRecord[bytes, bytes]] = []
    try:
        async with asyncio.timeout(timeout_s):
            while {r.key for r in found} < keys:
                batch = await consumer.getmany(timeout_ms=200)
                found += [r for rs in batch.values() for r in rs if r.key in keys]
    finally:
        await consumer.stop()
    return found


@pytest.fixture
async def env(infra: CommonSettings) -> AsyncIterator[tuple[str, str, EventProducer]]:
    """A fresh input topic and a started producer."""
    topic = fresh_topic("consumer")
    await ensure_topics(infra.kafka_bootstrap_servers, [TopicSpec(topic, 2, 3_600_000)])
    producer = EventProducer(infra.kafka_bootstrap_servers)
    await producer.start()
    yield infra.kafka_bootstrap_servers, topic, producer
    await producer.stop()
    await delete_topics(infra.kafka_bootstrap_servers, [topic])  # none left behind on the broker


async def _committed(bootstrap: str, group: str, topic: str) -> int:
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await probe.start()
    try:
        total = 0
        for p in probe.partitions_for_topic(topic) or await _partitions(probe, topic):
            total += await probe.committed(TopicPartition(topic, p)) or 0
        return total
    finally:
        await probe.stop()


async def _committed_soon(
    bootstrap: str, group: str, topic: str, expected: int, timeout_s: float = 10.0
) -> int:
    """The group's committed total once it is ``expected`` (else the last one read, after
    ``timeout_s``): a running consumer commits on its own clock (``KAFKA_COMMIT_INTERVAL_MS``,
    and on librdkafka at its thread's next poll), not when its output is acknowledged."""
    deadline = time.monotonic() + timeout_s
    while True:
        total = await _committed(bootstrap, group, topic)
        if total == expected or time.monotonic() >= deadline:
            return total
        await asyncio.sleep(0.05)


async def _partitions(probe: AIOKafkaConsumer, topic: str) -> set[int]:
    await probe._client.force_metadata_update()  # the probe subscribes to nothing
    return probe.partitions_for_topic(topic) or set()


async def eventually(condition: Callable[[], object], timeout_s: float = 30.0) -> None:
    """Poll ``condition`` until it holds (TimeoutError after ``timeout_s``)."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110  # a plain condition, no event to wait on
            await asyncio.sleep(0.05)


TEST_TOPIC_PREFIX = "test."
"""How tests name the topics they make: ``fresh_topic(area)``."""

SESSION_TOKEN = uuid.uuid4().hex[:6]
"""This test process's mark in its topics' names: the cleanup deletes only topics carrying it,
so a second pytest run on the same broker (CI beside a developer's run) keeps its own."""

_log = logging.getLogger("genwire_stack.tests")


def fresh_topic(area: str) -> str:
    """A fresh topic name for a test, ``test.<area>.<session>.<random>``."""
    return f"{TEST_TOPIC_PREFIX}{area}.{SESSION_TOKEN}.{uuid.uuid4().hex[:8]}"


def ours(topic: str) -> bool:
    """Whether ``topic`` is one of this process's (``fresh_topic``)."""
    parts = topic.split(".")
    return topic.startswith(TEST_TOPIC_PREFIX) and len(parts) >= 4 and parts[-2] == SESSION_TOKEN


async def listed_test_topics(settings: CommonSettings) -> set[str]:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers, **client_options(settings)
    )
    await admin.start()
    try:
        return {t for t in await admin.list_topics() if t.startswith(TEST_TOPIC_PREFIX)}
    finally:
        await admin.close()


async def _delete_new(settings: CommonSettings, before: set[str]) -> list[str]:
    made = sorted(t for t in await listed_test_topics(settings) - before if ours(t))
    if made:
        await delete_topics(settings.kafka_bootstrap_servers, made, settings=settings)
    return made


@contextlib.contextmanager
def deleting_new_test_topics(settings: CommonSettings) -> Iterator[None]:
    """Around a session fixture's life: the ``test.`` topics this process made meanwhile
    (``fresh_topic``) are deleted at its end, so the broker does not collect them run by run.
    Those already there and those of another test run (another session token) are kept: a
    cleanup that deleted every new ``test.`` topic broke a CI run beside it. A failure (the
    broker stopped by a test and not back) is logged, never a test failure."""
    before = run_coro(listed_test_topics(settings))
    yield
    try:
        made = run_coro(_delete_new(settings, before))
    except Exception as exc:
        _log.warning("the run's test topics were not deleted: %s", exc)
    else:
        _log.info("deleted the run's %d test topics", len(made))


@contextlib.asynccontextmanager
async def running_consumer(
    env: tuple[str, str, EventProducer],
    handler: Any,
    *,
    concurrency: int,
    fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS,
) -> AsyncIterator[EventConsumer[PreparedRequest]]:
    """An ``EventConsumer`` of ``env``'s topic in a group of its own, running and assigned;
    stopped after."""
    bootstrap, topic, producer = env
    consumer = EventConsumer(
        topic=topic,
        group_id=f"test-{uuid.uuid4().hex[:8]}",
        model=PreparedRequest,
        handler=handler,
        producer=producer,
        bootstrap_servers=bootstrap,
        stage="test",
        concurrency=concurrency,
        fetch_max_wait_ms=fetch_max_wait_ms,
    )
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    try:
        await eventually(lambda: consumer.ready)
        yield consumer
    finally:
        await consumer.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
