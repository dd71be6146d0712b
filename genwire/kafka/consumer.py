"""EventConsumer: consume → handle → publish → commit, with bounded concurrency and a DLQ.

At-least-once: an offset is committed only after every output of its record (and of every
earlier record of the partition) is acknowledged by the broker, so handlers must be idempotent
by request id. Malformed input and permanent errors go to the DLQ with the reason in headers;
retryable errors are retried with backoff first. Nothing here stops the loop for one bad record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import ConsumerStoppedError
from aiokafka.structs import ConsumerRecord
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from pydantic import BaseModel, ValidationError

from genwire.errors import GenwireError, PermanentError, RetryableError
from genwire.events import Event
from genwire.kafka.offsets import PartitionOffsets
from genwire.kafka.producer import EventProducer
from genwire.metrics import ConsumerMetrics
from genwire.telemetry import semconv as sc
from genwire.telemetry.propagation import extract
from genwire.topics import Topic

log = logging.getLogger(__name__)

InT = TypeVar("InT", bound=BaseModel)
HandlerResult = Event | Sequence[Event] | None
Handler = Callable[[InT], Awaitable[HandlerResult] | AsyncIterator[Event]]
FailureEvents = Callable[[ConsumerRecord[bytes, bytes], GenwireError], Sequence[Event]]
# Parses a record itself (its key, raw bytes); raises GenwireError (e.g. PermanentError with a
# precise code) for a record that can never be handled. Default: ``model.model_validate_json``.
Decoder = Callable[[ConsumerRecord[bytes, bytes]], InT]


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: EventConsumer[Any]) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._owner._drain(set(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._owner._assigned = set(assigned)


class EventConsumer(Generic[InT]):
    """Runs ``handler`` on every record of ``topic`` as consumer group ``group_id``."""

    def __init__(
        self,
        *,
        topic: str,
        group_id: str,
        model: type[InT],
        handler: Handler[InT],
        producer: EventProducer,
        bootstrap_servers: str,
        stage: str,
        concurrency: int = 64,
        max_retries: int = 5,
        retry_backoff_s: float = 0.2,
        failure_events: FailureEvents | None = None,
        decoder: Decoder[InT] | None = None,
        tracer: Tracer | None = None,
        metrics: ConsumerMetrics | None = None,
        auto_offset_reset: str = "earliest",
        max_partition_fetch_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.topic = topic
        self.group_id = group_id
        self._model = model
        self._handler = handler
        self._producer = producer
        self._stage = stage
        self._max_retries = max_retries
        self._backoff = retry_backoff_s
        self._failure_events = failure_events
        self._decoder = decoder
        self._tracer = tracer or trace.get_tracer("genwire.kafka")
        self._metrics = metrics
        self._sem = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._offsets: dict[TopicPartition, PartitionOffsets] = {}
        # In-flight record tasks and their partitions (a task leaves when it is done).
        self._tasks: dict[asyncio.Task[None], TopicPartition] = {}
        self._dirty = asyncio.Event()
        self._assigned: set[TopicPartition] = set()
        self._stopping = False
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset=auto_offset_reset,
            max_partition_fetch_bytes=max_partition_fetch_bytes,
            fetch_max_wait_ms=100,
        )

    @property
    def ready(self) -> bool:
        """True once the group has assigned this consumer its partitions."""
        return bool(self._assigned) and not self._stopping

    async def start(self) -> None:
        """Join the group (assignment completes in the background)."""
        self._consumer.subscribe([self.topic], listener=_Rebalance(self))
        await self._consumer.start()

    async def run(self) -> None:
        """Fetch and dispatch until ``stop``; commits run beside it."""
        committer = asyncio.create_task(self._commit_loop())
        try:
            while not self._stopping:
                try:
                    batches = await self._consumer.getmany(
                        timeout_ms=200, max_records=self._concurrency
                    )
                except ConsumerStoppedError:
                    if self._stopping:  # stop() closed the client under a pending fetch
                        return
                    raise
                for tp, records in batches.items():
                    for record in records:
                        await self._sem.acquire()
                        # stop() may have snapshotted the in-flight records while we waited:
                        # a task started now would escape its drain; redelivery takes the rest.
                        if self._stopping:
                            self._sem.release()
                            return
                        tracker = self._offsets.setdefault(tp, PartitionOffsets())
                        tracker.started(record.offset)
                        task = asyncio.create_task(self._process(tp, record, tracker))
                        self._tasks[task] = tp
                        task.add_done_callback(self._tasks.pop)
        finally:
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer

    async def stop(self, timeout_s: float = 20.0) -> None:
        """Stop fetching, let in-flight records finish (bounded), commit, leave the group."""
        self._stopping = True
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in pending:
                task.cancel()
        with contextlib.suppress(Exception):
            await self._commit()
        await self._consumer.stop()

    async def _process(
        self,
        tp: TopicPartition,
        record: ConsumerRecord[bytes, bytes],
        tracker: PartitionOffsets,
    ) -> None:
        started = time.perf_counter()
        outcome = "ok"
        if self._metrics:
            self._metrics.inflight.labels(self._stage).inc()
        try:
            outcome = await self._handle_record(record)
        except asyncio.CancelledError:
            # Stopped mid-record: leave it uncommitted so the group redelivers it.
            outcome = "cancelled"
            raise
        except Exception:  # even the DLQ failed: keep it uncommitted, never die
            log.exception("could not handle nor dead-letter %s@%s", tp, record.offset)
            outcome = "uncommitted"
        finally:
            # Not the current tracker: the partition was revoked and drained meanwhile (maybe
            # reassigned since, with a new tracker that must not see this older offset).
            if self._offsets.get(tp) is tracker and outcome not in ("cancelled", "uncommitted"):
                tracker.finished(record.offset)
            self._dirty.set()
            self._sem.release()
            if self._metrics:
                self._metrics.inflight.labels(self._stage).dec()
                self._metrics.messages.labels(self.topic, self._stage, outcome).inc()
                self._metrics.duration.labels(self.topic, self._stage).observe(
                    time.perf_counter() - started
                )

    async def _handle_record(self, record: ConsumerRecord[bytes, bytes]) -> str:
        parent = extract(record.headers)
        wait_ms = max(0.0, time.time() * 1000 - record.timestamp)
        attributes = {
            sc.MESSAGING_SYSTEM: "kafka",
            sc.MESSAGING_DESTINATION: self.topic,
            sc.MESSAGING_OPERATION_TYPE: "process",
            sc.MESSAGING_OPERATION_NAME: "process",
            sc.MESSAGING_CONSUMER_GROUP: self.group_id,
            sc.MESSAGING_PARTITION: str(record.partition),
            sc.MESSAGING_OFFSET: record.offset,
            sc.MESSAGING_BODY_SIZE: len(record.value or b""),
            sc.STAGE: self._stage,
            sc.WAIT_MS: wait_ms,
        }
        if record.key:
            attributes[sc.MESSAGING_MESSAGE_KEY] = record.key.decode("utf-8", "replace")
        with self._tracer.start_as_current_span(
            sc.process_span_name(self.topic),
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        ) as span:
            try:
                if self._decoder is not None:
                    event = self._decoder(record)
                else:
                    event = self._model.model_validate_json(record.value or b"")
            except ValidationError as exc:
                err = PermanentError(_describe(exc), code="invalid_message")
                await self._fail(record, err, span)
                return "invalid"
            except GenwireError as exc:  # the decoder's verdict, with its own code
                await self._fail(record, exc, span)
                return "invalid"
            for attempt in range(self._max_retries + 1):
                try:
                    await self._run_handler(event)
                    return "ok"
                except RetryableError as exc:
                    if attempt == self._max_retries:
                        await self._fail(record, exc, span)
                        return "failed"
                    if self._metrics:
                        self._metrics.retries.labels(self._stage).inc()
                    await asyncio.sleep(self._backoff * 2**attempt)
                except GenwireError as exc:
                    await self._fail(record, exc, span)
                    return "rejected"
                except Exception as exc:
                    log.exception("handler failed on %s", record.key)
                    await self._fail(record, GenwireError(f"internal error: {exc}"), span)
                    return "failed"
        return "failed"

    async def _run_handler(self, event: InT) -> None:
        result = self._handler(event)
        pending: list[asyncio.Future[object]] = []
        if isinstance(result, AsyncIterator):
            async for out in result:
                pending.append(await self._producer.publish(out))
        else:
            produced = await result
            outs = (
                []
                if produced is None
                else [produced]
                if isinstance(produced, Event)
                else list(produced)
            )
            for out in outs:
                pending.append(await self._producer.publish(out))
        if pending:
            await asyncio.gather(*pending)

    async def _fail(
        self, record: ConsumerRecord[bytes, bytes], err: GenwireError, span: trace.Span
    ) -> None:
        """DLQ record (original bytes, reason in headers) plus the stage's error events."""
        span.set_status(Status(StatusCode.ERROR, err.message))
        span.set_attribute(sc.ERROR_CODE, err.code)
        if self._metrics:
            self._metrics.dlq.labels(self._stage, err.code).inc()
        headers = [(k, v) for k, v in record.headers or () if not k.startswith("genwire_dlq")]
        headers += [
            (sc.HEADER_DLQ_REASON, err.message[:1000].encode()),
            (sc.HEADER_DLQ_CODE, err.code.encode()),
            (sc.HEADER_DLQ_TOPIC, record.topic.encode()),
            (sc.HEADER_DLQ_PARTITION, str(record.partition).encode()),
            (sc.HEADER_DLQ_OFFSET, str(record.offset).encode()),
            (sc.HEADER_DLQ_STAGE, self._stage.encode()),
        ]
        futures = [
            await self._producer.send(
                Topic.DLQ, record.value or b"", key=record.key, headers=headers
            )
        ]
        if self._failure_events is not None:
            for out in self._failure_events(record, err):
                futures.append(await self._producer.publish(out))
        await asyncio.gather(*futures)

    async def _commit_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._commit()
            except Exception as exc:  # a rebalance may revoke mid-commit: redelivery is safe
                log.warning("commit failed (records may be redelivered): %s", exc)
            await asyncio.sleep(0.05)  # coalesce commits of records finishing together

    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        offsets = {}
        for tp, tracker in self._offsets.items():
            if only is not None and tp not in only:
                continue
            if tp not in self._assigned:
                continue
            position = tracker.committable()
            if position is not None:
                offsets[tp] = position
        if offsets:
            await self._consumer.commit(offsets)

    async def _drain(self, revoked: set[TopicPartition], timeout_s: float = 15.0) -> None:
        """Before losing partitions: finish their records and commit them."""
        busy = [t for t, tp in self._tasks.items() if tp in revoked]
        if busy:
            await asyncio.wait(busy, timeout=timeout_s)
        with contextlib.suppress(Exception):
            await self._commit(revoked)
        for tp in revoked:
            self._offsets.pop(tp, None)
        self._assigned -= revoked


def _describe(exc: ValidationError) -> str:
    """One readable line per validation problem, without echoing the input."""
    parts = []
    for e in exc.errors(include_url=False, include_input=False)[:5]:
        loc = ".".join(str(p) for p in e["loc"]) or "message"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)
