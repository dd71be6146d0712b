"""Replaying parked records: ``genwire.retry`` back to the topic they came from.

A record parked after the outage budget carries ``genwire_retry_*`` headers (where it came
from, why, how often it was replayed, not before when). Each stage runs one replayer (group
``<service>-retry``) that takes the records of its own topics, waits until their time, and
republishes the original key, value and headers (trace context included) with the replay
count, so the stage handles them again. Records of other stages' topics are left to them.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka.structs import ConsumerRecord
from pydantic import BaseModel, ConfigDict

from genwire.errors import PermanentError
from genwire.kafka.failures import RawRecord, header
from genwire.telemetry import semconv as sc


class ParkedRecord(BaseModel):
    """A record of ``genwire.retry`` as the replayer sees it."""

    model_config = ConfigDict(frozen=True)

    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    count: int
    not_before_ms: int


def decode_parked(record: ConsumerRecord[bytes, bytes]) -> ParkedRecord:
    """The parked record, or ``PermanentError`` when its headers do not say where it belongs."""
    topic = header(record, sc.HEADER_RETRY_TOPIC)
    if not topic:
        raise PermanentError(
            "a genwire.retry record without genwire_retry_topic", code="invalid_message"
        )
    try:
        count = int(header(record, sc.HEADER_RETRY_COUNT) or b"0")
        not_before = int(header(record, sc.HEADER_RETRY_NOT_BEFORE) or b"0")
    except ValueError:
        raise PermanentError(
            "genwire_retry_count / genwire_retry_not_before are not integers",
            code="invalid_message",
        ) from None
    return ParkedRecord(
        topic=topic.decode("utf-8", "replace"),
        key=record.key,
        value=record.value or b"",
        headers=tuple(record.headers or ()),
        count=count,
        not_before_ms=not_before,
    )


def replay_headers(
    headers: tuple[tuple[str, bytes], ...], count: int
) -> tuple[tuple[str, bytes], ...]:
    """The original headers without the parking details, plus the replay count."""
    kept = tuple((k, v) for k, v in headers if not k.startswith("genwire_retry"))
    return (*kept, (sc.HEADER_RETRY_COUNT, str(count).encode()))


class Replayer:
    """Republishes parked records of ``topics`` when their delay is over."""

    def __init__(self, topics: set[str]) -> None:
        self.topics = topics

    async def handle(self, parked: ParkedRecord) -> RawRecord | None:
        """Wait until ``not_before``, then send the record back to its topic."""
        if parked.topic not in self.topics:
            return None  # another stage's record: its replayer takes it
        delay = parked.not_before_ms / 1000.0 - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        return RawRecord(
            parked.topic,
            parked.value,
            parked.key,
            replay_headers(parked.headers, parked.count + 1),
        )
