"""The Kafka span exporter reports a failure to encode; it never raises into the SDK."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from genwire.telemetry import kafka_exporter
from genwire.telemetry.kafka_exporter import KafkaSpanExporter


def test_an_encoding_failure_is_a_failed_export(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(spans: Sequence[ReadableSpan]) -> bytes:
        raise RuntimeError("encoder bug")

    monkeypatch.setattr(kafka_exporter, "encode_spans", broken)
    kept = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(kept))
    with provider.get_tracer("t").start_as_current_span("s"):
        pass
    # No broker: encoding fails before anything would be sent.
    exporter = KafkaSpanExporter("127.0.0.1:1", topic="unused")
    try:
        assert exporter.export(kept.get_finished_spans()) is SpanExportResult.FAILURE
    finally:
        exporter.shutdown()
