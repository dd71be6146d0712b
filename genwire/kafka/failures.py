"""Where a record goes when it does not succeed: the DLQ, the retry topic, or nowhere (the
service gives up). The consumer (``genwire/kafka/consumer.py``) decides *that* a record failed;
this module decides *where* it goes and publishes it there, through a broker outage if need be,
and what happens to an output Kafka refuses for good (too large: ``FailurePaths.fail``).
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
from genwire.kafka.producer import KAFKA, MAX_REQUEST_SIZE, publish_error
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
Refused = tuple[Output, Exception]
"""An output and why it can never be published: Kafka refused it for good (too large), or it
cannot be encoded at all (a value pydantic cannot serialise)."""

TRIM_HEADROOM = 64 * 1024
"""What a dead letter cut to fit leaves free under the producer's record limit
(``MAX_REQUEST_SIZE``) besides its key and headers: the batch's framing and what the producer
adds on the way (trace context, forwarded headers)."""


HEADER_DLQ_NULL_VALUE = "genwire_dlq_null_value"
"""On a DLQ record whose original value was null (a Kafka tombstone): ``true``. The dead letter's
value is then empty (records go out as bytes), and this header tells it from an empty value."""


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
    done, waiting = await answered(futures, timeout_s)
    for future in done:
        future.result()  # raises the first failure (KafkaError): before any wait's timeout
    if waiting:
        raise unanswered(len(waiting), timeout_s)


async def answered(
    futures: Sequence[asyncio.Future[object]], timeout_s: float
) -> tuple[set[asyncio.Future[object]], set[asyncio.Future[object]]]:
    """The futures the broker answered (acknowledged or failed) within ``timeout_s``, and
    those still waiting then (``unanswered``: a broker that does not answer counts against the
    outage budget)."""
    if not futures:
        return set(), set()
    return await asyncio.wait(futures, timeout=timeout_s)


def unanswered(count: int, timeout_s: float) -> KafkaTimeoutError:
    """The error of ``count`` records the broker did not answer within ``timeout_s``."""
    return KafkaTimeoutError(
        f"{count} record(s) not acknowledged by the broker within {timeout_s:.0f} s"
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
        """The stage's error events, and for poison input a DLQ record (reason in headers).

        An output Kafka refuses for good (too large) does not hold the record back: a DLQ copy
        goes out again with its value cut to fit (``_trimmed``), the other outputs go out as
        they are, and what is refused even so is logged and counted (``_dropped``). The record
        is then committed: retrying cannot change the verdict, and holding it would stop its
        partition for good."""
        span.set_status(Status(StatusCode.ERROR, err.message))
        span.set_attribute(sc.ERROR_CODE, err.code)
        outputs: list[Output] = []
        letter = None
        if err.dead_letter:
            letter = _diverted(record, Topic.DLQ, _dlq_headers(record, err, self._stage))
            outputs.append(letter)
        if self._failure_events is not None:
            try:
                outputs += self._failure_events(record, err)
            except (ValueError, UnicodeError) as unbuilt:  # a value no event can carry
                self._unbuilt(record, unbuilt)  # the dead letter still goes out, alone
        lettered = letter is not None
        for out, exc in await self.publish_reliably(tp, outputs):
            if not await self._refused(tp, record, out, exc) and out is letter:
                lettered = False  # counted as dropped instead
        if lettered and self._metrics:
            self._metrics.dlq.labels(record.topic, self._stage, err.code).inc()

    async def _refused(
        self,
        tp: TopicPartition,
        record: ConsumerRecord[bytes, bytes],
        out: Output,
        exc: Exception,
    ) -> bool:
        """An output of ``record`` that Kafka refused for good: a dead letter goes out again
        with its value cut to fit (True); anything else, or a cut one refused too, is dropped
        (False)."""
        if (
            isinstance(exc, KafkaError)
            and isinstance(out, RawRecord)
            and (trimmed := _trimmed(out)) is not None
        ):
            log.warning(
                "%s@%s: its dead letter is too large for Kafka (%s); published with the value "
                "cut from %d to %d bytes (header %s)",
                f"{record.topic}-{record.partition}",
                record.offset,
                exc,
                len(out.value),
                len(trimmed.value),
                sc.HEADER_DLQ_TRUNCATED,
            )
            again = await self.publish_reliably(tp, [trimmed])
            if not again:
                return True
            out, exc = again[0]
        self._dropped(record, out, exc)
        return False

    def _unbuilt(self, record: ConsumerRecord[bytes, bytes], exc: Exception) -> None:
        """The stage's error events for ``record`` could not be built: never silent."""
        if self._metrics:
            self._metrics.dropped.labels(self._stage, "(error events)").inc()
        log.error(
            "%s@%s: its error events could not be built (%r); only its dead letter goes out",
            f"{record.topic}-{record.partition}",
            record.offset,
            exc,
        )

    def _dropped(self, record: ConsumerRecord[bytes, bytes], out: Output, exc: Exception) -> None:
        """An output of a failure path that can never be published: never silent."""
        topic = out.topic if isinstance(out, RawRecord) else out.TOPIC
        if self._metrics:
            self._metrics.dropped.labels(self._stage, topic).inc()
        log.error(
            "%s@%s: its output to %s can never be published (%s); dropped, the record is committed",
            f"{record.topic}-{record.partition}",
            record.offset,
            topic,
            exc,
        )

    async def park(
        self,
        tp: TopicPartition,
        record: ConsumerRecord[bytes, bytes],
        err: RetryableError,
        span: trace.Span,
        tries: int | None = None,
    ) -> str:
        """Past the outage budget (or ``tries`` in a row of an error that bounds them,
        ``RetryableError.max_tries``): to ``genwire.retry`` for a later replay (``"parked"``),
        or, once replayed ``max_replays`` times or when too large to park, to the DLQ with an
        error result (``"failed"``). Returns that outcome (``genwire_messages_total{outcome}``)."""
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
            return "failed"
        span.set_status(Status(StatusCode.ERROR, err.message))
        span.set_attribute(sc.ERROR_CODE, err.code)
        not_before = int(time.time() * 1000 + self._replay_delay_s * 1000 * 2**replays)
        headers = [(k, v) for k, v in record.headers or () if not k.startswith("genwire_retry")]
        headers += [
            (sc.HEADER_RETRY_TOPIC, record.topic.encode()),
            (sc.HEADER_RETRY_PARTITION, str(record.partition).encode()),
            (sc.HEADER_RETRY_OFFSET, str(record.offset).encode()),
            (sc.HEADER_RETRY_REASON, err.message[:1000].encode(errors="replace")),
            (sc.HEADER_RETRY_CODE, err.code.encode()),
            (sc.HEADER_RETRY_STAGE, self._stage.encode()),
            (sc.HEADER_RETRY_COUNT, str(replays).encode()),
            (sc.HEADER_RETRY_NOT_BEFORE, str(not_before).encode()),
        ]
        if await self.publish_reliably(tp, [_diverted(record, Topic.RETRY, headers)]):
            # Too large to park (its copy carries the parking headers): dead-lettered instead,
            # so that its caller still gets an answer.
            too_large = GenwireError(
                f"{err.message} (and too large for Kafka to park on {Topic.RETRY})",
                code=err.code,
            )
            await self.fail(tp, record, too_large, span)
            return "failed"
        if self._metrics:
            self._metrics.parked.labels(self._stage, err.code).inc()
        log.warning(
            "%s@%s parked on %s after %s: replay after %s",
            f"{record.topic}-{record.partition}",
            record.offset,
            Topic.RETRY,
            f"{tries} tries ({err.message[:200]})"
            if tries is not None
            else f"{self._budget_s:.0f} s of {err.dependency}",
            time.strftime("%H:%M:%S", time.localtime(not_before / 1000)),
        )
        return "parked"

    async def publish_reliably(
        self, tp: TopicPartition, outputs: Sequence[Output]
    ) -> list[Refused]:
        """Publish, retrying through a broker outage for the budget; else give up loudly.

        An output Kafka refuses whatever the retry (too large: ``publish_error``) is not
        retried: it comes back with its error, for the caller to deal with. ``Fenced`` (the
        partition revoked) propagates: the record is its new owner's, and nothing was published
        for it here, so it must not count as handled."""
        first_failure: float | None = None
        attempt = 0
        while True:
            try:
                refused = await self._publish_once(tp, outputs)
                if first_failure is not None:
                    self._deps.recovered(KAFKA)
                return refused
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

    async def _publish_once(self, tp: TopicPartition, outputs: Sequence[Output]) -> list[Refused]:
        """Publish ``outputs`` and wait for the broker's answers: those refused for good.
        Raises the first retryable failure; the retry publishes all of ``outputs`` again (a
        duplicate of what went out, which idempotent stages absorb)."""
        refused: list[Refused] = []
        sent: list[tuple[Output, asyncio.Future[object]]] = []
        for out in outputs:
            try:
                sent.append((out, await self._publish(tp, out)))
            except KafkaError as exc:  # aiokafka checks a record's size before queueing it
                refused.append((out, _for_good(exc)))
            except (ValueError, UnicodeError) as exc:  # an event that cannot be encoded
                refused.append((out, exc))
        if not sent:
            return refused
        done, waiting = await answered([fut for _, fut in sent], self._ack_timeout_s)
        for out, fut in sent:
            if fut in done and (failure := fut.exception()) is not None:
                refused.append((out, _for_good(failure)))  # a retryable failure raises first
        if waiting:  # as ``acknowledged``: an outage counts against the budget
            raise unanswered(len(waiting), self._ack_timeout_s)
        return refused


def _for_good(exc: BaseException) -> KafkaError:
    """``exc`` when Kafka refuses the output whatever the retry (too large); else raised."""
    if isinstance(exc, KafkaError) and not isinstance(publish_error(exc), RetryableError):
        return exc
    raise exc


def _trimmed(out: RawRecord) -> RawRecord | None:
    """A dead letter Kafka refused as too large, its value cut to fit, marked with header
    ``genwire_dlq_truncated`` (the original value's size); None for any other record, one
    already cut, or one whose value is not what makes it too large."""
    if out.topic != Topic.DLQ:
        return None
    if any(k == sc.HEADER_DLQ_TRUNCATED for k, _ in out.headers):
        return None
    headers = (*out.headers, (sc.HEADER_DLQ_TRUNCATED, str(len(out.value)).encode()))
    overhead = len(out.key or b"") + sum(len(k) + len(v) for k, v in headers) + TRIM_HEADROOM
    keep = max(0, MAX_REQUEST_SIZE - overhead)
    if keep >= len(out.value):
        return None  # not the value's size: nothing cutting it could fix
    return RawRecord(out.topic, out.value[:keep], out.key, headers, out.partition)


def _diverted(
    record: ConsumerRecord[bytes, bytes], topic: str, headers: list[tuple[str, bytes]]
) -> RawRecord:
    return RawRecord(topic, record.value or b"", record.key, tuple(headers))


def _dlq_headers(
    record: ConsumerRecord[bytes, bytes], err: GenwireError, stage: str
) -> list[tuple[str, bytes]]:
    kept = [(k, v) for k, v in record.headers or () if not k.startswith("genwire_dlq")]
    if record.value is None:  # a tombstone: its letter's value is empty, this says it was null
        kept.append((HEADER_DLQ_NULL_VALUE, b"true"))
    return [
        *kept,
        # "replace": a message quoting the input may hold what UTF-8 cannot (lone surrogates)
        (sc.HEADER_DLQ_REASON, err.message[:1000].encode(errors="replace")),
        (sc.HEADER_DLQ_CODE, err.code.encode(errors="replace")),
        (sc.HEADER_DLQ_TOPIC, record.topic.encode()),
        (sc.HEADER_DLQ_PARTITION, str(record.partition).encode()),
        (sc.HEADER_DLQ_OFFSET, str(record.offset).encode()),
        (sc.HEADER_DLQ_STAGE, stage.encode()),
    ]
