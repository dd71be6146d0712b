"""A failure path's output that Kafka refuses for good (too large) is not retried: the dead letter
goes out with its value cut to fit (``genwire_dlq_truncated``), the error result goes out as it
is, and the record goes on (committed); what is refused even cut is logged and counted. Before,
every ``KafkaError`` was retried for the outage budget, then the service gave up, and the record
came back after the restart: a partition stuck for good, readiness blaming Kafka. No broker: the
records are checked the way both clients check them before sending anything."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError
from aiokafka.structs import ConsumerRecord
from confluent_kafka import KafkaException, Producer
from opentelemetry import trace
from prometheus_client import CollectorRegistry

from genwire.errors import GenwireError, PermanentError, RetryableError
from genwire.events import GenerationResult
from genwire.health import Backoff, Dependencies
from genwire.kafka.failures import FailurePaths, RawRecord, _dlq_headers, _trimmed
from genwire.kafka.offsets import PartitionOffsets
from genwire.kafka.producer import KAFKA, MAX_REQUEST_SIZE
from genwire.metrics import ConsumerMetrics
from genwire.telemetry import semconv as sc
from genwire.topics import Topic

from .standin import TP, offline_consumer

# A value the broker took on genwire.requests whose DLQ copy (the same bytes and ~200 bytes of
# genwire_dlq_* headers) is over the record limit.
NEAR_LIMIT = MAX_REQUEST_SIZE - 200


def _record(value: bytes, offset: int = 42, headers: Any = ()) -> ConsumerRecord[bytes, bytes]:
    key = b"req-1"
    return ConsumerRecord(
        Topic.REQUESTS, 0, offset, int(time.time() * 1000), 0, key, value, None, len(key),
        len(value), list(headers),
    )  # fmt: skip


def _error_result(record: ConsumerRecord[bytes, bytes], err: GenwireError) -> list[Any]:
    rid = (record.key or b"").decode()
    return [GenerationResult(request_id=rid, error={"code": err.code, "message": err.message})]


class Kafka:
    """Takes what aiokafka's producer takes (its size check before anything is sent, with the
    service's ``MAX_REQUEST_SIZE``): the records it took, in order; ``refuse`` refuses those
    topics' records as the broker does (a failed acknowledgement). ``kafka`` (the fixture)
    closes its client."""

    def __init__(self, refuse: frozenset[str] = frozenset()) -> None:
        self.client = AIOKafkaProducer(
            bootstrap_servers="127.0.0.1:1", max_request_size=MAX_REQUEST_SIZE
        )
        self.refuse = refuse
        self.sent: list[Any] = []
        self.attempts = 0

    async def publish(self, tp: object, out: Any) -> asyncio.Future[object]:
        self.attempts += 1
        done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if isinstance(out, RawRecord):
            self.client._serialize(out.key, out.value, list(out.headers))  # raises: too large
            if out.topic in self.refuse:
                done.set_exception(MessageSizeTooLargeError("the broker: too large"))
                return done
        self.sent.append(out)
        done.set_result(None)
        return done


@pytest.fixture
async def kafka() -> AsyncIterator[Kafka]:
    made = Kafka()
    yield made
    await made.client.stop()  # never started: only marks it closed


def _paths(
    kafka: Kafka, deps: Dependencies, metrics: ConsumerMetrics | None = None
) -> FailurePaths:
    return FailurePaths(
        stage="preprocess",
        publish=kafka.publish,
        failure_events=_error_result,
        metrics=metrics,
        dependencies=deps,
        outage_budget_s=1.0,
        backoff=Backoff(0.01, 0.05),
        max_replays=3,
        replay_delay_s=60.0,
        ack_timeout_s=5.0,
    )


def _too_large() -> PermanentError:
    return PermanentError("the request is over 1 MiB", code="request_too_large")


async def test_a_dead_letter_too_large_for_kafka_goes_out_cut_with_the_error_result(
    kafka: Kafka,
) -> None:
    deps = Dependencies("preprocess", unready_after_s=0.0)
    value = bytes(range(256)) * (NEAR_LIMIT // 256)
    record = _record(value)
    async with asyncio.timeout(0.9):  # less than the outage budget: nothing waits it out
        await _paths(kafka, deps).fail(TP, record, _too_large(), trace.INVALID_SPAN)
    (letter,) = [o for o in kafka.sent if isinstance(o, RawRecord)]
    (result,) = [o for o in kafka.sent if isinstance(o, GenerationResult)]
    assert result.error is not None and result.error.code == "request_too_large"
    headers = dict(letter.headers)
    assert letter.topic == Topic.DLQ and letter.key == record.key
    assert headers[sc.HEADER_DLQ_TRUNCATED] == str(len(value)).encode()
    assert headers[sc.HEADER_DLQ_CODE] == b"request_too_large"
    assert headers[sc.HEADER_DLQ_OFFSET] == b"42"
    assert value.startswith(letter.value) and 0 < len(letter.value) < len(value)
    assert len(value) - len(letter.value) < 128 * 1024  # cut to what fits, not to nothing
    assert deps.reasons() == []  # readiness does not blame Kafka
    assert kafka.attempts == 3  # the letter, the result, the cut letter: none retried


def test_both_clients_refuse_the_copy_and_take_the_cut_one() -> None:
    """What ``Kafka`` models, checked against librdkafka's producer too (the opt-in client):
    the same limit (``message.max.bytes``), headers counted."""
    record = _record(b"x" * NEAR_LIMIT)
    copy = RawRecord(Topic.DLQ, record.value or b"", record.key,
                     tuple(_dlq_headers(record, _too_large(), "preprocess")))  # fmt: skip
    cut = _trimmed(copy)
    assert cut is not None
    rd = Producer({"bootstrap.servers": "127.0.0.1:1", "message.max.bytes": MAX_REQUEST_SIZE})
    try:
        with pytest.raises(KafkaException, match="too large"):
            rd.produce(copy.topic, copy.value, key=copy.key, headers=list(copy.headers))
        rd.produce(cut.topic, cut.value, key=cut.key, headers=list(cut.headers))
    finally:
        rd.purge()
    assert _trimmed(cut) is None  # cut once: never again


async def test_a_letter_refused_even_cut_is_logged_counted_and_the_record_goes_on(
    kafka: Kafka, caplog: pytest.LogCaptureFixture
) -> None:
    kafka.refuse = frozenset({Topic.DLQ})  # e.g. a DLQ topic with a smaller limit
    deps = Dependencies("preprocess", unready_after_s=0.0)
    registry = CollectorRegistry()
    with caplog.at_level(logging.ERROR, logger="genwire.kafka.consumer"):
        async with asyncio.timeout(0.9):
            await _paths(kafka, deps, ConsumerMetrics(registry)).fail(
                TP, _record(b"x" * NEAR_LIMIT), _too_large(), trace.INVALID_SPAN
            )
    assert [type(o) for o in kafka.sent] == [GenerationResult]  # the caller is still answered
    dropped = registry.get_sample_value(
        sc.METRIC_OUTPUTS_DROPPED, {"stage": "preprocess", "topic": Topic.DLQ}
    )
    assert dropped == 1
    # genwire_dlq_total counts letters on genwire.dlq: this one is counted as dropped only.
    dlq = {"topic": Topic.REQUESTS, "stage": "preprocess", "code": "request_too_large"}
    assert registry.get_sample_value(sc.METRIC_DLQ, dlq) is None
    assert "genwire.requests-0@42: its output to genwire.dlq can never be published" in caplog.text
    assert deps.reasons() == []


async def test_a_record_too_large_to_park_is_dead_lettered_with_an_error_result(
    kafka: Kafka,
) -> None:
    registry = CollectorRegistry()
    deps = Dependencies("preprocess", unready_after_s=0.0)
    paths = _paths(kafka, deps, ConsumerMetrics(registry))
    down = RetryableError("redis: down", dependency="redis")
    async with asyncio.timeout(0.9):
        outcome = await paths.park(TP, _record(b"x" * NEAR_LIMIT), down, trace.INVALID_SPAN)
    assert outcome == "failed"  # genwire_messages_total{outcome}: dead-lettered, not parked
    (letter,) = [o for o in kafka.sent if isinstance(o, RawRecord)]
    (result,) = [o for o in kafka.sent if isinstance(o, GenerationResult)]
    assert letter.topic == Topic.DLQ and sc.HEADER_DLQ_TRUNCATED in dict(letter.headers)
    assert result.error is not None and result.error.code == "unavailable"
    assert "too large for Kafka to park" in result.error.message
    labels = {"stage": "preprocess", "code": "unavailable"}
    assert registry.get_sample_value(sc.METRIC_RETRY_TOPIC, labels) is None
    lettered = {"topic": Topic.REQUESTS, **labels}
    assert registry.get_sample_value(sc.METRIC_DLQ, lettered) == 1  # the cut letter went out


async def test_park_says_whether_the_record_was_parked_or_dead_lettered(kafka: Kafka) -> None:
    """The outcome ``genwire_messages_total`` counts the record under."""
    paths = _paths(kafka, Dependencies("preprocess", unready_after_s=0.0))
    down = RetryableError("redis: down", dependency="redis")
    assert await paths.park(TP, _record(b"{}"), down, trace.INVALID_SPAN) == "parked"
    assert [o.topic for o in kafka.sent] == [Topic.RETRY]
    exhausted = _record(b"{}", headers=[(sc.HEADER_RETRY_COUNT, b"3")])  # max_replays: 3
    assert await paths.park(TP, exhausted, down, trace.INVALID_SPAN) == "failed"
    assert [type(o) for o in kafka.sent[1:]] == [RawRecord, GenerationResult]
    assert kafka.sent[1].topic == Topic.DLQ


async def test_a_broker_outage_is_still_waited_out(kafka: Kafka) -> None:
    """A retryable failure is retried as before (the budget), then published."""
    deps = Dependencies("preprocess", unready_after_s=0.0)
    failures = [KafkaConnectionError("down"), KafkaConnectionError("down")]
    publish = kafka.publish

    async def flaky(tp: object, out: Any) -> asyncio.Future[object]:
        if failures:
            raise failures.pop()
        return await publish(tp, out)

    paths = _paths(kafka, deps)
    paths._publish = flaky
    await paths.fail(TP, _record(b"{}"), _too_large(), trace.INVALID_SPAN)
    assert [type(o) for o in kafka.sent] == [RawRecord, GenerationResult]
    assert deps.down_for(KAFKA) is None  # recovered


async def test_the_consumer_commits_a_record_whose_dead_letter_was_too_large(
    kafka: Kafka,
) -> None:
    """The audit's case end to end in the consumer: preprocess rejects a request the broker
    took as too large; its DLQ copy is over the limit. The record finishes (committed), the
    service carries on, and the error result is out."""
    fatal: list[str] = []

    def reject(record: ConsumerRecord[bytes, bytes]) -> Any:
        raise _too_large()

    consumer = offline_consumer(
        None, object(), decoder=reject, failure_events=_error_result, outage_budget_s=1.0,
        retry_backoff_s=0.01, on_fatal=fatal.append,
    )  # fmt: skip
    consumer._paths._publish = kafka.publish
    tracker = consumer._offsets[TP] = PartitionOffsets()
    record = _record(b"x" * NEAR_LIMIT, offset=0)
    tracker.started(0)
    async with asyncio.timeout(0.9):
        await consumer._process(TP, record, tracker)
    assert fatal == []
    assert tracker.committable() == 1
    assert [type(o) for o in kafka.sent] == [GenerationResult, RawRecord]


async def test_an_output_that_cannot_be_encoded_is_dropped_not_fatal(
    kafka: Kafka, caplog: pytest.LogCaptureFixture
) -> None:
    """An error result carrying what JSON in UTF-8 cannot (a lone surrogate the input had): the
    dead letter still goes out, its reason header made encodable; the result is logged, counted
    and dropped; nothing raises (before: the encoding error reached the consumer, which exited,
    and the record came back after every restart)."""
    registry = CollectorRegistry()
    deps = Dependencies("preprocess", unready_after_s=0.0)
    err = PermanentError("invalid model '\ud800'", code="invalid_json")
    publish = kafka.publish

    async def encoding(tp: object, out: Any) -> asyncio.Future[object]:
        if isinstance(out, GenerationResult):
            out.model_dump_json()  # raises: the surrogate
        return await publish(tp, out)

    paths = _paths(kafka, deps, ConsumerMetrics(registry))
    paths._publish = encoding
    with caplog.at_level(logging.ERROR, logger="genwire.kafka.consumer"):
        async with asyncio.timeout(0.9):
            await paths.fail(TP, _record(b"{}"), err, trace.INVALID_SPAN)
    (letter,) = kafka.sent
    assert isinstance(letter, RawRecord) and letter.topic == Topic.DLQ
    assert dict(letter.headers)[sc.HEADER_DLQ_REASON] == b"invalid model '?'"
    labels = {"stage": "preprocess", "topic": GenerationResult.TOPIC}
    assert registry.get_sample_value(sc.METRIC_OUTPUTS_DROPPED, labels) == 1
    assert "can never be published" in caplog.text and deps.reasons() == []


async def test_error_events_that_cannot_be_built_leave_the_dead_letter_alone(
    kafka: Kafka, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    deps = Dependencies("preprocess", unready_after_s=0.0)

    def unbuildable(record: ConsumerRecord[bytes, bytes], err: GenwireError) -> list[Any]:
        raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")

    paths = _paths(kafka, deps, ConsumerMetrics(registry))
    paths._failure_events = unbuildable
    with caplog.at_level(logging.ERROR, logger="genwire.kafka.consumer"):
        await paths.fail(TP, _record(b"{}"), _too_large(), trace.INVALID_SPAN)
    (letter,) = kafka.sent
    assert isinstance(letter, RawRecord) and letter.topic == Topic.DLQ
    labels = {"stage": "preprocess", "topic": "(error events)"}
    assert registry.get_sample_value(sc.METRIC_OUTPUTS_DROPPED, labels) == 1
    assert "its error events could not be built" in caplog.text
