"""The fan-out reader: every gateway instance reads every result and token record.

A caller may wait on any instance, and the pipeline does not know which, so each instance reads
all partitions of ``genwire.results`` and ``genwire.tokens`` from the latest offset and completes
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
from genwire_gateway.waiters import WaiterRegistry

log = logging.getLogger(__name__)


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
