"""KafkaSpanExporter writes spans the OTel Collector's kafka receiver can decode."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from genwire.kafka import ensure_topics
from genwire.settings import CommonSettings
from genwire.telemetry.kafka_exporter import KafkaSpanExporter
from genwire.topics import TopicSpec
from tests.common.support import fresh_topic


@pytest.mark.integration
async def test_spans_arrive_as_otlp_protobuf(infra: CommonSettings) -> None:
    topic = fresh_topic("spans")
    await ensure_topics(infra.kafka_bootstrap_servers, [TopicSpec(topic, 1, 3_600_000)])
    exporter = KafkaSpanExporter(infra.kafka_bootstrap_servers, topic=topic)
    provider = TracerProvider(resource=Resource.create({"service.name": "exporter-test"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    with (
        tracer.start_as_current_span("outer", attributes={"k": "v"}) as outer,
        tracer.start_as_current_span("inner"),
    ):
        pass
    # SimpleSpanProcessor exports synchronously: keep that off the test's event loop.
    await asyncio.to_thread(provider.shutdown)

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=infra.kafka_bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    spans = []
    try:
        async with asyncio.timeout(30):
            while len(spans) < 2:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for record in records:
                        req = ExportTraceServiceRequest.FromString(record.value)
                        for rs in req.resource_spans:
                            service = {a.key: a.value.string_value for a in rs.resource.attributes}[
                                "service.name"
                            ]
                            assert service == "exporter-test"
                            spans += [s for ss in rs.scope_spans for s in ss.spans]
    finally:
        await consumer.stop()
    assert {s.name for s in spans} == {"outer", "inner"}
    trace_id = outer.get_span_context().trace_id.to_bytes(16, "big")
    assert all(s.trace_id == trace_id for s in spans)
