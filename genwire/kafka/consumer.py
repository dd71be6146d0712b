"""EventConsumer: consume → handle → publish → commit, with bounded concurrency.

At-least-once: an offset is committed only after every output of its record (and of every
earlier record of the partition) is acknowledged by the broker, so handlers must be idempotent
by request id. What happens to a record that does not succeed (docs/architecture.md, *Errors*;
the paths themselves are in ``failures.py``):

- undecodable or invalid (``PermanentError``, a bug): DLQ record with the reason in headers,
  plus the stage's error events, so the caller gets an error result;
- rejected (``Rejection``, e.g. content filtered): the error events only, no DLQ record;
- a dependency down (``RetryableError``, a failed publish): retried with capped exponential
  backoff and jitter for ``outage_budget_s`` while the consumer stops taking new records; past
  the budget the record is parked on ``genwire.retry`` and replayed later (``replay``), and
  after ``max_replays`` parkings it is dead-lettered with an error result;
- if even that cannot be published within the budget, the service gives up loudly:
  ``on_fatal`` (the runtime turns not ready and exits, so its supervisor restarts it) and the
  record stays uncommitted for the next owner.

Rebalances: records of a revoked partition are not dispatched (nor those handed out while it
is drained), and work still running for it after ``drain_timeout_s`` is cancelled; outputs are
fenced (not published once the partition is gone), so the new owner's work is the only one
published, and a record whose outputs were fenced is not finished here (not committed). A
partition whose last commit failed (lost with the group session in a broker outage, on
librdkafka) and that the group gives back to this consumer resumes after the records it
finished (``_resume_unsettled``), not at the older commit, unless another member committed
further meanwhile. The fetch loop never blocks on a full worker pool: it pauses the partitions
and keeps polling, so the group never sees a member that stopped polling.

Order: records run concurrently. With ``ordered_keys`` (postprocess: a request's streamed
chunks) a record starts only once the previous record of its partition with the same key has
finished (``_after``), so their outputs are published in the order the records were written
(except after a parked record, which is replayed later).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import ConsumerStoppedError, KafkaError
from aiokafka.structs import ConsumerRecord
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Tracer
from pydantic import BaseModel, ValidationError

from genwire.errors import GenwireError, PermanentError, RetryableError, describe_validation
from genwire.events import Event
from genwire.health import Backoff, Dependencies
from genwire.kafka.failures import (
    FailureEvents,
    FailurePaths,
    Fenced,
    GaveUp,
    Output,
    RawRecord,
    acknowledged,
)
from genwire.kafka.offsets import PartitionOffsets
from genwire.kafka.producer import KAFKA, EventProducer, forward_headers, publish_error
from genwire.kafka_security import client_kind, client_options
from genwire.metrics import ConsumerMetrics
from genwire.settings import FETCH_WAIT_LIMIT_MS
from genwire.telemetry import semconv as sc
from genwire.telemetry.propagation import extract

log = logging.getLogger(__name__)


InT = TypeVar("InT", bound=BaseModel)
HandlerResult = Output | Sequence[Output] | None
Handler = Callable[[InT], Awaitable[HandlerResult] | AsyncIterator[Output]]
# Parses a record itself (its key, raw bytes); raises GenwireError (e.g. PermanentError with a
# precise code) for a record that can never be handled. Default: ``model.model_validate_json``.
Decoder = Callable[[ConsumerRecord[bytes, bytes]], InT]


RECORDS_CANCEL_S = 5.0
"""On stop, how long records still running at the drain bound get after their cancel before
they are left (uncommitted: redelivered to whoever owns the partition next) and logged."""

STOP_COMMIT_S = 5.0
"""On stop, how long the commit of the finished records may take (then the client closes):
aiokafka retries a commit for as long as no coordinator answers. Past it they are uncommitted,
logged, and redelivered to the partitions' next owner."""

RESUME_TIMEOUT_S = 10.0
"""How long the partitions given back after a failed commit may take, all together, to read the
group's commits and commit the positions this consumer finished (at most half the session: the
rebalance waits for it); past it their records may be delivered again, as without the resume."""

COMMIT_INTERVAL_S = 0.25
"""Finished records are committed at most this often (every record still only after all of its
outputs are acknowledged: a longer interval only means more redelivery after a crash). Each
commit is an OffsetCommit request and a ``__consumer_offsets`` append on the broker: at 50 ms
the three stages' commits were 18 % of the broker's requests at concurrency 1."""

FETCH_MAX_WAIT_MS = 500
"""How long the broker holds a fetch that finds no record (Kafka's own default). ``fetch.min.bytes``
is 1, so a fetch returns at the first record: this sets only how often an idle consumer polls
(each poll is a fetch request and response parsed in Python, and work for the broker). One
fetch per broker is in flight at a time; on aiokafka an ``EventConsumer`` pauses every partition
together, so a fetch in flight at a pause covers the partitions it resumes and ends at their
first record (on librdkafka its holds stay in the loop: docs/stages.md). The readers of quiet
topics wait longer (``kafka_quiet_fetch_max_wait_ms``)."""


FETCHER_TICK_MS = 1_000
"""The least ``consumer_timeout_ms`` (aiokafka's default: 200) of every long-lived consumer that
reads partitions (``fetcher_tick_ms``): how often its background fetcher wakes when nothing
happened. What it acts on (a fetch answered, records taken, a pause lifted, a seek, a
reassignment, a metadata refresh it forced) wakes it without the timer, and an idle consumer's
fetch is answered every ``fetch_max_wait_ms``, so a tick shorter than that only adds wake-ups:
four a second per consumer at 200 ms against a 500 ms fetch wait (docs/benchmarks.md, *The
fetcher's tick*)."""


def fetcher_tick_ms(fetch_max_wait_ms: int) -> int:
    """``consumer_timeout_ms`` for a consumer whose fetches wait ``fetch_max_wait_ms``: longer
    than the wait, so an idle consumer's fetcher wakes once per answered fetch."""
    return max(FETCHER_TICK_MS, 2 * fetch_max_wait_ms)


def fetch_wait_options(fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS) -> dict[str, int]:
    """The fetch wait and its fetcher's tick, as ``AIOKafkaConsumer`` keyword arguments: every
    long-lived consumer takes both from here, so none has a wait without its tick, and none a
    wait its request timeout would cut (``FETCH_WAIT_LIMIT_MS``: ``ValueError``)."""
    if not 0 <= fetch_max_wait_ms <= FETCH_WAIT_LIMIT_MS:
        raise ValueError(
            f"a fetch wait of {fetch_max_wait_ms} ms: it must be 0 to {FETCH_WAIT_LIMIT_MS} ms"
        )
    return {
        "fetch_max_wait_ms": fetch_max_wait_ms,
        "consumer_timeout_ms": fetcher_tick_ms(fetch_max_wait_ms),
    }


IDLE_POLL_MS = 1_000
"""How long one ``getmany`` waits for records when the consumer is not held. It returns at the
first record fetched, and ``stop`` ends it by closing the client, so this bounds only how often
an idle consumer's loop wakes with nothing to do (five times a second at 200 ms, per consumer:
docs/benchmarks.md, *The idle stack's wake-ups*)."""


def consumer_options(
    bootstrap_servers: str,
    *,
    group_id: str | None,
    auto_offset_reset: str = "earliest",
    max_partition_fetch_bytes: int = 16 * 1024 * 1024,
    fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS,
    session_timeout_ms: int = 10_000,
    heartbeat_interval_ms: int = 3_000,
) -> dict[str, Any]:
    """The ``AIOKafkaConsumer`` keyword arguments of every ``EventConsumer`` (and of the
    one-hop floor benchmark, ``genwire_bench.floor``, which must measure the same client)."""
    return {
        "bootstrap_servers": bootstrap_servers,
        **client_options(),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": auto_offset_reset if group_id is not None else "latest",
        "max_partition_fetch_bytes": max_partition_fetch_bytes,
        **fetch_wait_options(fetch_max_wait_ms),
        "session_timeout_ms": session_timeout_ms,
        "heartbeat_interval_ms": heartbeat_interval_ms,
    }


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: EventConsumer[Any]) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._owner._drain(set(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._owner._assigned = set(assigned)
        self._owner._joined = True
        await self._owner._resume_unsettled(set(assigned))


def _unsampled_span() -> trace.Span:
    """A valid, not sampled, non-recording span: made current, its children are not recorded
    (the samplers are parent-based) and what is published under it carries ``traceparent``
    flags 00, where an invalid one would let each child start a sampled trace of its own."""
    return trace.NonRecordingSpan(
        trace.SpanContext(
            trace_id=random.getrandbits(128) or 1,
            span_id=random.getrandbits(64) or 1,
            is_remote=False,
            trace_flags=trace.TraceFlags(trace.TraceFlags.DEFAULT),
        )
    )


class EventConsumer(Generic[InT]):
    """Runs ``handler`` on every record of ``topic`` as consumer group ``group_id``.

    ``group_id=None``: no group; every partition is read from its end (e.g. cancels, which
    every instance must see from now on) and nothing is committed or left on the broker.
    ``ordered_keys``: records with the same key run one after another, in partition order (the
    module's *Order*); off, a duplicate or a shadow copy of a request runs beside it.
    ``root_spans=False``: a record without a trace context gets no process span (a gateway's
    heartbeat every second would otherwise start a trace of its own, forever), and nothing the
    handler or a failure path publishes for it is traced either (an unsampled context); one
    that carries a context (a cancel from a request's trace) is traced as always.
    """

    def __init__(
        self,
        *,
        topic: str,
        group_id: str | None,
        model: type[InT],
        handler: Handler[InT],
        producer: EventProducer,
        bootstrap_servers: str,
        stage: str,
        concurrency: int = 64,
        outage_budget_s: float = 300.0,
        retry_backoff_s: float = 0.2,
        retry_backoff_max_s: float = 10.0,
        retry_probe_s: float = 1.0,
        max_replays: int = 3,
        replay_delay_s: float = 60.0,
        drain_timeout_s: float = 15.0,
        failure_events: FailureEvents | None = None,
        decoder: Decoder[InT] | None = None,
        tracer: Tracer | None = None,
        metrics: ConsumerMetrics | None = None,
        dependencies: Dependencies | None = None,
        on_fatal: Callable[[str], None] | None = None,
        auto_offset_reset: str = "earliest",
        max_partition_fetch_bytes: int = 16 * 1024 * 1024,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
        fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS,
        commit_interval_s: float = COMMIT_INTERVAL_S,
        root_spans: bool = True,
        ordered_keys: bool = False,
    ) -> None:
        self.topic = topic
        self._root_spans = root_spans
        self._ordered_keys = ordered_keys
        self._commit_interval_s = commit_interval_s
        self.group_id = group_id
        self._model = model
        self._handler = handler
        self._producer = producer
        self._stage = stage
        self._budget_s = outage_budget_s
        self._backoff = Backoff(retry_backoff_s, retry_backoff_max_s)
        self._probe_s = retry_probe_s
        self._drain_timeout_s = drain_timeout_s
        self._decoder = decoder
        self._tracer = tracer or trace.get_tracer("genwire.kafka")
        self._metrics = metrics
        self._deps = dependencies or Dependencies(stage)
        self._on_fatal = on_fatal
        self._paths = FailurePaths(
            stage=stage,
            publish=self._publish,
            failure_events=failure_events,
            metrics=metrics,
            dependencies=self._deps,
            outage_budget_s=outage_budget_s,
            backoff=self._backoff,
            max_replays=max_replays,
            replay_delay_s=replay_delay_s,
            ack_timeout_s=producer.ack_timeout_s,
        )
        self._concurrency = concurrency
        self._offsets: dict[TopicPartition, PartitionOffsets] = {}
        # In-flight record tasks and their partitions (a task leaves when it is done).
        self._tasks: dict[asyncio.Task[None], TopicPartition] = {}
        # ``ordered_keys``: the latest task of each (partition, key), which the next record
        # with that key waits for.
        self._last_of_key: dict[tuple[TopicPartition, bytes], asyncio.Task[None]] = {}
        self._waiting = 0  # records backing off for a dependency: take no new ones meanwhile
        self._room = asyncio.Event()  # a record finished or stopped waiting: maybe resume
        self._hold_poll_s = 0.2  # while held, poll at least this often (the group's liveness)
        self._dirty = asyncio.Event()
        self._assigned: set[TopicPartition] = set()
        # Revoked (or lost) partitions whose last commit failed: the position after the records
        # this consumer finished there, for when the group gives one back (``_resume_unsettled``).
        self._unsettled: dict[TopicPartition, int] = {}
        self._resuming: set[TopicPartition] = set()  # paused until ``_resume_unsettled`` ends
        # Partitions being revoked (``_drain``): librdkafka hands out their queued records until
        # the revoke's listener returns; none is started, so each drain knows all its records.
        self._draining: set[TopicPartition] = set()
        self._holding = False  # the run loop holds every partition (``_throttle``)
        self._polling_free = False  # the run loop awaits a fetch with partitions not held
        self._session_s = session_timeout_ms / 1000.0
        self._joined = False  # the group gave this member its share (maybe none: more members)
        self._stopping = False
        self._consumer: AIOKafkaConsumer
        if group_id is not None and client_kind() == "librdkafka":
            from genwire.kafka.rdkafka_consumer import RdConsumer  # confluent-kafka only if chosen

            self._consumer = RdConsumer(  # type: ignore[assignment]  # AIOKafkaConsumer's face
                bootstrap_servers=bootstrap_servers,
                group_id=group_id,
                auto_offset_reset=auto_offset_reset,
                max_partition_fetch_bytes=max_partition_fetch_bytes,
                fetch_max_wait_ms=fetch_max_wait_ms,
                session_timeout_ms=session_timeout_ms,
                heartbeat_interval_ms=heartbeat_interval_ms,
            )
        else:  # aiokafka, and always without a group (assigned partitions read from the end)
            self._consumer = AIOKafkaConsumer(
                **consumer_options(
                    bootstrap_servers,
                    group_id=group_id,
                    auto_offset_reset=auto_offset_reset,
                    max_partition_fetch_bytes=max_partition_fetch_bytes,
                    fetch_max_wait_ms=fetch_max_wait_ms,
                    session_timeout_ms=session_timeout_ms,
                    heartbeat_interval_ms=heartbeat_interval_ms,
                )
            )

    @property
    def ready(self) -> bool:
        """True once the group has given this consumer its share of partitions."""
        return self._joined and not self._stopping

    def stalled(self, threshold_s: float) -> dict[TopicPartition, float]:
        """Partitions with work that made no progress for ``threshold_s``: seconds stalled."""
        now = time.monotonic()
        out = {}
        for tp, tracker in self._offsets.items():
            waited = tracker.stalled_for(now)
            if tp in self._assigned and waited >= threshold_s:
                out[tp] = waited
        return out

    def progress(self) -> dict[TopicPartition, float]:
        """Seconds each assigned partition has waited for progress (0: none pending)."""
        now = time.monotonic()
        return {tp: t.stalled_for(now) for tp, t in self._offsets.items() if tp in self._assigned}

    async def start(self) -> None:
        """Join the group (assignment completes in the background), or assign every partition."""
        if self.group_id is None:
            await self._consumer.start()
            # The consumer has no public async metadata call (aiokafka 0.14, pinned); this is
            # what the producer's public partitions_for() awaits.
            partitions = await self._consumer._client._wait_on_metadata(self.topic) or set()
            if not partitions:
                raise KafkaError(f"topic {self.topic} has no partitions (does it exist?)")
            self._assigned = {TopicPartition(self.topic, p) for p in partitions}
            self._consumer.assign(list(self._assigned))
            await self._consumer.seek_to_end(*self._assigned)
            self._joined = True
            return
        self._consumer.subscribe([self.topic], listener=_Rebalance(self))
        await self._consumer.start()

    async def run(self) -> None:
        """Fetch and dispatch until ``stop``; commits run beside it."""
        committer = asyncio.create_task(self._commit_loop())
        try:
            while not self._stopping:
                free = self._concurrency - len(self._tasks)
                hold = free <= 0 or self._waiting > 0
                self._throttle(hold)
                if hold:
                    self._room.clear()
                self._polling_free = not hold
                try:
                    # Held: the poll still counts for the group, but nothing waits on a fetch of
                    # paused partitions; the wait for room below ends when a record finishes.
                    batches = await self._consumer.getmany(
                        timeout_ms=0 if hold else IDLE_POLL_MS, max_records=max(1, free)
                    )
                except ConsumerStoppedError:
                    if self._stopping:  # stop() closed the client under a pending fetch
                        return
                    raise
                finally:
                    self._polling_free = False
                for tp, records in batches.items():
                    if tp not in self._assigned or tp in self._draining:
                        continue  # revoked while fetched, or being drained: the new owner's
                    for record in records:
                        if self._stopping:  # redelivery takes the rest
                            return
                        tracker = self._offsets.setdefault(tp, PartitionOffsets())
                        tracker.started(record.offset)
                        task = asyncio.create_task(
                            self._process(tp, record, tracker, self._after(tp, record))
                        )
                        self._tasks[task] = tp
                        task.add_done_callback(self._tasks.pop)
                        task.add_done_callback(self._wake)  # after pop: room counts it gone
                        if self._ordered_keys and record.key:
                            self._last_of_key[(tp, record.key)] = task
                            task.add_done_callback(partial(self._forget_key, (tp, record.key)))
                if hold and not self._stopping:
                    # Resume as soon as there is room, not at the next held poll: a full pool
                    # of fast records would otherwise take ``concurrency`` records per poll.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._hold_poll_s):
                            await self._room.wait()
        finally:
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer

    def _wake(self, _: object = None) -> None:
        self._room.set()

    def _after(
        self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]
    ) -> asyncio.Task[None] | None:
        """With ``ordered_keys``: the unfinished task of the previous record with this key in
        this partition. Without the wait a request's chunk whose handler paused (a tokenizer's
        first load, a metadata refresh) published its outputs after the next chunk's: readers
        saw a stream's text out of order (tests/scale/test_replicas.py, two postprocess
        instances). Not for every stage: on ``genwire.prepared`` a shadow copy and a
        redelivered duplicate share the request's key and must not wait for it."""
        if not self._ordered_keys or not record.key:
            return None
        return self._last_of_key.get((tp, record.key))

    def _forget_key(self, key: tuple[TopicPartition, bytes], task: asyncio.Task[None]) -> None:
        if self._last_of_key.get(key) is task:
            del self._last_of_key[key]

    def _throttle(self, hold: bool) -> None:
        """Pause every assigned partition while full or waiting out an outage; else resume."""
        assignment = self._consumer.assignment()
        self._holding = hold
        if hold:
            self._consumer.pause(*assignment)
        elif self._consumer.paused() - self._resuming:
            self._consumer.resume(*(self._consumer.paused() - self._resuming))

    async def stop(self, timeout_s: float = 20.0) -> None:
        """Stop fetching, let in-flight records finish (bounded), commit, leave the group."""
        self._stopping = True
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                _, pending = await asyncio.wait(pending, timeout=RECORDS_CANCEL_S)
            if pending:
                # Left running: uncommitted, so the group redelivers them. Named, because a
                # record that ignores its cancel is a bug to find.
                parts = sorted(
                    {f"{tp.topic}-{tp.partition}" for tp in map(self._tasks.get, pending) if tp}
                )
                log.warning(
                    "stopping: %d record(s) of %s still running %.1f s after their cancel; "
                    "left uncommitted",
                    len(pending),
                    ", ".join(parts),
                    RECORDS_CANCEL_S,
                )
        await self._final_commit()
        await self._close()

    async def _close(self) -> None:
        """Leave the group and close the client. aiokafka's close cancels its fetches and then
        awaits them; one cancelled while it sleeps out a failed fetch's backoff (in a Kafka
        outage, most of the time) re-raises that cancel from the close, which then never
        closes its connections (aio-libs/aiokafka#647). That cancel is not this stop's: the
        stop goes on, with the connections closed here."""
        try:
            await self._consumer.stop()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the stop itself was cancelled
            log.warning("stopping: the Kafka client's close was cut short by its own fetch")
            client = getattr(self._consumer, "_client", None)  # aiokafka's connections
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()

    async def _final_commit(self) -> None:
        """Commit what finished, within ``STOP_COMMIT_S``: aiokafka's commit retries for as long
        as it finds no coordinator (a Kafka outage: the very thing a service that gave up stops
        for), and the client is closed only after this. What is not committed is said, and
        delivered again to the partitions' next owner (at least once)."""
        try:
            async with asyncio.timeout(STOP_COMMIT_S):
                await self._commit()
        except Exception as exc:  # the timeout included
            why = f"no answer in {STOP_COMMIT_S:g} s" if isinstance(exc, TimeoutError) else exc
            left = [
                f"{tp.topic}-{tp.partition} up to {position}"
                for tp, tracker in sorted(self._offsets.items())
                if (position := tracker.committable()) is not None and position != tracker.committed
            ]
            if left:
                log.warning(
                    "stopping: finished records not committed (%s): %s; their partitions' next "
                    "owner handles them again, from the group's last commit",
                    why,
                    ", ".join(left),
                )

    async def _process(
        self,
        tp: TopicPartition,
        record: ConsumerRecord[bytes, bytes],
        tracker: PartitionOffsets,
        after: asyncio.Task[None] | None = None,
    ) -> None:
        if after is not None:
            try:
                await asyncio.wait({after})  # however it ended
            except asyncio.CancelledError:  # stopped or revoked while waiting: uncommitted
                if self._metrics:
                    self._metrics.messages.labels(self.topic, self._stage, "cancelled").inc()
                raise
        started = time.perf_counter()
        outcome = "ok"
        if self._metrics:
            self._metrics.inflight.labels(self._stage).inc()
        forward_headers(record.headers)
        try:
            outcome = await self._handle_record(tp, record)
        except asyncio.CancelledError:
            # Stopped or revoked mid-record: leave it uncommitted so the group redelivers it.
            outcome = "cancelled"
            raise
        except Fenced:  # revoked before a failure path could publish: the new owner's record
            outcome = "revoked"
        except GaveUp as exc:
            outcome = "uncommitted"
            if self._on_fatal is not None:
                self._on_fatal(str(exc))
        except Exception as exc:  # a bug in this module: never finish the record silently
            log.exception("could not handle %s@%s", tp, record.offset)
            outcome = "uncommitted"
            if self._on_fatal is not None:
                self._on_fatal(f"record {tp.topic}-{tp.partition}@{record.offset}: {exc!r}")
        finally:
            # Not the current tracker: the partition was revoked and drained meanwhile (maybe
            # reassigned since, with a new tracker that must not see this older offset).
            if self._offsets.get(tp) is tracker and outcome not in (
                "cancelled",
                "uncommitted",
                "revoked",
            ):
                tracker.finished(record.offset)
            self._dirty.set()
            if self._metrics:
                self._metrics.inflight.labels(self._stage).dec()
                self._metrics.messages.labels(self.topic, self._stage, outcome).inc()
                self._metrics.duration.labels(self.topic, self._stage).observe(
                    time.perf_counter() - started
                )

    async def _handle_record(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> str:
        parent = extract(record.headers)
        wait_ms = max(0.0, time.time() * 1000 - record.timestamp)
        attributes = {
            sc.MESSAGING_SYSTEM: "kafka",
            sc.MESSAGING_DESTINATION: self.topic,
            sc.MESSAGING_OPERATION_TYPE: "process",
            sc.MESSAGING_OPERATION_NAME: "process",
            sc.MESSAGING_PARTITION: str(record.partition),
            sc.MESSAGING_OFFSET: record.offset,
            sc.MESSAGING_BODY_SIZE: len(record.value or b""),
            sc.STAGE: self._stage,
            sc.WAIT_MS: wait_ms,
        }
        if self.group_id is not None:
            attributes[sc.MESSAGING_CONSUMER_GROUP] = self.group_id
        if record.key:
            attributes[sc.MESSAGING_MESSAGE_KEY] = record.key.decode("utf-8", "replace")
        if self._root_spans or trace.get_current_span(parent).get_span_context().is_valid:
            scope = self._tracer.start_as_current_span(
                sc.process_span_name(self.topic),
                context=parent,
                kind=SpanKind.CONSUMER,
                attributes=attributes,
            )
        else:  # untraced, and so is what it publishes (a DLQ record, say): not sampled
            scope = trace.use_span(_unsampled_span(), end_on_exit=False)
        with scope as span:
            try:
                if self._decoder is not None:
                    event = self._decoder(record)
                else:
                    event = self._model.model_validate_json(record.value or b"")
            except ValidationError as exc:
                err = PermanentError(
                    describe_validation(exc, subject="message"), code="invalid_message"
                )
                await self._paths.fail(tp, record, err, span)
                return "invalid"
            except GenwireError as exc:  # the decoder's verdict, with its own code
                await self._paths.fail(tp, record, exc, span)
                return "invalid"
            return await self._run_with_retries(tp, record, event, span)

    async def _run_with_retries(
        self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes], event: InT, span: Any
    ) -> str:
        first_failure: float | None = None
        failed: set[str] = set()  # every dependency this record waited for
        attempt = 0
        bounded = 0  # tries in a row ended by an error that bounds them (``max_tries``)
        me = object()  # this record's retries, as the prober of a dependency
        try:
            while True:
                try:
                    await self._run_handler(tp, event)
                    for dependency in failed:
                        self._deps.recovered(dependency)
                    return "ok"
                except RetryableError as exc:
                    err: GenwireError = exc
                except KafkaError as exc:
                    err = publish_error(exc)
                    if not isinstance(err, RetryableError):
                        await self._paths.fail(tp, record, err, span)
                        return "failed"
                except Fenced:
                    return "revoked"
                except GenwireError as exc:
                    await self._paths.fail(tp, record, exc, span)
                    return "rejected" if not exc.dead_letter else "invalid"
                except Exception as exc:
                    log.exception("handler failed on %s", record.key)
                    await self._paths.fail(tp, record, GenwireError(f"internal error: {exc}"), span)
                    return "failed"
                # A dependency is down: wait it out (bounded), taking no new records meanwhile.
                assert isinstance(err, RetryableError)
                failed.add(err.dependency)
                bounded = bounded + 1 if err.max_tries is not None else 0
                if err.max_tries is None:
                    self._deps.failed(err.dependency, err.message)
                elif self._deps.down_for(err.dependency) is not None:
                    # A bounded error may be the record's own (its batch ran short of memory),
                    # and the dependency answered it: an outage this record waited out before
                    # is over (its waiters woken once, then; not at every memory failure).
                    self._deps.recovered(err.dependency)
                now = time.monotonic()
                if first_failure is None:
                    first_failure = now
                    self._waiting += 1
                    if self._polling_free and not self._stopping:
                        # The run loop's fetch, begun before this wait, would hand out what
                        # arrives in the next IDLE_POLL_MS: paused now, it hands out nothing.
                        self._throttle(True)
                tried_out = err.max_tries is not None and bounded >= err.max_tries
                if tried_out or now - first_failure >= self._budget_s:
                    tries = bounded if tried_out else None
                    return await self._paths.park(tp, record, err, span, tries=tries)
                if self._metrics:
                    self._metrics.retries.labels(self._stage).inc()
                # One waiting record probes the dependency every retry_probe_s; its success
                # wakes the others, whose backoff may have grown to its cap.
                await self._deps.wait_back(
                    err.dependency, self._backoff.delay(attempt), me, self._probe_s
                )
                attempt += 1
                if tp not in self._assigned:
                    return "revoked"
        finally:
            self._deps.release_probe(me)
            if first_failure is not None:
                self._waiting -= 1
                if self._waiting == 0 and self._polling_free and not self._stopping:
                    self._throttle(False)  # that fetch had room: its partitions go on at once
                self._wake()

    async def _run_handler(self, tp: TopicPartition, event: InT) -> None:
        result = self._handler(event)
        pending: list[asyncio.Future[object]] = []
        if isinstance(result, AsyncIterator):
            try:
                async for out in result:
                    pending.append(await self._publish(tp, out))
            finally:
                # Closed at once on any failure: its own cleanup (e.g. inference forgetting
                # the run, cancelling the model) must happen before the retry, not at GC.
                if isinstance(result, AsyncGenerator):
                    await result.aclose()
        else:
            produced = await result
            outs: list[Output] = (
                []
                if produced is None
                else [produced]
                if isinstance(produced, Event | RawRecord)
                else list(produced)
            )
            for out in outs:
                pending.append(await self._publish(tp, out))
        await acknowledged(pending, self._producer.ack_timeout_s)

    async def _publish(self, tp: TopicPartition, out: Output) -> asyncio.Future[object]:
        if tp not in self._assigned:  # fenced: a revoked partition publishes nothing more
            raise Fenced
        if isinstance(out, RawRecord):
            return await self._producer.send(
                out.topic, out.value, key=out.key, headers=out.headers, partition=out.partition
            )
        return await self._producer.publish(out)

    async def _commit_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._commit()
                if self._deps.down_for(KAFKA) is not None and self.group_id is not None:
                    self._deps.recovered(KAFKA)
            except Exception as exc:  # a rebalance may revoke mid-commit: redelivery is safe
                self._deps.failed(KAFKA, f"commit failed: {exc!r}")
                self._dirty.set()  # try again: a finished record must not wait for another
                await asyncio.sleep(1.0)
            # Coalesce the commits of records finishing together: one OffsetCommit round trip
            # (and one __consumer_offsets append on the broker) per interval, not per record.
            await asyncio.sleep(self._commit_interval_s)

    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        """Commit what finished: of the assigned partitions, or of ``only`` (revoked ones)."""
        if self.group_id is None:  # nothing to commit: a finished record is all the progress
            for tracker in self._offsets.values():
                position = tracker.committable()
                if position is not None:
                    tracker.was_committed(position)
            return
        offsets = {}
        for tp, tracker in self._offsets.items():
            if (tp not in only) if only is not None else (tp not in self._assigned):
                continue
            position = tracker.committable()
            if position is not None and position != tracker.committed:
                offsets[tp] = position
        if offsets:
            await self._consumer.commit(offsets)
            for tp, position in offsets.items():
                if tp in self._offsets:
                    self._offsets[tp].was_committed(position)

    async def _drain(self, revoked: set[TopicPartition]) -> None:
        """Before losing partitions: finish their records (bounded), fence the rest, commit."""
        self._draining |= revoked
        try:
            busy = self._running(revoked)
            if busy:
                await asyncio.wait(busy, timeout=self._drain_timeout_s)
            # Fenced from here on: nothing they would still publish is theirs to publish.
            self._assigned -= revoked
            # Every record of theirs still running, not only those running on entry: one
            # started meanwhile must not finish unfenced, nor on after the partition is gone.
            await self._cancel_revoked(self._running(revoked))
            with contextlib.suppress(Exception):
                await self._commit(only=revoked)  # ``_assigned`` excludes them: fenced
            for tp in revoked:
                tracker = self._offsets.pop(tp, None)
                position = tracker.committable() if tracker is not None else None
                if tracker is not None and position is not None and position != tracker.committed:
                    self._unsettled[tp] = position  # the commit failed: kept for a reassignment
        finally:
            self._draining -= revoked

    def _running(self, partitions: set[TopicPartition]) -> list[asyncio.Task[None]]:
        """The record tasks of ``partitions`` still running."""
        return [t for t, tp in self._tasks.items() if tp in partitions and not t.done()]

    async def _cancel_revoked(self, pending: list[asyncio.Task[None]]) -> None:
        """Cancel the records of revoked partitions still running after the drain's bound."""
        if not pending:
            return
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=RECORDS_CANCEL_S)
        log.warning(
            "rebalance: cancelled %d records of revoked partitions still running after %.0f s; "
            "their new owner handles them",
            len(pending),
            self._drain_timeout_s,
        )

    async def _resume_unsettled(self, assigned: set[TopicPartition]) -> None:
        """Of the partitions just assigned, resume each whose last commit failed here after the
        records this consumer finished, by committing that position and seeking to it.

        Every record below the position produced its outputs (acknowledged), so skipping them
        loses nothing; redelivering them would only duplicate their outputs. librdkafka needs
        this after a broker outage longer than the session: it counts the partitions lost and
        joins again as a new member, and the old generation commits nothing more (the drain of
        a lost partition cannot). aiokafka keeps its member there and commits on. The group's
        own commit wins when it is at or past the position (another member went further
        meanwhile), and a position of a partition not given back is dropped: its next owner's
        commit rules.

        The rebalance waits for this (aiokafka sends no heartbeat meanwhile), so it has one
        deadline for all partitions, well inside the session; the partitions stay paused until
        it ends, so nothing below the position is fetched and handled meanwhile."""
        unsettled, self._unsettled = self._unsettled, {}
        wanted = {tp: unsettled[tp] for tp in sorted(assigned & unsettled.keys())}
        if not wanted:
            return
        self._resuming = set(wanted)
        self._consumer.pause(*wanted)
        committed: dict[TopicPartition, int | None] = {}
        resume: dict[TopicPartition, int] = {}
        try:
            async with asyncio.timeout(min(RESUME_TIMEOUT_S, self._session_s / 2)):
                # together (aiokafka's calls retry unbounded: the deadline bounds them)
                answers = await asyncio.gather(*(self._consumer.committed(tp) for tp in wanted))
                committed = dict(zip(wanted, answers, strict=True))
                resume = {
                    tp: at for tp, at in wanted.items() if (c := committed[tp]) is None or c < at
                }
                if resume:
                    await self._consumer.commit(resume)
            for tp, position in resume.items():
                self._consumer.seek(tp, position)
        except Exception as exc:  # at least once, as before: never skipped
            # "may": a commit the deadline cut short can still land (aiokafka shields it;
            # librdkafka's thread finishes it), and the partition then starts there.
            log.warning(
                "rebalance: %s not resumed after the records this consumer finished (%r); "
                "they may be delivered again",
                ", ".join(f"{tp.topic}-{tp.partition} at {at}" for tp, at in wanted.items()),
                exc,
            )
            return
        finally:
            self._resuming = set()
            if not self._holding:  # else the run loop resumes them once it has room
                self._consumer.resume(*wanted)
        for tp, position in resume.items():
            log.info(
                "rebalance: %s-%d given back after a failed commit: resumed at %d, after the "
                "records this consumer finished (the group's commit was %s)",
                tp.topic,
                tp.partition,
                position,
                committed[tp],
            )
