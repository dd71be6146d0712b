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
from genwire.topics import Topic

log = logging.getLogger(__name__)

# Keeps each Kafka message well under the broker's default 1 MB limit.
MAX_SPANS_PER_MESSAGE = 256


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
            payloads = [
                encode_spans(spans[i : i + MAX_SPANS_PER_MESSAGE])
                for i in range(0, len(spans), MAX_SPANS_PER_MESSAGE)
            ]
        except Exception as exc:  # the encoder leaves bad spans out; this is a last resort
            log.warning("encoding %d spans failed: %s", len(spans), exc)
            return SpanExportResult.FAILURE
        future = asyncio.run_coroutine_threadsafe(self._send(payloads), self._loop)
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
