"""Reading back the compacted alert-state topic when the monitor starts.

Every alert transition is also written to ``alert_state_topic`` keyed by the alert id; the
topic is compacted, so it holds the latest event of every alert. On start the monitor reads it
from the beginning to the end offsets it saw when it began (a group-less consumer: nothing is
committed) and rebuilds the alerts whose latest event is ``firing``
(``handlers.firing_from_state``).
A read that cannot finish (broker down, topic missing, timeout) rebuilds nothing and is logged:
a partial read could rebuild an alert whose resolution it did not reach.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from genwire.kafka.security import client_options
from genwire_monitor.alerting import AlertEvent
from genwire_monitor.handlers import firing_from_state

log = logging.getLogger(__name__)

Record = tuple[bytes | None, bytes | None]


async def read_topic(bootstrap_servers: str, topic: str, timeout_s: float) -> list[Record]:
    """Every ``(key, value)`` of ``topic`` up to its end offsets now, in offset order per
    partition. Raises ``LookupError`` if the topic does not exist, ``TimeoutError``."""
    parts = await _partitions(bootstrap_servers, topic, timeout_s)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        **client_options(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="genwire-monitor-alert-state",
    )
    async with asyncio.timeout(timeout_s):
        await consumer.start()
        try:
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            ends = await consumer.end_offsets(parts)
            out: list[Record] = []
            while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
                batch = await consumer.getmany(*parts, timeout_ms=500)
                for tp, records in batch.items():
                    out += [(r.key, r.value) for r in records if r.offset < ends[tp]]
            return out
        finally:
            await consumer.stop()


async def _partitions(bootstrap_servers: str, topic: str, timeout_s: float) -> list[TopicPartition]:
    """The topic's partitions, from the broker (the consumer's own metadata only covers what
    it is assigned)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, **client_options(), client_id="genwire-monitor"
    )
    async with asyncio.timeout(timeout_s):
        await admin.start()
        try:
            (described,) = await admin.describe_topics([topic])
        finally:
            await admin.close()
    if described["error_code"] or not described["partitions"]:
        raise LookupError(f"topic {topic!r}: error code {described['error_code']}")
    return [TopicPartition(topic, p["partition"]) for p in described["partitions"]]


async def firing_alerts(bootstrap_servers: str, topic: str, timeout_s: float) -> list[AlertEvent]:
    """The alerts the state topic says are firing; [] (logged) if it cannot be read."""
    try:
        records = await read_topic(bootstrap_servers, topic, timeout_s)
    except Exception as exc:  # never fatal: the monitor starts without them
        log.error("could not read the alert state from %s, no alert rebuilt: %r", topic, exc)
        return []
    return firing_from_state(records)
