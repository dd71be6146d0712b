"""Blue-green's drain check on the REAL broker: it waits for every prepared record and every
parked one (genwire.retry), including partitions the group never committed on.

Throwaway topics and groups (nothing of the running stack is read or moved).
"""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from genwire_model.lifecycle import wait_drained

from genwire.kafka.admin import delete_topics, ensure_topics
from genwire.kafka.security import client_options
from genwire.settings import CommonSettings
from genwire.topics import HOUR_MS, TopicSpec


async def _produce(servers: str, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all", **client_options())
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"x", partition=0)
    finally:
        await producer.stop()


async def _commit_to_end(servers: str, group: str, topic: str) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=servers, group_id=group, enable_auto_commit=False, **client_options()
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        await consumer.commit({tp: end})
    finally:
        await consumer.stop()


async def test_the_drain_waits_for_uncommitted_and_parked_records(infra: CommonSettings) -> None:
    servers = infra.kafka_bootstrap_servers
    run = uuid.uuid4().hex[:8]
    prepared, retry = f"gwtest-drain-prepared-{run}", f"gwtest-drain-retry-{run}"
    group, retry_group = f"gwtest-drain-{run}", f"gwtest-drain-{run}-retry"
    await ensure_topics(servers, [TopicSpec(prepared, 1, HOUR_MS), TopicSpec(retry, 1, HOUR_MS)])
    try:
        await _drain_steps(servers, prepared, retry, group, retry_group)
    finally:
        await delete_topics(servers, [prepared, retry])


async def _drain_steps(
    servers: str, prepared: str, retry: str, group: str, retry_group: str
) -> None:
    async def drained() -> bool:
        return await wait_drained(
            servers,
            0.5,
            group=group,
            topic=prepared,
            retry_group=retry_group,
            retry_topic=retry,
        )

    assert await drained()  # nothing was ever prepared
    await _produce(servers, prepared)
    assert not await drained()  # the group never committed: the record is in flight
    await _commit_to_end(servers, group, prepared)
    assert await drained()
    await _produce(servers, retry)  # parked during an outage: replayed onto prepared later
    assert not await drained()
    await _commit_to_end(servers, retry_group, retry)
    assert await drained()
