"""Where a record goes when it does not succeed: the DLQ, the retry topic, or nowhere (the
service gives up). The consumer (``genwire/kafka/consumer.py``) decides *that* a record failed;
this module decides *where* it goes and publishes it there, through a broker outage if need be.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError, KafkaTimeoutError
from aiokafka.structs import ConsumerRecord
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from genwire.errors import GenwireError, RetryableError
from genwire.events import Event
from genwire.health import Backoff, Dependencies
from genwire.kafka.producer import KAFKA
from genwire.metrics import ConsumerMetrics
from genwire.telemetry import semconv as sc
from genwire.topics import Topic

log = logging.getLogger("genwire.kafka.consumer")


@dataclass(frozen=True)
class RawRecord:
    """An output that is not an Event: bytes for a topic (the retry replayer's republish)."""

    topic: str
    value: bytes
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    partition: int | None = None
    """This partition of ``topic`` (a direct reply); None: the key's."""


Output = Event | RawRecord
FailureEvents = Callable[[ConsumerRecord[bytes, bytes], GenwireError], Sequence[Output]]
Publish = Callable[[TopicPartition, Output], Awaitable[asyncio.Future[object]]]


class Fenced(Exception):
    """The record's partition was revoked: its outputs belong to the new owner now."""


class GaveUp(Exception):
    """Nothing could be published within the outage budget: the service stops."""


def header(record: ConsumerRecord[bytes, bytes], name: str) -> bytes | None:
    """The last value of header ``name`` on ``record``."""
    found = None
    for key, value in record.headers or ():
        if key == name:
            found = value
    return found


async def acknowledged(futures: Sequence[asyncio.Future[object]], timeout_s: float) -> None:
    """Wait until the broker acknowledged every record; ``KafkaTimeoutError`` after
    ``timeout_s`` (an idempotent producer never expires a batch while its leader is known,
    so without this a broker outage would hang the record instead of counting against the
    outage budget). The futures are not cancelled: records still queued may be delivered
    later, as duplicates that idempotent stages absorb."""
    if not futures:
        return
    done, waiting = await asyncio.wait(futures, timeout=timeout_s)
    for future in done:
        future.result()  # raises the first failure (KafkaError)
    if waiting:
        raise KafkaTimeoutError(
            f"{len(waiting)} record(s) not acknowledged by the broker within {timeout_s:.0f} s"
        )


class FailurePaths:
    """The DLQ, the retry topic and giving up, for one consumer."""

    def __init__(
        self,
        *,
        stage: str,
        publish: Publish,
        failure_events: FailureEvents | None,
        metrics: ConsumerMetrics | None,
        dependencies: Dependencies,
        outage_budget_s: float,
        backoff: Backoff,
        max_replays: int,
        replay_delay_s: float,
        ack_timeout_s: float,
    ) -> None:
        self._stage = stage
        self._ack_timeout_s = ack_timeout_s
        self._publish = publish  # fenced: raises Fenced once the partition is revoked
        self._failure_events = failure_events
        self._metrics = metrics
        self._deps = dependencies
        self._budget_s = outage_budget_s
        self._backoff = backoff
        self._max_replays = max_replays
        self._replay_delay_s = replay_delay_s

    async def fail(
        self,
        tp: TopicPartition,
        record: ConsumerRecord[bytes, bytes],
        err: GenwireError,
        span: trace.Span,
    ) -> None:
        """The stage's error events, and for poison input a DLQ record (reason in headers)."""
        span.set_status(Status(StatusCode.ERROR, err.message))
        span.set_attribute(sc.ERROR_CODE, err.code)
        outputs: list[Output] = []
        if err.dead_letter:
            if self._metrics:
                self._metrics.dlq.labels(self._stage, err.code).inc()
            outputs.append(_diverted(record, Topic.DLQ, _dlq_headers(record, err, self._stage)))
        if self._failure_events is not None:
            outputs += self._failure_events(record, err)
        await self.publish_reliably(tp, outputs)

    async def park(
        self,
        tp: TopicPartition,
        record: ConsumerRecord[bytes, bytes],
        err: RetryableError,
        span: trace.Span,
    ) -> None:
        """Past the outage budget: to ``genwire.retry`` for a later replay, or, once replayed
        ``max_replays`` times, to the DLQ with an error result."""
        if record.topic == Topic.RETRY:
            # The replayer itself could not publish for the budget: parking its record again
            # would lose where it came from. Give up instead (uncommitted: replayed later).
            raise GaveUp(f"could not replay {record.topic}@{record.offset}: {err.message}")
        replays = int(header(record, sc.HEADER_RETRY_COUNT) or b"0")
        if replays >= self._max_replays:
            exhausted = GenwireError(
                f"{err.message} (still failing after {replays} replays from genwire.retry)",
                code=err.code,
            )
            await self.fail(tp, record, exhausted, span)
            return
        span.set_status(Status(StatusCode.ERROR, err.message))
        span.set_attribute(sc.ERROR_CODE, err.code)
        if self._metrics:
            self._metrics.parked.labels(self._stage, err.code).inc()
        not_before = int(time.time() * 1000 + self._replay_delay_s * 1000 * 2**replays)
        headers = [(k, v) for k, v in record.headers or () if not k.startswith("genwire_retry")]
        headers += [
            (sc.HEADER_RETRY_TOPIC, record.topic.encode()),
            (sc.HEADER_RETRY_PARTITION, str(record.partition).encode()),
            (sc.HEADER_RETRY_OFFSET, str(record.offset).encode()),
            (sc.HEADER_RETRY_REASON, err.message[:1000].encode()),
            (sc.HEADER_RETRY_CODE, err.code.encode()),
            (sc.HEADER_RETRY_STAGE, self._stage.encode()),
            (sc.HEADER_RETRY_COUNT, str(replays).encode()),
            (sc.HEADER_RETRY_NOT_BEFORE, str(not_before).encode()),
        ]
        log.warning(
            "%s@%s parked on %s after %.0f s of %s: replay after %s",
            f"{record.topic}-{record.partition}",
            record.offset,
            Topic.RETRY,
            self._budget_s,
            err.dependency,
            time.strftime("%H:%M:%S", time.localtime(not_before / 1000)),
        )
        await self.publish_reliably(tp, [_diverted(record, Topic.RETRY, headers)])

    async def publish_reliably(self, tp: TopicPartition, outputs: Sequence[Output]) -> None:
        """Publish, retrying through a broker outage for the budget; else give up loudly."""
        first_failure: float | None = None
        attempt = 0
        while True:
            try:
                futures = [await self._publish(tp, out) for out in outputs]
                await acknowledged(futures, self._ack_timeout_s)
                if first_failure is not None:
                    self._deps.recovered(KAFKA)
                return
            except Fenced:
                return  # the new owner handles the record again
            except KafkaError as exc:
                self._deps.failed(KAFKA, exc)
                now = time.monotonic()
                first_failure = first_failure or now
                if now - first_failure >= self._budget_s:
                    raise GaveUp(
                        f"could not publish to Kafka for {self._budget_s:.0f} s: {exc!r}"
                    ) from exc
                await asyncio.sleep(self._backoff.delay(attempt))
                attempt += 1


def _diverted(
    record: ConsumerRecord[bytes, bytes], topic: str, headers: list[tuple[str, bytes]]
) -> RawRecord:
    return RawRecord(topic, record.value or b"", record.key, tuple(headers))


def _dlq_headers(
    record: ConsumerRecord[bytes, bytes], err: GenwireError, stage: str
) -> list[tuple[str, bytes]]:
    kept = [(k, v) for k, v in record.headers or () if not k.startswith("genwire_dlq")]
    return [
        *kept,
        (sc.HEADER_DLQ_REASON, err.message[:1000].encode()),
        (sc.HEADER_DLQ_CODE, err.code.encode()),
        (sc.HEADER_DLQ_TOPIC, record.topic.encode()),
        (sc.HEADER_DLQ_PARTITION, str(record.partition).encode()),
        (sc.HEADER_DLQ_OFFSET, str(record.offset).encode()),
        (sc.HEADER_DLQ_STAGE, stage.encode()),
    ]
