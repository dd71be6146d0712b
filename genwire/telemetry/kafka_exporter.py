"""A span exporter that writes OTLP protobuf to Kafka, like the OTel Collector's kafka exporter.

Each Kafka value is one ``ExportTraceServiceRequest``; Jaeger's kafka receiver (encoding
``otlp_proto``) and genwire's monitor both consume the topic. The exporter runs its own event
loop thread, because span processors call ``export`` synchronously from their worker thread
and must never block, or depend on, the service's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from genwire.kafka_security import client_options
from genwire.telemetry.otlp_wire import encode_spans
from genwire.topics import MAX_RECORD_BYTES, Topic

log = logging.getLogger(__name__)

MAX_SPANS_PER_MESSAGE = 256
"""Spans per Kafka message: small messages for the consumers (Jaeger, the monitor)."""

MAX_PAYLOAD_BYTES = MAX_RECORD_BYTES - 64 * 1024
"""The largest message value: what a record may hold, less room for the record's overhead.
A batch over it is split; one span over it alone (a captured 16 MiB prompt) is dropped."""


def payloads(spans: Sequence[ReadableSpan]) -> list[bytes]:
    """``spans`` as OTLP messages of at most ``MAX_SPANS_PER_MESSAGE`` spans and
    ``MAX_PAYLOAD_BYTES`` bytes each: a message Kafka refuses would lose every span in it."""
    out: list[bytes] = []
    for i in range(0, len(spans), MAX_SPANS_PER_MESSAGE):
        out += _fitting(spans[i : i + MAX_SPANS_PER_MESSAGE])
    return out


def _fitting(spans: Sequence[ReadableSpan]) -> list[bytes]:
    payload = encode_spans(spans)
    if len(payload) <= MAX_PAYLOAD_BYTES:
        return [payload]
    if len(spans) == 1:
        span = spans[0]
        trace_id = f"{span.context.trace_id:032x}" if span.context is not None else "?"
        log.warning(
            "span %r of trace %s is %d bytes as OTLP, over the %d a Kafka record may hold: "
            "not exported",
            span.name,
            trace_id,
            len(payload),
            MAX_PAYLOAD_BYTES,
        )
        return []
    half = len(spans) // 2
    return _fitting(spans[:half]) + _fitting(spans[half:])


class KafkaSpanExporter(SpanExporter):
    """Export spans as OTLP protobuf records to a Kafka topic."""

    def __init__(
        self, bootstrap_servers: str, topic: str = Topic.SPANS, timeout_s: float = 10.0
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._topic = topic
        self._timeout_s = timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="genwire-span-exporter", daemon=True
        )
        self._thread.start()
        self._closed = False

    async def _send(self, payloads: list[bytes]) -> None:
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self._bootstrap,
                acks=1,
                linger_ms=5,
                max_request_size=MAX_RECORD_BYTES,  # aiokafka's default (1 MiB) is the topics'
                request_timeout_ms=10000,
                **client_options(),
            )
            try:
                await producer.start()
            except BaseException:
                # A failed start leaves its client open; close it, or every export retried
                # while the broker is down would leak one.
                await producer.stop()
                raise
            self._producer = producer
        futures = [await self._producer.send(self._topic, p) for p in payloads]
        await asyncio.gather(*futures)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Encode and send; failures are logged and reported, never raised."""
        if self._closed or not spans:
            return SpanExportResult.SUCCESS
        try:
            encoded = payloads(spans)
        except Exception as exc:  # the encoder leaves bad spans out; this is a last resort
            log.warning("encoding %d spans failed: %s", len(spans), exc)
            return SpanExportResult.FAILURE
        if not encoded:
            return SpanExportResult.SUCCESS  # only spans too large to export: each was logged
        future = asyncio.run_coroutine_threadsafe(self._send(encoded), self._loop)
        try:
            future.result(self._timeout_s)
        except Exception as exc:
            future.cancel()
            log.warning("span export to Kafka failed: %s", exc)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Sends are awaited in ``export``, so there is nothing buffered here."""
        return True

    def shutdown(self) -> None:
        """Stop the producer and the exporter's loop thread."""
        if self._closed:
            return
        self._closed = True
        if self._producer is not None:
            stop = asyncio.run_coroutine_threadsafe(self._producer.stop(), self._loop)
            try:
                stop.result(self._timeout_s)
            except Exception as exc:
                log.warning("stopping the span producer failed: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(self._timeout_s)
        if not self._loop.is_running():
            self._loop.close()
