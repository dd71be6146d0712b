"""Kafka and Redis of the native stack, through the real servers."""

from __future__ import annotations

import uuid

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from genwire.kafka import ensure_topics
from genwire.settings import CommonSettings
from genwire.topics import TOPIC_SPECS, TopicSpec


async def test_every_project_topic_exists_as_specified(infra: CommonSettings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.kafka_bootstrap_servers)
    await admin.start()
    try:
        names = [spec.name for spec in TOPIC_SPECS]
        described = await admin.describe_topics(names)
        partitions = {t["topic"]: len(t["partitions"]) for t in described}
        assert partitions == {spec.name: spec.partitions for spec in TOPIC_SPECS}
    finally:
        await admin.close()


async def test_produce_and_consume_through_the_broker(infra: CommonSettings) -> None:
    topic = f"test.stack.{uuid.uuid4().hex[:8]}"
    assert await ensure_topics(infra.kafka_bootstrap_servers, [TopicSpec(topic, 1, 600_000)])
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        sent = [f"hello {i}".encode() for i in range(5)]
        for value in sent:
            await producer.send_and_wait(topic, value, key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=infra.kafka_bootstrap_servers,
        group_id=f"test-{topic}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        got: list[bytes] = []
        while len(got) < len(sent):
            batch = await consumer.getmany(timeout_ms=10_000)
            assert batch, "no records within 10 s"
            got += [r.value for records in batch.values() for r in records if r.value]
        assert got == sent
    finally:
        await consumer.stop()


async def test_the_broker_does_not_auto_create_topics(infra: CommonSettings) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=infra.kafka_bootstrap_servers, request_timeout_ms=3000
    )
    await producer.start()
    try:
        missing = f"test.stack.never-created.{uuid.uuid4().hex[:8]}"
        try:
            await producer.send_and_wait(missing, b"x")
        except KafkaError:
            pass  # what we want: a typo in a topic name fails loudly
        else:
            raise AssertionError(f"the broker auto-created {missing}")
    finally:
        await producer.stop()


async def test_redis_set_and_get(infra: CommonSettings) -> None:
    client = aioredis.from_url(infra.redis_url)
    key = f"genwire:test:stack:{uuid.uuid4().hex}"
    try:
        assert await client.set(key, b"value", ex=60)
        assert await client.get(key) == b"value"
        assert 0 < await client.ttl(key) <= 60
    finally:
        await client.delete(key)
        await client.aclose()
