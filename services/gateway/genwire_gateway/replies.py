"""Replies coming back to the callers waiting on this instance: the waiters and the reply reader.

Waiters: the callers of this gateway instance waiting for a request's result or tokens. A
request id may have several waiters (two callers repeating one idempotency key); each gets
every event.

Direct replies (docs/architecture.md, *Direct replies*): the instance's reply reader is a
member of one consumer group (``genwire-gateway-replies``) on ``genwire.replies``, so Kafka
gives each live instance its own partitions of it. A request this instance publishes names
one of them in ``genwire_reply_to``; postprocess publishes the request's chunks and result
there (besides ``genwire.tokens``/``genwire.results``), so an instance reads only its own
replies: its cost per request does not grow with the number of gateways.

An instance names (and reads) only ``read_partitions`` of the partitions it owns (one by
default), the same ones from one rebalance to the next where it can; the others stay assigned
to it, paused: nobody names them, and a fetch costs its client per partition it asks for (the
fetch response's entries are parsed in Python), so an instance's cost per reply does not
depend on how many partitions it happens to own (24 alone, 8 with three instances).

A rebalance (an instance starting or stopping) can move a partition away while replies for
its waiters are still to come: those waiters are *moved*: they check Redis at once, then now
and then until their result is there (the new owner drops the replies, it waits for none of
them). A partition that comes back to this instance after a rebalance is read on from where
this instance stopped, and a new one from its end as of the assignment, pinned before any
request names it: no reply is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import Iterator, Set
from contextlib import contextmanager

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from aiokafka.errors import ConsumerStoppedError
from aiokafka.structs import ConsumerRecord
from opentelemetry.trace import SpanKind, Tracer
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import ValidationError

from genwire.events import GenerationResult, TokenEvent
from genwire.kafka.consumer import fetch_wait_options
from genwire.kafka.security import client_options
from genwire.request import ErrorCode
from genwire.telemetry import semconv as sc
from genwire.telemetry.propagation import extract
from genwire.topics import ReplyTo, Topic

log = logging.getLogger(__name__)


class Failure:
    """Queued to a streaming waiter when its wait fails; the stream re-raises ``exc``."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Moved:
    """Queued to a streaming waiter whose reply partition moved: look in Redis from now on."""

    __slots__ = ()


MOVED = Moved()

StreamItem = TokenEvent | GenerationResult | Failure | Moved
"""What a streaming waiter receives, in order: token chunks, then the result (or a Failure);
``MOVED`` whenever its replies stop coming to this instance."""


class Waiter:
    """One caller's interest in one request: its result, and its token chunks when streaming.

    ``reply_partition``: the partition of the reply topic the request names, while its
    replies come to this instance; None: they do not (a request another call published, a
    partition that moved): the wait looks in Redis.
    """

    __slots__ = ("chunks", "moved", "reply_partition", "request_id", "result")

    def __init__(
        self, request_id: str, *, stream: bool, reply_partition: int | None = None
    ) -> None:
        loop = asyncio.get_running_loop()
        self.request_id = request_id
        self.reply_partition = reply_partition
        self.result: asyncio.Future[GenerationResult] = loop.create_future()
        self.moved: asyncio.Future[None] = loop.create_future()
        """Done when the reply partition moved to another instance (a rebalance)."""
        self.chunks: asyncio.Queue[StreamItem] | None = asyncio.Queue() if stream else None

    @property
    def direct(self) -> bool:
        """Whether its replies come to this instance's reply reader."""
        return self.reply_partition is not None

    def move(self) -> None:
        """Its replies will not come here any more: wake it to look in Redis."""
        self.reply_partition = None
        if not self.moved.done():
            self.moved.set_result(None)
        if self.chunks is not None:
            self.chunks.put_nowait(MOVED)

    def fail(self, exc: BaseException) -> None:
        """End the wait with ``exc`` (a failed publish, the gateway stopping)."""
        if not self.result.done():
            self.result.set_exception(exc)
            # Nobody may await it (a stream reads chunks): don't log "never retrieved".
            self.result.exception()
        if self.chunks is not None:
            self.chunks.put_nowait(Failure(exc))


class WaiterRegistry:
    """Waiters by request id; resolved by the reply reader, removed by their callers."""

    def __init__(self) -> None:
        self._waiters: dict[str, list[Waiter]] = {}

    def __len__(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    def wants(self, request_id: str) -> bool:
        """Whether any local caller waits for ``request_id`` (checked before parsing a record)."""
        return request_id in self._waiters

    def register(
        self, request_id: str, *, stream: bool = False, reply_partition: int | None = None
    ) -> Waiter:
        """Start waiting for ``request_id``; call ``unregister`` (or use ``waiting``) after."""
        waiter = Waiter(request_id, stream=stream, reply_partition=reply_partition)
        self._waiters.setdefault(request_id, []).append(waiter)
        return waiter

    def unregister(self, waiter: Waiter) -> None:
        """Stop waiting (idempotent)."""
        waiters = self._waiters.get(waiter.request_id)
        if not waiters:
            return
        if waiter in waiters:
            waiters.remove(waiter)
        if not waiters:
            del self._waiters[waiter.request_id]

    @contextmanager
    def waiting(
        self, request_id: str, *, stream: bool = False, reply_partition: int | None = None
    ) -> Iterator[Waiter]:
        """Register for the duration of a ``with`` block."""
        waiter = self.register(request_id, stream=stream, reply_partition=reply_partition)
        try:
            yield waiter
        finally:
            self.unregister(waiter)

    def resolve(self, result: GenerationResult) -> int:
        """Hand ``result`` to every waiter of its request; returns how many there were."""
        waiters = self._waiters.get(result.request_id, ())
        for waiter in waiters:
            if not waiter.result.done():
                waiter.result.set_result(result)
            if waiter.chunks is not None:
                waiter.chunks.put_nowait(result)
        return len(waiters)

    def push(self, token: TokenEvent) -> int:
        """Queue ``token`` to every streaming waiter of its request; returns how many."""
        count = 0
        for waiter in self._waiters.get(token.request_id, ()):
            if waiter.chunks is not None:
                waiter.chunks.put_nowait(token)
                count += 1
        return count

    def partitions(self) -> set[int]:
        """The reply partitions the direct waiters' replies come on."""
        return {
            w.reply_partition
            for waiters in self._waiters.values()
            for w in waiters
            if w.reply_partition is not None
        }

    def move(self, partitions: Set[int]) -> int:
        """Move the waiters whose replies come on ``partitions`` (gone to another instance);
        returns how many."""
        moved = 0
        for waiters in list(self._waiters.values()):
            for waiter in waiters:
                if waiter.reply_partition is not None and waiter.reply_partition in partitions:
                    waiter.move()
                    moved += 1
        return moved

    def fail_all(self, exc: BaseException) -> None:
        """End every wait with ``exc`` (the gateway is stopping)."""
        for waiters in list(self._waiters.values()):
            for waiter in waiters:
                waiter.fail(exc)


class ReplyMetrics:
    """Reply records read, by outcome; reply partitions owned; waiters moved."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.records = Counter(
            sc.METRIC_REPLIES,
            "Records read from this instance's reply partitions, by outcome: delivered to a "
            "waiter, unclaimed (nobody waits: a caller gone, a previous owner's reply), "
            "unreadable.",
            ["outcome"],
            registry=registry,
        )
        for outcome in (DELIVERED, UNCLAIMED, UNREADABLE):
            self.records.labels(outcome)
        self.partitions = Gauge(
            sc.METRIC_REPLY_PARTITIONS,
            "Partitions of the reply topic this instance owns (0: it gets no direct replies).",
            registry=registry,
        )
        self.moved = Counter(
            sc.METRIC_WAITERS_MOVED,
            "Waiters whose reply partition went to another instance (a rebalance): they "
            "looked in Redis instead.",
            registry=registry,
        )


DELIVERED = "delivered"
UNCLAIMED = "unclaimed"
UNREADABLE = "unreadable"


def _sticky_assignor() -> type[StickyPartitionAssignor]:
    """The sticky assignor (partitions stay where they are across rebalances), one class per
    reader: aiokafka keeps its last assignment in class attributes."""
    return type("GatewayStickyAssignor", (StickyPartitionAssignor,), {})


class ReplyReader(ConsumerRebalanceListener):  # type: ignore[misc]
    """Reads this instance's partitions of the reply topic and hands each record to the local
    waiters of its request; tells which partition a request should name."""

    def __init__(
        self,
        bootstrap_servers: str,
        registry: WaiterRegistry,
        tracer: Tracer,
        *,
        topic: str = Topic.REPLIES.value,
        group_id: str = "genwire-gateway-replies",
        client_id: str = "genwire-gateway-replies",
        metrics: ReplyMetrics | None = None,
        session_timeout_ms: int = 10_000,
        read_partitions: int = 1,
    ) -> None:
        self.topic = topic
        self.read_partitions = max(1, read_partitions)
        self.group_id = group_id
        self._registry = registry
        self._tracer = tracer
        self.metrics = metrics or ReplyMetrics(None)
        self._stopping = False
        self._joined = asyncio.Event()
        self._owned: tuple[int, ...] = ()
        """Partitions owned and positioned (read when fetched)."""
        self._reading: tuple[int, ...] = ()
        """The owned partitions requests name and the consumer fetches (the rest are paused)."""
        self._named: tuple[int, ...] = ()
        """What requests name during a rebalance: the last partitions read."""
        self._next: dict[int, int] = {}
        """Next offset to read of each partition owned (read on from there if it comes back)."""
        self._kept: dict[int, int] = {}
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            **client_options(),
            client_id=client_id,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            partition_assignment_strategy=(_sticky_assignor(),),
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=max(100, session_timeout_ms // 3),
            # Records are small and latency is what matters: the broker answers a fetch at the
            # first byte, so the wait bounds only fetches that find nothing (an idle instance
            # fetches twice a second, not ten times).
            **fetch_wait_options(),
            fetch_min_bytes=1,
        )

    # -- which partition a request names ------------------------------------------------------

    @property
    def partitions(self) -> tuple[int, ...]:
        """The reply partitions this instance owns now."""
        return self._owned

    def reply_to(self, request_id: str) -> ReplyTo | None:
        """Where the replies of ``request_id`` should go; None: no partition (more gateway
        instances than partitions): the request's waiter looks in Redis."""
        named = self._reading or self._named
        if not named:
            return None
        return ReplyTo(self.topic, named[zlib.crc32(request_id.encode()) % len(named)])

    def reasons(self) -> list[str]:
        """Readiness: why this instance gets no direct replies (empty: it does)."""
        if self._stopping or not self._joined.is_set() or self._owned or self._named:
            return []
        return [
            f"no partition of {self.topic} assigned: more gateway instances than its "
            "partitions? (callers still get results, from Redis)"
        ]

    # -- the group ----------------------------------------------------------------------------

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Eager rebalancing: everything is revoked, then (mostly) given back. Until the new
        # assignment, requests go on naming the partitions owned so far.
        mine = sorted(tp.partition for tp in revoked if tp.topic == self.topic)
        self._named = tuple(p for p in self._reading if p in mine) or self._named
        self._owned = ()
        self._reading = ()
        self._kept = {p: self._next[p] for p in mine if p in self._next}

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        mine = {tp.partition for tp in assigned if tp.topic == self.topic}
        # The consumer fetches while this runs: partitions we keep are read again from where we
        # were, and owned, before the first await, or the replies that arrived during the
        # rebalance would be fetched and skipped for good.
        kept = sorted(p for p in mine if p in self._kept)
        for p in kept:
            self._consumer.seek(TopicPartition(self.topic, p), self._kept[p])
        self._owned = tuple(kept)
        ready = set(kept)
        for p in sorted(mine - ready):  # new to us: from its end, pinned before it is named
            try:
                self._next[p] = await self._consumer.position(TopicPartition(self.topic, p))
            except Exception as exc:  # stopping, or Kafka: leave it unnamed (never a hang)
                log.warning("reply partition %s-%s not positioned: %r", self.topic, p, exc)
                continue
            ready.add(p)
        mine = ready
        lost = (set(self._named) | set(self._kept)) - mine
        for p in set(self._next) - mine:
            del self._next[p]
        self._kept = {}
        self._owned = tuple(sorted(mine))
        self._reading = self._choose(mine, lost, assigned)
        self._named = self._reading
        self.metrics.partitions.set(len(mine))
        moved = self._registry.move(lost) if lost else 0
        if moved:
            self.metrics.moved.inc(moved)
        log.info(
            "reply partitions of %s now %s, named and read %s%s",
            self.topic,
            list(self._owned),
            list(self._reading),
            f"; {moved} waiters of partitions {sorted(lost)} look in Redis" if moved else "",
        )
        self._joined.set()

    def _choose(
        self, mine: set[int], lost: set[int], assigned: list[TopicPartition]
    ) -> tuple[int, ...]:
        """The partitions to name and read: the ones read before that are still ours (their
        waiters' replies come there), then others up to ``read_partitions``; pause the rest
        of ``assigned`` (one that could not be positioned too). A partition some waiter names
        is never paused."""
        chosen = self._registry.partitions() & mine
        for p in [*(p for p in self._named if p not in lost), *sorted(mine)]:
            if len(chosen) >= self.read_partitions:
                break
            if p in mine:
                chosen.add(p)
        paused = [tp for tp in assigned if tp.topic == self.topic and tp.partition not in chosen]
        reading = [TopicPartition(self.topic, p) for p in sorted(chosen)]
        try:
            if reading:
                self._consumer.resume(*reading)
            if paused:
                self._consumer.pause(*paused)
        except Exception as exc:  # stopping: nothing is fetched any more anyway
            log.warning("reply partitions of %s not paused: %r", self.topic, exc)
        return tuple(sorted(chosen))

    async def start(self, timeout_s: float = 30.0) -> None:
        """Join the group and wait for the first assignment (maybe none: more instances than
        partitions; readiness says so)."""
        self._consumer.subscribe([self.topic], listener=self)
        await self._consumer.start()
        try:
            async with asyncio.timeout(timeout_s):
                # Without a fetch the consumer does not join: run the loop meanwhile.
                while not self._joined.is_set():
                    await self._fetch_once(timeout_ms=100)
        except TimeoutError:
            raise TimeoutError(
                f"no assignment on {self.topic} (group {self.group_id}) after {timeout_s:.0f} s: "
                "does the topic exist (genwire up creates it)?"
            ) from None

    async def run(self) -> None:
        """Fetch and dispatch until ``stop``."""
        while not self._stopping:
            try:
                await self._fetch_once(timeout_ms=500)
            except ConsumerStoppedError:
                if self._stopping:
                    return
                self._orphan_waiters()
                raise
            except BaseException:
                self._orphan_waiters()
                raise

    def _orphan_waiters(self) -> None:
        """The reader is dying: nothing reads this instance's partitions any more, so every
        waiter looks in Redis instead of waiting for its deadline."""
        everything = set(self._owned) | set(self._named)
        moved = self._registry.move(everything) if everything else 0
        if moved:
            self.metrics.moved.inc(moved)

    async def _fetch_once(self, timeout_ms: int) -> None:
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=1000)
        for tp, records in batches.items():
            if tp.partition not in self._owned:
                continue  # revoked meanwhile: read again from ``_kept`` if it comes back
            for record in records:
                self._next[tp.partition] = record.offset + 1
                self._dispatch(record)

    def _dispatch(self, record: ConsumerRecord[bytes, bytes]) -> None:
        request_id = record.key.decode("utf-8", "replace") if record.key else ""
        if not self._registry.wants(request_id):
            self.metrics.records.labels(UNCLAIMED).inc()
            return
        kind = None
        for key, value in record.headers or ():
            if key == sc.HEADER_EVENT_TYPE:
                kind = value
        try:
            if kind == b"TokenEvent":
                self._registry.push(TokenEvent.model_validate_json(record.value or b""))
            elif kind == b"GenerationResult":
                self._resolve(record, request_id)
            else:
                raise ValueError(f"{sc.HEADER_EVENT_TYPE} {kind!r} is not a reply")
        except (ValidationError, ValueError) as exc:
            # Not ours to dead-letter (postprocess owns that): the waiter's deadline, and its
            # last look in Redis then, end the wait.
            self.metrics.records.labels(UNREADABLE).inc()
            log.warning(
                "unreadable reply %s-%s@%s: %s", record.topic, record.partition, record.offset, exc
            )
            return
        self.metrics.records.labels(DELIVERED).inc()

    def _resolve(self, record: ConsumerRecord[bytes, bytes], request_id: str) -> None:
        """Resolve waiters inside a ``process`` span: the trace shows the result coming back."""
        with self._tracer.start_as_current_span(
            sc.process_span_name(record.topic),
            context=extract(record.headers),
            kind=SpanKind.CONSUMER,
            attributes={
                sc.MESSAGING_SYSTEM: "kafka",
                sc.MESSAGING_DESTINATION: record.topic,
                sc.MESSAGING_OPERATION_TYPE: "process",
                sc.MESSAGING_OPERATION_NAME: "process",
                sc.MESSAGING_PARTITION: str(record.partition),
                sc.MESSAGING_OFFSET: record.offset,
                sc.MESSAGING_MESSAGE_KEY: request_id,
                sc.MESSAGING_BODY_SIZE: len(record.value or b""),
                sc.MESSAGING_CONSUMER_GROUP: self.group_id,
                sc.STAGE: sc.STAGE_GATEWAY,
                sc.WAIT_MS: max(0.0, time.time() * 1000 - record.timestamp),
            },
        ):
            result = GenerationResult.model_validate_json(record.value or b"")
            if result.error is not None and result.error.code == ErrorCode.IDEMPOTENCY_CONFLICT:
                # The answer to someone else's duplicate (a Kafka client reusing the id): this
                # gateway refuses conflicts before publishing, so it is never a waiter's here.
                return
            self._registry.resolve(result)

    async def stop(self) -> None:
        """Stop fetching and leave the group (its partitions go to the other instances)."""
        self._stopping = True
        with contextlib.suppress(Exception):
            await self._consumer.stop()
