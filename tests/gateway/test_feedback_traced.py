"""Feedback (gRPC ``FeedbackService.Feedback`` and ``POST /v1/feedback``) is traced and counted
like the other methods: a span of its own, linked to the caller's ``traceparent`` (its own
trace, not the caller's: the monitor would count it into the generation it followed), current
while its feedback is published, and the call in ``genwire_requests_total``."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from genwire_gateway.feedback import FEEDBACK_SERVICE, FeedbackServicer, feedback_router
from genwire_gateway.http_api import TRACE_ID_HEADER, TraceIds
from genwire_gateway.telemetry import GatewayMetrics
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from genwire.events import GenerationResult
from genwire.feedback import FeedbackEvent
from genwire.proto.v1 import feedback_pb2
from genwire.request import ErrorCode
from genwire.telemetry import semconv as sc

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"


class Store:
    async def get(self, request_id: str) -> GenerationResult | None:
        return GenerationResult(request_id=request_id, model="m", model_version="2")


class Producer:
    """Notes each feedback and the span current when it was published."""

    def __init__(self) -> None:
        self.sent: list[tuple[FeedbackEvent, int, int]] = []
        self.down = False

    async def publish_and_wait(self, event: FeedbackEvent) -> None:
        if self.down:
            raise ConnectionError("broker down")
        context = trace.get_current_span().get_span_context()
        self.sent.append((event, context.trace_id, context.span_id))


class Gateway:
    def __init__(self) -> None:
        self.store = Store()
        self.producer = Producer()

    async def known(self, request_id: str) -> bool:
        return False


class Aborted(Exception):
    pass


class Context:
    """A call's context: its metadata (the caller's ``traceparent``); ``abort`` raises."""

    def __init__(self, metadata: tuple[tuple[str, str], ...] = (("traceparent", TRACEPARENT),)):
        self.metadata = metadata
        self.code: grpc.StatusCode | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        raise Aborted(details)


def _tracer() -> tuple[trace.Tracer, InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return provider.get_tracer("test"), spans


def _counted(
    registry: CollectorRegistry, code: str, entrypoint: str = "grpc", method: str = "Feedback"
) -> float | None:
    labels = {"entrypoint": entrypoint, "method": method, "code": code}
    return registry.get_sample_value(sc.METRIC_REQUESTS, labels)


def _trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)


async def test_feedback_is_a_span_of_its_own_linked_to_the_caller_and_counted() -> None:
    gateway = Gateway()
    tracer, spans = _tracer()
    registry = CollectorRegistry()
    servicer = FeedbackServicer(gateway, tracer, GatewayMetrics(registry))  # type: ignore[arg-type]
    request = feedback_pb2.FeedbackRequest(request_id="req-1", rating=1)
    reply = await servicer.Feedback(request, Context())  # type: ignore[arg-type]
    assert reply.known and reply.model_version == "2"
    (span,) = spans.get_finished_spans()
    assert span.name == f"{FEEDBACK_SERVICE}/Feedback" == "genwire.v1.FeedbackService/Feedback"
    assert span.kind == SpanKind.INTERNAL and span.parent is None
    attributes = span.attributes or {}
    assert sc.ENTRYPOINT not in attributes  # not a generation request to the monitor
    assert attributes[sc.RPC_METHOD] == "Feedback" and attributes[sc.RPC_GRPC_STATUS_CODE] == 0
    assert [f"{link.context.trace_id:032x}" for link in span.links] == [CALLER_TRACE]
    assert f"{_trace_id(span):032x}" != CALLER_TRACE
    ((event, trace_id, span_id),) = gateway.producer.sent
    assert event.request_id == "req-1" and event.entrypoint == "grpc"
    assert span.context is not None and (trace_id, span_id) == (
        span.context.trace_id,
        span.context.span_id,
    )
    assert _counted(registry, "ok") == 1


@pytest.mark.parametrize(
    ("down", "request_fields", "code", "status"),
    [
        (
            False,
            {"request_id": "req-1"},
            ErrorCode.INVALID_REQUEST,
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            True,
            {"request_id": "req-1", "rating": 1},
            ErrorCode.UNAVAILABLE,
            grpc.StatusCode.UNAVAILABLE,
        ),
    ],
)
async def test_failed_feedback_is_marked_and_counted_with_its_code(
    down: bool, request_fields: dict[str, Any], code: str, status: grpc.StatusCode
) -> None:
    gateway = Gateway()
    gateway.producer.down = down
    tracer, spans = _tracer()
    registry = CollectorRegistry()
    servicer = FeedbackServicer(gateway, tracer, GatewayMetrics(registry))  # type: ignore[arg-type]
    context = Context(metadata=())
    with pytest.raises(Aborted):
        await servicer.Feedback(feedback_pb2.FeedbackRequest(**request_fields), context)  # type: ignore[arg-type]
    assert context.code == status
    (span,) = spans.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR and span.links == ()
    assert (span.attributes or {})[sc.ERROR_CODE] == code
    assert (span.attributes or {})[sc.RPC_GRPC_STATUS_CODE] == status.value[0]
    assert _counted(registry, code) == 1 and gateway.producer.sent == []


def _http(gateway: Gateway) -> tuple[TestClient, InMemorySpanExporter, CollectorRegistry]:
    """The gateway's feedback route behind its trace-id middleware (which makes a span for an
    answer without ``x-trace-id``: a second span would show here)."""
    tracer, spans = _tracer()
    registry = CollectorRegistry()
    app = FastAPI()
    app.include_router(feedback_router())
    app.state.gateway = gateway
    app.state.runtime = SimpleNamespace(tracer=tracer)
    app.state.gateway_metrics = GatewayMetrics(registry)
    return TestClient(TraceIds(app)), spans, registry


def test_http_feedback_is_a_span_of_its_own_linked_to_the_caller_and_counted() -> None:
    gateway = Gateway()
    client, spans, registry = _http(gateway)
    answer = client.post(
        "/v1/feedback",
        json={"request_id": "req-1", "rating": 1},
        headers={"traceparent": TRACEPARENT},
    )
    assert answer.status_code == 200 and answer.json()["model_version"] == "2"
    (span,) = spans.get_finished_spans()
    assert span.name == "POST /v1/feedback"
    assert span.kind == SpanKind.INTERNAL and span.parent is None
    attributes = span.attributes or {}
    assert sc.ENTRYPOINT not in attributes  # not a generation request to the monitor
    assert attributes[sc.HTTP_ROUTE] == "/v1/feedback"
    assert attributes[sc.HTTP_RESPONSE_STATUS_CODE] == 200
    assert [f"{link.context.trace_id:032x}" for link in span.links] == [CALLER_TRACE]
    assert answer.headers[TRACE_ID_HEADER] == f"{_trace_id(span):032x}" != CALLER_TRACE
    ((event, trace_id, span_id),) = gateway.producer.sent  # published inside the span
    assert event.entrypoint == "http"
    assert span.context is not None and (trace_id, span_id) == (
        span.context.trace_id,
        span.context.span_id,
    )
    assert _counted(registry, "ok", "http", "/v1/feedback") == 1


@pytest.mark.parametrize(
    ("down", "body", "code", "status"),
    [
        (False, {"request_id": "req-1"}, ErrorCode.INVALID_REQUEST, 400),
        (True, {"request_id": "req-1", "rating": 1}, ErrorCode.UNAVAILABLE, 503),
    ],
)
def test_failed_http_feedback_is_marked_and_counted_with_its_code(
    down: bool, body: dict[str, Any], code: str, status: int
) -> None:
    gateway = Gateway()
    gateway.producer.down = down
    client, spans, registry = _http(gateway)
    answer = client.post("/v1/feedback", json=body)
    assert answer.status_code == status and answer.json()["error"]["code"] == code
    (span,) = spans.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR and span.links == ()
    assert (span.attributes or {})[sc.ERROR_CODE] == code
    assert (span.attributes or {})[sc.HTTP_RESPONSE_STATUS_CODE] == status
    assert answer.headers[TRACE_ID_HEADER] == f"{_trace_id(span):032x}"
    assert _counted(registry, code, "http", "/v1/feedback") == 1 and gateway.producer.sent == []


def test_an_http_feedback_that_fails_unexpectedly_is_a_500_counted_as_internal() -> None:
    gateway = Gateway()

    async def broken(request_id: str) -> bool:
        raise RuntimeError("a bug")

    gateway.known = broken  # type: ignore[method-assign]
    client, spans, registry = _http(gateway)
    gateway.store = None  # type: ignore[assignment]  # its lookup fails: "known" is asked
    answer = client.post("/v1/feedback", json={"request_id": "req-1", "rating": 1})
    assert answer.status_code == 500 and answer.json()["error"]["code"] == ErrorCode.INTERNAL
    (span,) = spans.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR
    assert answer.headers[TRACE_ID_HEADER] == f"{_trace_id(span):032x}"
    assert _counted(registry, ErrorCode.INTERNAL, "http", "/v1/feedback") == 1
