"""Results coming back to the callers waiting on this instance: the waiters and the fan-out reader.

Waiters: the callers of this gateway instance waiting for a request's result or tokens. A
request id may have several waiters (two callers repeating one idempotency key); each gets
every event.

The fan-out reader: every gateway instance reads every result and token record. A caller may
wait on any instance, and the pipeline does not know which, so each instance reads all
partitions of ``genwire.results`` and ``genwire.tokens`` from the latest offset and completes
its own waiters. It is a broadcast reader, not a worker: it consumes without a consumer group
(``group_id=None``: the same fan-out as a unique group per instance, without a group join on
start-up, rebalances, or groups left behind on the broker) and commits nothing. One reader per
process serves every request: nothing is created per request. Records of requests nobody here
waits for are dropped by key before parsing. A result that lands before its waiter registers is
found in Redis, which the waiting side checks after registering.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import ConsumerStoppedError
from aiokafka.structs import ConsumerRecord
from opentelemetry.trace import SpanKind, Tracer
from pydantic import ValidationError

from genwire.events import GenerationResult, TokenEvent
from genwire.request import ErrorCode
from genwire.telemetry import semconv as sc
from genwire.telemetry.propagation import extract
from genwire.topics import Topic

log = logging.getLogger(__name__)


class Failure:
    """Queued to a streaming waiter when its wait fails; the stream re-raises ``exc``."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


StreamItem = TokenEvent | GenerationResult | Failure
"""What a streaming waiter receives, in order: token chunks, then the result (or a Failure)."""


class Waiter:
    """One caller's interest in one request: its result, and its token chunks when streaming."""

    __slots__ = ("chunks", "request_id", "result")

    def __init__(self, request_id: str, *, stream: bool) -> None:
        self.request_id = request_id
        self.result: asyncio.Future[GenerationResult] = asyncio.get_running_loop().create_future()
        self.chunks: asyncio.Queue[StreamItem] | None = asyncio.Queue() if stream else None

    def fail(self, exc: BaseException) -> None:
        """End the wait with ``exc`` (a failed publish, the gateway stopping)."""
        if not self.result.done():
            self.result.set_exception(exc)
            # Nobody may await it (a stream reads chunks): don't log "never retrieved".
            self.result.exception()
        if self.chunks is not None:
            self.chunks.put_nowait(Failure(exc))


class WaiterRegistry:
    """Waiters by request id; resolved by the fan-out reader, removed by their callers."""

    def __init__(self) -> None:
        self._waiters: dict[str, list[Waiter]] = {}

    def __len__(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    def wants(self, request_id: str) -> bool:
        """Whether any local caller waits for ``request_id`` (checked before parsing a record)."""
        return request_id in self._waiters

    def register(self, request_id: str, *, stream: bool = False) -> Waiter:
        """Start waiting for ``request_id``; call ``unregister`` (or use ``waiting``) after."""
        waiter = Waiter(request_id, stream=stream)
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
    def waiting(self, request_id: str, *, stream: bool = False) -> Iterator[Waiter]:
        """Register for the duration of a ``with`` block."""
        waiter = self.register(request_id, stream=stream)
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

    def fail_all(self, exc: BaseException) -> None:
        """End every wait with ``exc`` (the gateway is stopping)."""
        for waiters in list(self._waiters.values()):
            for waiter in waiters:
                waiter.fail(exc)


class FanoutReader:
    """Reads results and tokens, and hands each to the local waiters of its request."""

    def __init__(
        self,
        bootstrap_servers: str,
        registry: WaiterRegistry,
        tracer: Tracer,
        *,
        client_id: str = "genwire-gateway-fanout",
    ) -> None:
        self._registry = registry
        self._tracer = tracer
        self._stopping = False
        self._consumer = AIOKafkaConsumer(
            Topic.RESULTS.value,
            Topic.TOKENS.value,
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            # Records are small and latency is what matters: answer a fetch at the first byte.
            fetch_max_wait_ms=100,
            fetch_min_bytes=1,
        )

    async def start(self, timeout_s: float = 30.0) -> None:
        """Connect, take every partition and pin each position at the current end.

        Pinning matters: with ``latest`` the position is otherwise looked up lazily, and a
        result produced before that lookup would be skipped.
        """
        await self._consumer.start()
        deadline = time.monotonic() + timeout_s
        wanted = {Topic.RESULTS.value, Topic.TOKENS.value}
        while True:
            assigned = self._consumer.assignment()
            if {tp.topic for tp in assigned} >= wanted:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no partitions of {sorted(wanted)} after {timeout_s:.0f} s: do the topics "
                    "exist (genwire up creates them)?"
                )
            await asyncio.sleep(0.05)
        for tp in assigned:
            await self._consumer.position(tp)

    async def run(self) -> None:
        """Fetch and dispatch until ``stop``."""
        while not self._stopping:
            try:
                batches = await self._consumer.getmany(timeout_ms=500, max_records=1000)
            except ConsumerStoppedError:
                if self._stopping:
                    return
                raise
            for records in batches.values():
                for record in records:
                    self._dispatch(record)

    def _dispatch(self, record: ConsumerRecord[bytes, bytes]) -> None:
        if not record.key:
            return
        request_id = record.key.decode("utf-8", "replace")
        if not self._registry.wants(request_id):
            return
        try:
            if record.topic == Topic.TOKENS:
                self._registry.push(TokenEvent.model_validate_json(record.value or b""))
            else:
                self._resolve(record, request_id)
        except ValidationError as exc:
            # Not ours to dead-letter (the producer's stage owns that): the waiter's Redis
            # check or its deadline ends the wait.
            log.warning("unreadable %s record for %s: %s", record.topic, request_id, exc)

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
        """Stop fetching and disconnect."""
        self._stopping = True
        with contextlib.suppress(Exception):
            await self._consumer.stop()
