"""One trace per request (issue 16, item 3), without the stack.

FastAPI opens its own SERVER span (and operation spans) per HTTP request on the global tracer
provider, which every genwire service sets: a second trace beside genwire's, whose root is the
gateway's own SERVER span. The runner switches it off; the monitor counts a trace as a request
only when it holds genwire's root span.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from unittest import mock

import opentelemetry.trace as otel_trace
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from genwire_bench.monitor.simulate import fast_settings
from genwire_bench.monitor.synth import REFERENCE, encode, request_spans
from genwire_monitor.handlers import MonitorEngine
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from genwire.service import ServiceRuntime
from genwire.service.runner import Running, ServiceSpec
from genwire.settings import ServiceSettings
from genwire.telemetry import semconv as sc

T0 = 1_800_000_000.0


@pytest.fixture
def global_spans() -> Iterator[InMemorySpanExporter]:
    """An SDK provider standing in for the global one (as ``configure_tracing`` sets it)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with mock.patch.object(otel_trace, "get_tracer_provider", return_value=provider):
        yield exporter


def _ping_router(settings: ServiceSettings) -> list[APIRouter]:
    router = APIRouter()

    @router.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    return [router]


@asynccontextmanager
async def _no_setup(
    settings: ServiceSettings, runtime: ServiceRuntime, app: FastAPI
) -> AsyncIterator[Running | None]:
    yield None


def test_fastapi_alone_opens_a_trace_of_its_own(global_spans: InMemorySpanExporter) -> None:
    # The control: what the runner must switch off is really there.
    app = FastAPI()
    for router in _ping_router(ServiceSettings()):
        app.include_router(router)
    assert TestClient(app).get("/ping").status_code == 200
    spans = global_spans.get_finished_spans()
    assert "GET /ping" in {s.name for s in spans}


def test_the_service_runner_adds_no_framework_spans(global_spans: InMemorySpanExporter) -> None:
    spec = ServiceSpec(
        stage="probe", settings=ServiceSettings, setup=_no_setup, routers=_ping_router
    )
    app = spec.app(ServiceSettings())  # no lifespan entered: routes only
    client = TestClient(app, raise_server_exceptions=False)
    assert client.get("/ping").status_code == 200
    assert client.get("/healthz").status_code in (200, 500)  # no runtime: the route still runs
    assert global_spans.get_finished_spans() == ()


def _engine_with(by_service: dict[str, list[Span]]) -> MonitorEngine:
    engine = MonitorEngine(fast_settings())
    engine.ingest([encode(by_service)], T0)
    engine.complete(T0 + 1)  # idle past trace_idle_s, inside the scaled windows
    return engine


def _phantom() -> dict[str, list[Span]]:
    """The framework's trace of an HTTP request: a SERVER span and two operation spans."""
    tid = b"\x42" * 16
    server = Span(
        trace_id=tid,
        span_id=b"\x01" * 8,
        name="POST /v1/completions",
        kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=int(T0 * 1e9),
        end_time_unix_nano=int(T0 * 1e9) + 5_000_000,
    )
    ops = [
        Span(
            trace_id=tid,
            span_id=bytes([i]) * 8,
            parent_span_id=server.span_id,
            name=name,
            kind=Span.SPAN_KIND_INTERNAL,
            start_time_unix_nano=int(T0 * 1e9),
            end_time_unix_nano=int(T0 * 1e9) + 4_000_000,
        )
        for i, name in ((2, "fastapi.endpoint"), (3, "fastapi.serialization"))
    ]
    return {"genwire-gateway": [server, *ops]}


def test_the_monitor_counts_only_traces_with_genwire_root_span() -> None:
    rng = random.Random(3)
    by_service = request_spans(REFERENCE, rng, int(T0 * 1e9))
    for service, spans in _phantom().items():
        by_service.setdefault(service, []).extend(spans)
    engine = _engine_with(by_service)
    assert engine.counts.requests == 1  # the genwire trace; the framework's is not a request
    assert engine.sketch("end_to_end", T0 + 1).count == 1
    # ...and no "unknown unknown" drift series grows from it
    assert {(r.model, r.version) for r in engine.drift_results} <= {("genwire-gpt", "1")}
    engine.tick(T0 + 1)
    assert all(r.model != "unknown" for r in engine.drift_results)


def test_a_gateway_trace_and_a_kafka_client_trace_each_count_once() -> None:
    rng = random.Random(4)
    gateway = request_spans(REFERENCE, rng, int(T0 * 1e9))
    # the gateway's SERVER span as the gateway writes it: genwire's root
    root = gateway["genwire-gateway"][0]
    root.attributes.add(key=sc.ENTRYPOINT).value.string_value = "http"
    kafka_client = request_spans(REFERENCE, rng, int(T0 * 1e9))
    del kafka_client["genwire-gateway"]  # a Kafka client publishes genwire.requests itself
    merged: dict[str, list[Span]] = {}
    for part in (gateway, kafka_client):
        for service, spans in part.items():
            merged.setdefault(service, []).extend(spans)
    assert _engine_with(merged).counts.requests == 2
    assert _engine_with(_phantom()).counts.requests == 0
