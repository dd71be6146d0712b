"""The Kafka span exporter's messages fit a Kafka record: a batch with large spans (captured
prompts, opted in) is split by size, and a span too large alone is left out and logged.
Before, a batch over aiokafka's default 1 MiB was refused whole, with every span in it, and
the messages after it were not sent either."""

from __future__ import annotations

import logging

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from genwire.telemetry import kafka_exporter
from genwire.telemetry.kafka_exporter import payloads
from genwire.telemetry.otlp_wire import encode_spans


def _spans(*sizes: int) -> list[ReadableSpan]:
    kept = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(kept))
    tracer = provider.get_tracer("t")
    for i, size in enumerate(sizes):
        with tracer.start_as_current_span(f"size-test-span-{i}") as span:
            span.set_attribute("gen_ai.prompt", "x" * size)
    return list(kept.get_finished_spans())


def test_a_batch_is_split_by_size_and_keeps_every_span_that_fits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kafka_exporter, "MAX_PAYLOAD_BYTES", 10_000)
    spans = _spans(100, 4_000, 4_000, 4_000, 100)
    assert len(encode_spans(spans)) > 10_000  # one message would be refused
    out = payloads(spans)
    assert len(out) > 1 and all(len(p) <= 10_000 for p in out)
    names = b"".join(out)  # every span's name is in some message
    assert all(f"size-test-span-{i}".encode() in names for i in range(len(spans)))


def test_a_span_too_large_alone_is_left_out_and_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(kafka_exporter, "MAX_PAYLOAD_BYTES", 10_000)
    spans = _spans(100, 20_000, 100)
    with caplog.at_level(logging.WARNING, logger="genwire.telemetry.kafka_exporter"):
        out = payloads(spans)
    names = b"".join(out)
    assert b"size-test-span-0" in names and b"size-test-span-2" in names
    assert b"size-test-span-1" not in names
    assert "span 'size-test-span-1'" in caplog.text and "not exported" in caplog.text


def test_the_real_limit_is_what_a_topic_takes() -> None:
    from genwire.topics import MAX_RECORD_BYTES

    assert kafka_exporter.MAX_PAYLOAD_BYTES < MAX_RECORD_BYTES
    assert len(payloads(_spans(2 << 20))) == 1  # 2 MiB: over aiokafka's default, under ours


def test_the_exporters_producer_takes_records_as_large_as_a_topic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aiokafka's own default (1 MiB) refused a message the topic takes."""
    made: list[dict[str, object]] = []

    class Producer:
        def __init__(self, **options: object) -> None:
            made.append(options)

        async def start(self) -> None:
            raise ConnectionError("no broker here")

        async def stop(self) -> None:
            return None

    monkeypatch.setattr(kafka_exporter, "AIOKafkaProducer", Producer)
    exporter = kafka_exporter.KafkaSpanExporter("127.0.0.1:1", topic="unused", timeout_s=5.0)
    try:
        exporter.export(_spans(10))  # fails to start: reported, never raised
    finally:
        exporter.shutdown()
    from genwire.topics import MAX_RECORD_BYTES

    assert made and made[0]["max_request_size"] == MAX_RECORD_BYTES
