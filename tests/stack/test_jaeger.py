"""Tracing backbone: a service's span goes through Kafka (``otlp_spans``) into Jaeger."""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import httpx

from genwire.service import ServiceRuntime
from genwire.settings import CommonSettings, ServiceSettings


async def _find_trace(base: str, trace_id: str, timeout_s: float) -> dict[str, object] | None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=base, timeout=5, trust_env=False) as http:
        while time.monotonic() < deadline:
            response = await http.get(f"/api/traces/{trace_id}")
            if response.status_code == 200:
                data = response.json().get("data") or []
                if data:
                    trace: dict[str, object] = data[0]
                    return trace
            await asyncio.sleep(0.25)
    return None


async def test_a_service_span_reaches_jaeger_through_kafka(infra: CommonSettings) -> None:
    service = f"genwire-stack-test-{uuid.uuid4().hex[:8]}"
    settings = ServiceSettings(service_name=service)
    assert os.environ.get("OTEL_TRACES_EXPORTER", "kafka") == "kafka"
    # The runtime's default exporter is the KafkaSpanExporter, as in every service.
    runtime = ServiceRuntime(settings, "stack-test", set_global_tracer=False)
    with runtime.tracer.start_as_current_span("stack-test-span") as span:
        span.set_attribute("genwire.test", "tracing backbone")
        trace_id = format(span.get_span_context().trace_id, "032x")
    await asyncio.to_thread(runtime.tracer_provider.shutdown)  # flush through Kafka

    trace = await _find_trace(infra.jaeger_ui_url, trace_id, timeout_s=30)
    assert trace is not None, f"trace {trace_id} did not appear in Jaeger within 30 s"
    spans = trace["spans"]
    processes = trace["processes"]
    assert isinstance(spans, list) and isinstance(processes, dict)
    assert [s["operationName"] for s in spans] == ["stack-test-span"]
    assert processes[spans[0]["processID"]]["serviceName"] == service

    async with httpx.AsyncClient(base_url=infra.jaeger_ui_url, timeout=5, trust_env=False) as h:
        services = (await h.get("/api/services")).json()["data"]
    assert service in services
