"""``genwire dlq``: list and replay records of ``genwire.dlq`` and ``genwire.retry``.

A dead-lettered record is poison (or a request whose dependency stayed down through every
replay); a parked one waits on ``genwire.retry`` for its automatic replay. Either can be sent
back to the topic it came from once its cause is fixed: the original key, value and headers
(trace context included) go back, without the ``genwire_dlq_*``/``genwire_retry_*`` details,
plus ``genwire_replayed_from`` (``<topic>:<partition>:<offset>``). Replaying is safe to repeat:
the stages are idempotent by request id, and a stored server-side error result (a 5xx code,
``model_not_found``: ``genwire.results.replaceable``) is replaced by the replay's real result
(any other stored result stays). A dead letter whose value was cut
to fit Kafka (``genwire_dlq_truncated``) is listed but never replayed: its bytes are not the
request's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from genwire.kafka import EventProducer
from genwire.kafka.failures import header
from genwire.kafka_security import client_options
from genwire.telemetry import semconv as sc
from genwire.topics import Topic

SOURCES = {"dlq": Topic.DLQ, "retry": Topic.RETRY}


@dataclass(frozen=True)
class Letter:
    """One record of the DLQ or the retry topic, with where it came from and why."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    origin_topic: str
    code: str
    stage: str
    reason: str
    truncated: int | None = None
    """The original value's size, when only its start was dead-lettered (too large for Kafka)."""

    @property
    def where(self) -> str:
        """``<topic>:<partition>:<offset>`` of this record."""
        return f"{self.topic}:{self.partition}:{self.offset}"


def _text(record: ConsumerRecord[bytes, bytes], dlq: str, retry: str) -> str:
    raw = header(record, dlq) or header(record, retry) or b""
    return raw.decode("utf-8", "replace")


def letter(record: ConsumerRecord[bytes, bytes]) -> Letter:
    """Read the ``genwire_dlq_*`` or ``genwire_retry_*`` headers of ``record``."""
    return Letter(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value or b"",
        headers=tuple(record.headers or ()),
        origin_topic=_text(record, sc.HEADER_DLQ_TOPIC, sc.HEADER_RETRY_TOPIC),
        code=_text(record, sc.HEADER_DLQ_CODE, sc.HEADER_RETRY_CODE),
        stage=_text(record, sc.HEADER_DLQ_STAGE, sc.HEADER_RETRY_STAGE),
        reason=_text(record, sc.HEADER_DLQ_REASON, sc.HEADER_RETRY_REASON),
        truncated=_size(header(record, sc.HEADER_DLQ_TRUNCATED)),
    )


def _size(raw: bytes | None) -> int | None:
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return -1  # cut, its size unreadable: still never replayed


@dataclass(frozen=True)
class Selection:
    """Which letters to act on (every criterion given must match)."""

    codes: frozenset[str] = frozenset()
    stages: frozenset[str] = frozenset()
    keys: frozenset[str] = frozenset()
    limit: int | None = None

    def matches(self, item: Letter) -> bool:
        """Whether ``item`` is selected."""
        key = (item.key or b"").decode("utf-8", "replace")
        return (
            (not self.codes or item.code in self.codes)
            and (not self.stages or item.stage in self.stages)
            and (not self.keys or key in self.keys)
        )


async def read_letters(bootstrap_servers: str, topic: str, selection: Selection) -> list[Letter]:
    """Every selected record of ``topic`` up to its end now (no group: nothing is committed)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        **client_options(),
    )
    await consumer.start()
    try:
        # No public async metadata call on the consumer (aiokafka 0.14, pinned): this is what
        # the producer's public partitions_for() awaits.
        known = await consumer._client._wait_on_metadata(topic) or ()
        parts = [TopicPartition(topic, p) for p in known]
        if not parts:
            return []
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        out: list[Letter] = []
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        continue
                    item = letter(record)
                    if selection.matches(item):
                        out.append(item)
                        if selection.limit is not None and len(out) >= selection.limit:
                            return out
        return out
    finally:
        await consumer.stop()


def replay_headers(item: Letter) -> list[tuple[str, bytes]]:
    """The original headers, without the dead-letter/parking details, marked as replayed."""
    kept = [
        (k, v)
        for k, v in item.headers
        if not k.startswith(("genwire_dlq", "genwire_retry", sc.HEADER_REPLAYED_FROM))
    ]
    return [*kept, (sc.HEADER_REPLAYED_FROM, item.where.encode())]


async def replay(bootstrap_servers: str, letters: Iterable[Letter]) -> list[Letter]:
    """Send each letter back to the topic it came from; returns those sent (not those without
    an origin topic, nor those whose value was cut)."""
    producer = EventProducer(bootstrap_servers, client_id="genwire-dlq-replay")
    await producer.start()
    sent: list[Letter] = []
    try:
        pending = []
        for item in letters:
            if not item.origin_topic or item.truncated is not None:
                continue  # nowhere to send it back to, or not the bytes that came
            pending.append(
                await producer.send(
                    item.origin_topic, item.value, key=item.key, headers=replay_headers(item)
                )
            )
            sent.append(item)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent
