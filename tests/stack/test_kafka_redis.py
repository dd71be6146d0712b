"""Kafka and Redis of the native stack, through the real servers."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from genwire_stack import down, ensure_up
from genwire_stack.components import Redis
from genwire_stack.health import redis_ping, wait_until
from genwire_stack.paths import StackPaths
from genwire_stack.process import live_child, read_record
from redis import Redis as SyncRedis

from genwire.kafka import ensure_topics
from genwire.settings import CommonSettings
from genwire.topics import TOPIC_SPECS, TopicSpec
from tests.common.support import fresh_topic
from tests.stack.support import free_port


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
    topic = fresh_topic("stack")
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
        missing = fresh_topic("stack.never-created")
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


async def test_redis_is_durable_append_only_fsynced_every_second(infra: CommonSettings) -> None:
    """The append-only file and no snapshot schedule (each snapshot writes every live key)."""
    client = aioredis.from_url(infra.redis_url)
    try:
        assert await client.config_get("appendonly") == {"appendonly": "yes"}
        assert await client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert await client.config_get("save") == {"save": ""}
        home = str(infra.home.expanduser())
        assert str((await client.config_get("dir"))["dir"]).startswith(home)
    finally:
        await client.aclose()


def test_a_crashed_redis_restarted_by_up_still_has_its_keys(
    infra: CommonSettings, tmp_path: Path
) -> None:
    """A throwaway Redis of the stack (own port and home): written, SIGKILLed (supervisor and
    server: a crash of the machine's processes) a second later, started by `up`: nothing lost.
    Then the server alone is SIGKILLed: its supervisor restarts it, and again nothing is lost."""
    settings = CommonSettings(home=tmp_path)
    paths = StackPaths.from_settings(settings)
    redis = Redis(paths, settings, port=free_port())
    catalog = {"redis": redis}
    client = SyncRedis(port=redis.port, socket_timeout=5)
    try:
        ensure_up(["redis"], settings=settings, catalog=catalog, model=False)
        assert client.set("genwire:test:durable", b"kept") and client.incr("genwire:test:n") == 1
        time.sleep(1.5)  # appendfsync everysec: at most the last second may be lost
        record = read_record(paths.run, "redis")
        assert record is not None and record.supervised
        os.killpg(record.pid, signal.SIGKILL)
        wait_until(lambda: not redis_ping(redis.port), what="redis gone", timeout_s=10)

        ensure_up(["redis"], settings=settings, catalog=catalog, model=False)  # `up --only redis`
        assert client.get("genwire:test:durable") == b"kept"
        assert client.get("genwire:test:n") == b"1"
        assert (redis.data_dir / "appendonlydir").is_dir()
        assert str(redis.data_dir).startswith(str(tmp_path))

        client.set("genwire:test:second", b"also kept")
        time.sleep(1.5)
        pid = child_pid_in(paths)
        os.kill(pid, signal.SIGKILL)
        wait_until(
            lambda: child_pid_in(paths, default=pid) != pid and redis_ping(redis.port),
            what="redis restarted by its supervisor",
            timeout_s=15,
        )
        assert client.get("genwire:test:second") == b"also kept"
    finally:
        client.close()
        down(settings=settings, catalog=catalog)


def child_pid_in(paths: StackPaths, default: int = 0) -> int:
    return live_child(paths.run, "redis") or default
