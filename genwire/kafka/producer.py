"""EventProducer: publishes events (or raw bytes) with a PRODUCER span and trace headers.

It recovers from the idempotent producer's fatal states by itself. After a long broker outage
aiokafka's producer can fail every batch with ``OutOfOrderSequenceNumber`` until the process
restarts (aio-libs/aiokafka#1017): its sequence numbers no longer match the broker's. The
Java client bumps the epoch; librdkafka asks for a new producer. Here a fatal error (or a
sender task that died) replaces the client with a new one — a new producer id, fresh sequence
numbers — and the caller's retry publishes again on it. What was in flight on the old client
fails, so the consumer reprocesses those records (at-least-once); nothing is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar, Token

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    IllegalStateError,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    RecordTooLargeError,
)
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Tracer

from genwire.errors import GenwireError, PermanentError, RetryableError
from genwire.events import Event, dump
from genwire.kafka_security import client_kind, client_options
from genwire.settings import KafkaClient
from genwire.telemetry import semconv as sc
from genwire.telemetry.propagation import KafkaHeaders, inject
from genwire.topics import MAX_RECORD_BYTES

log = logging.getLogger(__name__)

FATAL_PRODUCER_ERRORS: tuple[type[BaseException], ...] = (
    OutOfOrderSequenceNumber,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    ProducerFenced,
    ProducerClosed,
    IllegalStateError,
)
"""Errors after which this client never publishes again: replace it."""

RESET_RETRY_S = 1.0
"""After a replacement of the client failed (the broker down), how long the next ones fail at
once instead of trying again."""

MAX_REQUEST_SIZE = MAX_RECORD_BYTES
"""The largest produce request (and so record): what the topics allow (long prompts)."""

KAFKA = "kafka"
"""The dependency name of the broker in readiness reasons, logs and metrics."""

FORWARDED_HEADERS = frozenset(
    {sc.HEADER_ORIGIN, sc.HEADER_KEEP, sc.HEADER_REPLY_TO, sc.HEADER_PRINCIPAL}
)
"""Headers that follow a request from hop to hop, like ``traceparent``: set on a consumed
record, they are added to every record published while handling it."""
_forwarded: ContextVar[tuple[tuple[str, bytes], ...]] = ContextVar("genwire_forwarded", default=())


def forward_headers(
    headers: Iterable[tuple[str, bytes]] | None,
) -> Token[tuple[tuple[str, bytes], ...]]:
    """Make the forwarded headers of a consumed record apply to what this task publishes."""
    return _forwarded.set(tuple((k, v) for k, v in headers or () if k in FORWARDED_HEADERS))


def forwarded(name: str) -> bytes | None:
    """The value of forwarded header ``name`` on the record this task handles (None: absent)."""
    found = None
    for key, value in _forwarded.get():
        if key == name:
            found = value
    return found


def publish_error(exc: BaseException) -> GenwireError:
    """What a failed publish means for the record: retry it later, or never."""
    if isinstance(exc, MessageSizeTooLargeError | RecordTooLargeError):
        return PermanentError(f"an output is too large for Kafka: {exc}", code="internal")
    return RetryableError(f"kafka: {type(exc).__name__}: {exc}", dependency=KAFKA)


def new_client(
    bootstrap_servers: str,
    client_id: str,
    *,
    linger_ms: int = 0,
    request_timeout_ms: int = 30_000,
    kind: KafkaClient | None = None,
) -> AIOKafkaProducer:
    """The client an ``EventProducer`` publishes with: idempotent, ``acks=all``, on ``kind``
    (``aiokafka`` or ``librdkafka``; default :func:`client_kind`). The floor benchmark measures
    it bare, without the wrapper."""
    if (kind or client_kind()) == "librdkafka":
        from genwire.kafka.rdkafka import RdProducer  # confluent-kafka only when chosen

        return RdProducer(  # type: ignore[return-value]  # AIOKafkaProducer's face
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            linger_ms=linger_ms,
            max_request_size=MAX_REQUEST_SIZE,
            request_timeout_ms=request_timeout_ms,
        )
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        **client_options(),
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        # No linger: each hop of a request pays it (measured on this broker: 1 ms of linger
        # took a hop from 2.0 to 3.3 ms p50, docs/benchmarks.md). Under load records still
        # batch, because aiokafka drains a partition only while no request to its broker
        # is in flight.
        linger_ms=linger_ms,
        max_request_size=MAX_REQUEST_SIZE,
        # One produce request's timeout. An idempotent producer keeps retrying a batch whose
        # leader is known (it never expires it), so callers bound their wait for the
        # acknowledgement themselves (``ack_timeout_s``).
        request_timeout_ms=request_timeout_ms,
    )


def _seen(fut: asyncio.Future[object]) -> None:
    """Mark a send's outcome as retrieved, as the watch did for the client's future when the
    caller held that one: a caller that never looks (a heartbeat) logs nothing at collection."""
    if not fut.cancelled():
        fut.exception()


class EventProducer:
    """A thin, traced wrapper over one idempotent ``AIOKafkaProducer``, replaced when fatal."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        client_id: str = "genwire",
        tracer: Tracer | None = None,
        linger_ms: int = 0,
        request_timeout_ms: int = 30_000,
        on_reset: Callable[[], None] | None = None,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._client_id = client_id
        self._linger_ms = linger_ms
        self._request_timeout_ms = request_timeout_ms
        self._on_reset = on_reset
        self._producer = self._new_client()
        self._generation = 0
        self._started = False
        self._reset_lock = asyncio.Lock()
        self._reset_failed: tuple[int, float, BaseException] | None = None  # generation, when
        self._retired: set[asyncio.Task[None]] = set()
        # Records handed to the client and not yet acknowledged or failed, with when: in
        # insertion order, so the first is the oldest (``unacknowledged_s``).
        self._pending: dict[asyncio.Future[object], float] = {}
        self._now: Callable[[], float] = time.monotonic  # its clock (tests move it)
        self._tracer = tracer or trace.get_tracer("genwire.kafka")

    def _new_client(self) -> AIOKafkaProducer:
        return new_client(
            self._bootstrap,
            self._client_id,
            linger_ms=self._linger_ms,
            request_timeout_ms=self._request_timeout_ms,
        )

    @property
    def ack_timeout_s(self) -> float:
        """How long a caller waits for a record's acknowledgement before counting a failure."""
        return self._request_timeout_ms / 1000.0

    @property
    def resets(self) -> int:
        """How many times the client was replaced after a fatal error."""
        return self._generation

    async def start(self) -> None:
        """Connect to the broker."""
        await self._producer.start()
        self._started = True

    async def stop(self) -> None:
        """Flush what is pending and disconnect."""
        self._started = False
        await self._producer.stop()
        for task in list(self._retired):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _unusable(self) -> str | None:
        """Why the client can never publish again; None: it can."""
        if not isinstance(self._producer, AIOKafkaProducer):  # librdkafka's: RdProducer.failure
            failure: str | None = getattr(self._producer, "failure", None)
            return failure
        sender = getattr(self._producer, "_sender", None)
        task = getattr(sender, "sender_task", None)
        return "its sender task stopped" if task is not None and task.done() else None

    async def reset(self, generation: int | None = None, reason: object = "") -> None:
        """Replace the client (once per failed generation, however many callers saw it fail).

        A replacement that failed (the broker still down) is not tried again for
        ``RESET_RETRY_S``: the senders queued behind it fail at once, rather than each waiting
        for a start of its own."""
        async with self._reset_lock:
            if generation is not None and generation != self._generation:
                return  # someone already replaced the client that failed
            failed = self._reset_failed
            if failed is not None and failed[0] == self._generation:
                ago = self._now() - failed[1]
                if ago < RESET_RETRY_S:
                    raise KafkaConnectionError(
                        f"replacing the producer failed {ago:.1f} s ago: {failed[2]}"
                    )
            log.warning("kafka producer %s is unusable (%s): replacing it", self._client_id, reason)
            fresh = self._new_client()
            try:
                await fresh.start()  # raises while the broker is down: the caller retries later
            except BaseException as exc:
                self._reset_failed = (self._generation, self._now(), exc)
                with contextlib.suppress(Exception):
                    await fresh.stop()  # never leak a half-started client
                raise
            old, self._producer = self._producer, fresh
            self._generation += 1
            # The old client's records are its callers' to retry; whether they ever settle
            # depends on how it died (a hung broker can leave them waiting after the retirement
            # gave up), so the new client starts with nothing counted as waiting.
            self._pending = {}
            task = asyncio.create_task(self._retire(old))
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)
        if self._on_reset is not None:
            self._on_reset()

    @staticmethod
    async def _retire(old: AIOKafkaProducer) -> None:
        # Its pending batches fail (their records are retried by their consumers); bounded,
        # because a dead sender can leave stop() waiting on nothing.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10.0):
                await old.stop()

    def unacknowledged_s(self) -> float:
        """How long the oldest record still waiting for the broker's answer has waited (0:
        none waits). A client that accepts records and delivers none (a broker that hangs, a
        client that lost its brokers, Kafka down) shows here before anything fails, if ever:
        aiokafka's idempotent producer never expires a record while it knows the partition's
        leader, and librdkafka's fails it after ``message.timeout.ms`` (300 s)."""
        for since in self._pending.values():
            return self._now() - since
        return 0.0

    def _watch(self, fut: asyncio.Future[object], generation: int) -> asyncio.Future[object]:
        """Follow the client's future ``fut`` until the client settles it, and hand the caller
        a future of its own with the same outcome. A caller that stops waiting (a cancelled
        call) cancels only its own: the record is still queued in the client and may still be
        delivered, so it still counts as waiting, and a fatal error it meets is still seen."""
        if generation == self._generation:  # else the client that took it was replaced since
            self._pending[fut] = self._now()
        mine: asyncio.Future[object] = fut.get_loop().create_future()
        mine.add_done_callback(_seen)  # a caller may never look (heartbeats)

        def done(f: asyncio.Future[object]) -> None:
            self._pending.pop(f, None)
            if f.cancelled():
                mine.cancel()  # no-op when the caller cancelled first
                return
            exc = f.exception()
            if not mine.done():
                if exc is None:
                    mine.set_result(f.result())
                else:
                    mine.set_exception(exc)
            if isinstance(exc, FATAL_PRODUCER_ERRORS):
                task = asyncio.ensure_future(self._reset_quietly(generation, exc))
                self._retired.add(task)
                task.add_done_callback(self._retired.discard)

        fut.add_done_callback(done)
        return mine

    async def _reset_quietly(self, generation: int, reason: object) -> None:
        try:
            await self.reset(generation, reason)
        except Exception as exc:  # the broker is still down: the next send tries again
            log.debug("replacing the producer failed: %s", exc)

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        traced: bool = True,
        partition: int | None = None,
    ) -> asyncio.Future[object]:
        """Queue one record inside a ``<topic> publish`` span; await the result to confirm it.

        ``traced=False``: no span and no trace headers (heartbeats: no trace is about them).
        ``partition``: this partition (it must exist: see ``partitions``), not the key's.
        Raises (or the future fails with) ``KafkaError``; see ``publish_error``.
        """
        if self._started and (why := self._unusable()) is not None:
            await self.reset(self._generation, why)
        if not traced:
            return await self._send(topic, value, key, list(headers), partition)
        with self._tracer.start_as_current_span(
            sc.publish_span_name(topic),
            kind=SpanKind.PRODUCER,
            attributes={
                sc.MESSAGING_SYSTEM: "kafka",
                sc.MESSAGING_DESTINATION: topic,
                sc.MESSAGING_OPERATION_TYPE: "send",
                sc.MESSAGING_OPERATION_NAME: "publish",
                sc.MESSAGING_BODY_SIZE: len(value),
                **({sc.MESSAGING_MESSAGE_KEY: key.decode("utf-8", "replace")} if key else {}),
                **({sc.MESSAGING_PARTITION: str(partition)} if partition is not None else {}),
            },
        ):
            record_headers: KafkaHeaders = list(headers)
            present = {k for k, _ in record_headers}
            record_headers += [(k, v) for k, v in _forwarded.get() if k not in present]
            inject(record_headers)
            return await self._send(topic, value, key, record_headers, partition)

    async def _send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: KafkaHeaders,
        partition: int | None = None,
    ) -> asyncio.Future[object]:
        generation = self._generation
        try:
            fut: asyncio.Future[object] = await self._producer.send(
                topic, value, key=key, headers=headers, partition=partition
            )
        except FATAL_PRODUCER_ERRORS as exc:
            await self._reset_quietly(generation, exc)
            raise
        return self._watch(fut, generation)

    def partitions(self, topic: str) -> frozenset[int] | None:
        """The partitions of ``topic`` in the client's metadata (None: not known yet)."""
        known = self._producer.client.cluster.partitions_for_topic(topic)
        return frozenset(known) if known is not None else None

    async def refresh_partitions(self, topic: str, timeout_s: float = 5.0) -> frozenset[int]:
        """Ask the broker for ``topic``'s partitions (empty when it has none or does not answer
        within ``timeout_s``: the caller decides what a missing topic means)."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._producer.client.force_metadata_update()
                return frozenset(await self._producer.partitions_for(topic))
        except (TimeoutError, KafkaError) as exc:
            log.debug("no partitions of %s: %r", topic, exc)
            return frozenset()

    async def publish(self, event: Event, *, traced: bool = True) -> asyncio.Future[object]:
        """Queue ``event`` to its topic, keyed by request id."""
        return await self.send(
            event.TOPIC,
            dump(event),
            key=event.key(),
            headers=[(sc.HEADER_EVENT_TYPE, type(event).__name__.encode())],
            traced=traced,
        )

    async def publish_and_wait(self, event: Event) -> None:
        """Publish and wait until the broker has acknowledged the record."""
        await (await self.publish(event))


__all__ = [
    "FATAL_PRODUCER_ERRORS",
    "FORWARDED_HEADERS",
    "KAFKA",
    "EventProducer",
    "KafkaError",
    "forward_headers",
    "forwarded",
    "publish_error",
]
