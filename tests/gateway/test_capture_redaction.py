"""Content capture with a redaction hook that fails: the operator's hook runs on every captured
prompt and completion, so one that raises must neither fail the requests (leaving their charge
unsettled) nor let the text, or its exception's message quoting it, into spans or logs. And a
gRPC call that fails unexpectedly says only the exception's type on its span."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest
from genwire_gateway.auth import PRINCIPAL, Principal
from genwire_gateway.config import GatewaySettings
from genwire_gateway.grpc_service import GenerationServicer
from genwire_gateway.handlers import Prepared
from genwire_gateway.replies import WaiterRegistry
from genwire_gateway.telemetry import GatewayMetrics
from genwire_gateway.usage import CONTENT_WITHHELD, MeteredGateway, UsageMetrics
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

from genwire.apikeys import SCOPE_GENERATE, KeyRecord
from genwire.events import GenerationResult
from genwire.proto.v1 import generation_pb2 as pb
from genwire.redaction import DEFAULT_PATTERNS, Redactor
from genwire.telemetry import semconv as sc
from genwire.usage import UsageEvent

from .test_handlers import FakeStore
from .test_http_trace import TracingProducer, _app, _client, _hello, _token_then
from .test_metered import FakeLimiter

SECRET = "secret"
PROMPT = f"my {SECRET} is 42"


def _broken(text: str) -> str:
    raise RuntimeError(f"hook bug on the {SECRET} text {text!r}")


def _record() -> KeyRecord:
    """A limited key that opted in to content capture."""
    return KeyRecord(
        name="debug", hash="d" * 64, scopes=[SCOPE_GENERATE], capture_content=True, tpm=100_000
    )


def _gateway() -> tuple[MeteredGateway, TracingProducer, FakeLimiter]:
    registry = WaiterRegistry()
    producer = TracingProducer(registry, _token_then(_hello))
    limiter = FakeLimiter()
    gateway = MeteredGateway(
        GatewaySettings(result_poll_s=0.05),
        producer,  # type: ignore[arg-type]
        FakeStore(),  # type: ignore[arg-type]
        registry,
        limiter=limiter,  # type: ignore[arg-type]
        usage_metrics=UsageMetrics(CollectorRegistry()),
        redact=Redactor(list(DEFAULT_PATTERNS), _broken),
    )
    return gateway, producer, limiter


def _leaks(span: ReadableSpan) -> list[str]:
    """Whatever of ``span`` mentions the secret: attributes, status, events."""
    texts = [str(v) for v in (span.attributes or {}).values()]
    texts.append(span.status.description or "")
    for event in span.events:
        texts += [event.name, *(str(v) for v in (event.attributes or {}).values())]
    return [t for t in texts if SECRET in t]


async def test_a_failing_hook_withholds_captured_content_and_the_requests_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway, producer, limiter = _gateway()
    app, spans, _ = _app(gateway, _record())
    with caplog.at_level(logging.DEBUG):
        async with _client(app) as client:
            plain = await client.post("/v1/completions", json={"prompt": PROMPT})
            streamed = await client.post("/v1/completions", json={"prompt": PROMPT, "stream": True})
        await gateway.drain()
    assert plain.status_code == 200 and plain.json()["choices"][0]["text"] == "Hello"
    assert streamed.status_code == 200 and '"error"' not in streamed.text
    servers = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert len(servers) == 2
    for span in servers:
        attributes = span.attributes or {}
        assert attributes[sc.GEN_AI_PROMPT] == CONTENT_WITHHELD
        assert attributes[sc.GEN_AI_COMPLETION] == CONTENT_WITHHELD
        assert sc.ERROR_CODE not in attributes
        assert _leaks(span) == []
    assert SECRET not in caplog.text
    hook_lines = [r.getMessage() for r in caplog.records if "redaction hook" in r.getMessage()]
    assert hook_lines == ["the redaction hook failed on a captured prompt (RuntimeError)"]
    # Both settled: usage published, the admission charge corrected to the usage (3 each).
    assert len([e for e in producer.events if isinstance(e, UsageEvent)]) == 2
    assert limiter.tokens == 2 * 3


class _Context:
    """A gRPC call's context with no metadata and 5 s left; ``abort`` raises as grpc's does."""

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def time_remaining(self) -> float:
        return 5.0

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise grpc.aio.AbortError(code, details)  # type: ignore[no-untyped-call]

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass


def _servicer(gateway: Any) -> tuple[GenerationServicer, InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    servicer = GenerationServicer(
        gateway, provider.get_tracer("test"), GatewayMetrics(CollectorRegistry())
    )
    return servicer, spans


async def test_over_grpc_a_failing_hook_fails_nothing_and_leaks_nothing() -> None:
    gateway, producer, limiter = _gateway()
    servicer, spans = _servicer(gateway)
    PRINCIPAL.set(Principal(_record()))
    response = await servicer.Generate(pb.GenerateRequest(prompt=PROMPT), _Context())  # type: ignore[arg-type]
    await gateway.drain()
    assert response.text == "Hello"
    (span,) = spans.get_finished_spans()
    assert (span.attributes or {})[sc.GEN_AI_PROMPT] == CONTENT_WITHHELD
    assert _leaks(span) == []
    assert [e.request_id for e in producer.events if isinstance(e, UsageEvent)] == [
        response.request_id
    ]
    assert limiter.tokens == 3


async def test_an_unexpected_grpc_failure_puts_only_its_type_on_the_span() -> None:
    """Its message may quote the prompt; spans leave the process (grpc logs the whole)."""

    class Failing(MeteredGateway):
        async def generate(self, prepared: Prepared) -> GenerationResult:
            raise RuntimeError(f"a bug on {prepared.request.prompt}")

    registry = WaiterRegistry()
    gateway = Failing(
        GatewaySettings(),
        TracingProducer(registry),  # type: ignore[arg-type]
        FakeStore(),  # type: ignore[arg-type]
        registry,
    )
    servicer, spans = _servicer(gateway)
    with pytest.raises(RuntimeError):
        await servicer.Generate(pb.GenerateRequest(prompt=PROMPT), _Context())  # type: ignore[arg-type]
    (span,) = spans.get_finished_spans()
    assert (span.attributes or {})[sc.ERROR_CODE] == "unknown"
    assert span.status.description == "unexpected RuntimeError"
    assert _leaks(span) == []
