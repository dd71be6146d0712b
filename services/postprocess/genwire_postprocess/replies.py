"""Direct replies: a request's token chunks and result, also sent to the partition of
``genwire.replies`` that its gateway instance named in ``genwire_reply_to``.

``genwire.results`` and ``genwire.tokens`` still carry everything (Kafka-native clients read
them); the copy on the reply partition is what the waiting gateway reads, so a gateway reads
only its own replies. A reply address that is malformed, names another topic than the reply
topic (a header never chooses where results are written), or a partition the topic does not
have, is counted and logged, and the request's results go to ``genwire.results`` as always:
the caller's gateway finds them in Redis.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter

from genwire.events import Event, GenerationResult, TokenEvent, dump
from genwire.kafka import EventProducer
from genwire.kafka.failures import Output, RawRecord
from genwire.kafka.producer import forwarded
from genwire.telemetry import semconv as sc
from genwire.topics import ReplyTo

log = logging.getLogger(__name__)

ROUTED = "routed"
MALFORMED = "malformed"
FOREIGN = "foreign_topic"
UNKNOWN_PARTITION = "unknown_partition"
OUTCOMES = (ROUTED, MALFORMED, FOREIGN, UNKNOWN_PARTITION)

REPLY_EVENTS = (TokenEvent, GenerationResult)
"""What a gateway waits for; nothing else goes to a reply partition."""


class ReplyRouter:
    """Adds the reply copies of a request's outputs, from the address its record carries."""

    def __init__(
        self,
        producer: EventProducer,
        topic: str,
        registry: CollectorRegistry | None = None,
        *,
        refresh_interval_s: float = 10.0,
        log_interval_s: float = 10.0,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.refresh_interval_s = refresh_interval_s
        self.log_interval_s = log_interval_s
        self.counts = Counter(
            sc.METRIC_REPLY_ROUTES,
            "Reply addresses (genwire_reply_to) of generation chunks, by outcome: routed, or "
            "why the reply was not sent (the results still go to genwire.results).",
            ["outcome"],
            registry=registry,
        )
        for outcome in OUTCOMES:
            self.counts.labels(outcome)
        self._refreshed = -float("inf")
        self._refreshing: asyncio.Future[frozenset[int]] | None = None
        self._logged: dict[str, float] = {}
        self._soon: asyncio.Task[None] | None = None

    async def warm(self) -> None:
        """Load the reply topic's partitions (at start): the failure path cannot wait for
        them, and a fresh process's first reply may well be a failure's."""
        await self._refresh()

    async def with_replies(self, outputs: Sequence[Event]) -> list[Output]:
        """``outputs`` plus their reply copies, for the record this task handles."""
        raw = forwarded(sc.HEADER_REPLY_TO)
        if raw is None or not any(isinstance(o, REPLY_EVENTS) for o in outputs):
            return list(outputs)
        address = self._address(raw)
        if address is not None and not self._exists(address):
            await self._refresh()  # a partition added since, or metadata not loaded yet
            if not self._exists(address):
                self._skip(UNKNOWN_PARTITION, raw, "the topic has no such partition")
                return list(outputs)
        return self._copies(outputs, address)

    def with_replies_now(
        self, outputs: Sequence[Event], headers: Sequence[tuple[str, bytes]]
    ) -> list[Output]:
        """The same from a record's headers, without waiting for metadata (failure paths)."""
        raw = None
        for key, value in headers:
            if key == sc.HEADER_REPLY_TO:
                raw = value
        if raw is None or not any(isinstance(o, REPLY_EVENTS) for o in outputs):
            return list(outputs)
        address = self._address(raw)
        if address is not None and not self._exists(address):
            self._refresh_soon()  # metadata not loaded yet, or a partition added since
            self._skip(UNKNOWN_PARTITION, raw, "the topic has no such partition")
            return list(outputs)
        return self._copies(outputs, address)

    def _refresh_soon(self) -> None:
        """A metadata refresh in the background (same rate limit as ``_refresh``): this
        reply goes without its copy, the next ones find the partition."""
        if self._soon is not None and not self._soon.done():
            return
        try:
            self._soon = asyncio.get_running_loop().create_task(self._refresh())
        except RuntimeError:  # no loop (a synchronous caller): nothing to refresh with
            self._soon = None

    def _copies(self, outputs: Sequence[Event], address: ReplyTo | None) -> list[Output]:
        if address is None:
            return list(outputs)
        self.counts.labels(ROUTED).inc()
        # The replies first: the caller waits on them; the rest is for Kafka-native readers.
        copies: list[Output] = [
            RawRecord(
                address.topic,
                dump(event),
                event.key(),
                ((sc.HEADER_EVENT_TYPE, type(event).__name__.encode()),),
                partition=address.partition,
            )
            for event in outputs
            if isinstance(event, REPLY_EVENTS)
        ]
        return [*copies, *outputs]

    def _address(self, raw: bytes) -> ReplyTo | None:
        try:
            address = ReplyTo.parse(raw)
        except ValueError as exc:
            self._skip(MALFORMED, raw, str(exc))
            return None
        if address.topic != self.topic:
            self._skip(FOREIGN, raw, f"not the reply topic {self.topic}")
            return None
        return address

    def _exists(self, address: ReplyTo) -> bool:
        known = self.producer.partitions(address.topic)
        return known is not None and address.partition in known

    async def _refresh(self) -> None:
        # Concurrent records share one refresh: one that found the rate limit while the
        # first refresh was still in flight would otherwise skip a reply it could have routed.
        if self._refreshing is None or self._refreshing.done():
            now = time.monotonic()
            if now - self._refreshed < self.refresh_interval_s:
                return
            self._refreshed = now
            self._refreshing = asyncio.ensure_future(self.producer.refresh_partitions(self.topic))
        if not await asyncio.shield(self._refreshing):
            self._refreshed = -float("inf")  # it failed: the next record asks again

    def _skip(self, outcome: str, raw: bytes, why: str) -> None:
        self.counts.labels(outcome).inc()
        now = time.monotonic()
        if now - self._logged.get(outcome, -float("inf")) >= self.log_interval_s:
            self._logged[outcome] = now
            log.warning(
                "reply header %s=%r ignored (%s): %s; the result goes to %s only "
                "(this line at most every %.0f s per reason; genwire_reply_routes_total counts)",
                sc.HEADER_REPLY_TO,
                raw[:100],
                outcome,
                why,
                "genwire.results",
                self.log_interval_s,
            )
