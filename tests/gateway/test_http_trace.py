"""The HTTP transport's traces and counts over the real gateway logic (``Gateway``,
``MeteredGateway``) with in-memory fakes of the producer and Redis: a streamed answer's later
steps run in its SERVER span's trace (captured content, the usage event, an abandoned stream's
cancel), a stream that fails after its first chunk is counted with its error code, and each
prompt of a batch has a span of its own in the call's trace."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import types
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from genwire_gateway.auth import AuthMiddleware, Principal
from genwire_gateway.config import GatewaySettings
from genwire_gateway.handlers import Gateway
from genwire_gateway.http_api import install_error_handlers, openai_router
from genwire_gateway.replies import WaiterRegistry
from genwire_gateway.telemetry import GatewayMetrics
from genwire_gateway.usage import MeteredGateway, UsageMetrics
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry
from starlette.requests import ClientDisconnect

from genwire.apikeys import SCOPE_GENERATE, KeyRecord
from genwire.events import ControlEvent, ErrorInfo, Event, GenerationResult, TokenEvent, Usage
from genwire.request import ErrorCode, GenerationRequest
from genwire.telemetry import semconv as sc
from genwire.usage import UsageEvent

from .test_handlers import FakeProducer, FakeStore
from .test_http_api import completions_scope

Reply = Callable[[GenerationRequest, WaiterRegistry], None]
Where = tuple[int, int]
"""(trace id, span id) of the span current when something was sent."""


def _current() -> Where:
    context = trace.get_current_span().get_span_context()
    return context.trace_id, context.span_id


class TracingProducer(FakeProducer):
    """``FakeProducer`` that also notes the span current at each send (a traced producer's
    record joins that span's trace)."""

    def __init__(self, registry: WaiterRegistry, reply: Reply | None = None) -> None:
        super().__init__(registry, reply)
        self.sent_in: list[Where] = []
        """Where each request was published (``requests``' order)."""
        self.events_in: list[Where] = []
        """Where each event was published (``events``' order)."""

    async def send(self, topic: str, value: bytes, headers: Any = (), **kw: Any) -> Any:
        self.sent_in.append(_current())
        return await super().send(topic, value, headers, **kw)

    async def publish(self, event: Event, **_: Any) -> None:
        self.events_in.append(_current())
        self.events.append(event)

    async def publish_and_wait(self, event: Event) -> None:
        await self.publish(event)


class KeyAuth:
    """An ``Authenticator`` that takes every key as ``record``'s."""

    def __init__(self, record: KeyRecord) -> None:
        self.record = record

    async def authenticate(self, header: str | None, scope: str | None) -> Principal:
        return Principal(self.record)


def _app(
    gateway: Gateway, record: KeyRecord | None = None
) -> tuple[FastAPI, InMemorySpanExporter, CollectorRegistry]:
    """The gateway's HTTP routes and middleware over ``gateway``: its spans and metrics."""
    app = FastAPI()
    app.include_router(openai_router())
    app.add_middleware(AuthMiddleware)
    install_error_handlers(app)
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    registry = CollectorRegistry()
    app.state.runtime = types.SimpleNamespace(tracer=provider.get_tracer("test"))
    app.state.gateway = gateway
    app.state.gateway_metrics = GatewayMetrics(registry)
    app.state.auth = KeyAuth(record) if record is not None else None
    return app, spans, registry


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")


def _server(spans: InMemorySpanExporter) -> ReadableSpan:
    (server,) = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    return server


def _where(span: ReadableSpan) -> Where:
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


def _events(text: str) -> list[Any]:
    data = [line[len("data: ") :] for line in text.split("\n") if line.startswith("data: ")]
    return [d if d == "[DONE]" else json.loads(d) for d in data]


def _token(request: GenerationRequest, registry: WaiterRegistry) -> None:
    """The pipeline's first piece of text only (the model goes on, or the answer never ends)."""
    assert request.request_id is not None
    registry.push(TokenEvent(request_id=request.request_id, index=0, text="Hel"))


def _token_then(result: Callable[[str], GenerationResult]) -> Reply:
    """A piece of text, then ``result``: the result comes after the stream's first chunk."""

    def reply(request: GenerationRequest, registry: WaiterRegistry) -> None:
        assert request.request_id is not None
        _token(request, registry)
        registry.resolve(result(request.request_id))

    return reply


def _hello(request_id: str) -> GenerationResult:
    return GenerationResult(
        request_id=request_id,
        text="Hello",
        finish_reason="stop",
        usage=Usage(prompt_tokens=1, completion_tokens=2),
    )


def _failed(request_id: str) -> GenerationResult:
    error = ErrorInfo(code=ErrorCode.INFERENCE_FAILED, message="the model failed")
    return GenerationResult(request_id=request_id, error=error)


def _requests(registry: CollectorRegistry, code: str) -> float | None:
    labels = {"entrypoint": "http", "method": "/v1/completions", "code": code}
    return registry.get_sample_value(sc.METRIC_REQUESTS, labels)


# -- a stream's later steps stay in its trace -----------------------------------------------


async def test_a_captured_stream_records_its_completion_and_usage_in_its_trace() -> None:
    """The completion is captured, and the usage published, when the last chunk is read: as
    Starlette iterates the response, after the handler returned. Both belong to the SERVER
    span's trace, not to traces of their own."""
    registry = WaiterRegistry()
    producer = TracingProducer(registry, _token_then(_hello))
    gateway = MeteredGateway(
        GatewaySettings(result_poll_s=0.05),
        producer,  # type: ignore[arg-type]
        FakeStore(),  # type: ignore[arg-type]
        registry,
        usage_metrics=UsageMetrics(CollectorRegistry()),
    )
    record = KeyRecord(name="debug", hash="d" * 64, scopes=[SCOPE_GENERATE], capture_content=True)
    app, spans, _ = _app(gateway, record)
    async with _client(app) as client:
        response = await client.post("/v1/completions", json={"prompt": "hi", "stream": True})
    await gateway.drain()
    assert [e["choices"][0]["text"] for e in _events(response.text)[:-1]] == ["Hel", "lo"]
    server = _server(spans)
    attributes = server.attributes or {}
    assert attributes[sc.GEN_AI_PROMPT] == "hi"
    assert attributes[sc.GEN_AI_COMPLETION] == "Hello"
    (usage,) = [i for i, e in enumerate(producer.events) if isinstance(e, UsageEvent)]
    assert producer.events_in[usage][0] == _where(server)[0]


async def test_an_abandoned_streams_cancel_is_published_in_its_trace() -> None:
    """The client hangs up after the first chunk: the cancel of the generation (``stream
    abandoned``) belongs to the request's trace, like the request it stops."""
    registry = WaiterRegistry()
    producer = TracingProducer(registry, _token)
    gateway = Gateway(GatewaySettings(result_poll_s=0.05), producer, FakeStore(), registry)  # type: ignore[arg-type]
    app, spans, metrics = _app(gateway)
    body = json.dumps({"prompt": "hi", "stream": True}).encode()
    chunk_sent = asyncio.Event()
    received = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if received:
            return received.pop()
        await chunk_sent.wait()  # then the client is gone
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            chunk_sent.set()

    scope = completions_scope(len(body))
    await asyncio.wait_for(app(scope, receive, send), timeout=5)  # type: ignore[arg-type]
    await gateway.drain()
    assert sent[0]["status"] == 200 and chunk_sent.is_set()
    (cancel,) = [i for i, e in enumerate(producer.events) if isinstance(e, ControlEvent)]
    assert producer.events[cancel].reason == "stream abandoned"  # type: ignore[attr-defined]
    assert producer.events_in[cancel][0] == _where(_server(spans))[0]
    assert _requests(metrics, "cancelled") == 1


@pytest.mark.parametrize("fails_at", [1, 2], ids=["start", "first-chunk"])
async def test_a_stream_whose_send_fails_is_closed_at_once_not_by_the_garbage_collector(
    fails_at: int,
) -> None:
    """ASGI 2.4 servers (and a slow client's full socket) make the hang-up surface in
    ``send``: Starlette then leaves the body suspended, or never starts it (the response's
    start failing). The response closes and settles it itself: the cancel goes out, the span
    ends and the call is counted once, with no garbage collection."""
    registry = WaiterRegistry()
    producer = TracingProducer(registry, _token)
    gateway = Gateway(GatewaySettings(result_poll_s=0.05), producer, FakeStore(), registry)  # type: ignore[arg-type]
    app, spans, metrics = _app(gateway)
    body = json.dumps({"prompt": "hi", "stream": True}).encode()
    received = [{"type": "http.request", "body": body, "more_body": False}]
    sends = 0

    async def receive() -> dict[str, Any]:
        if received:
            return received.pop()
        await asyncio.sleep(3600)  # the server is told nothing: only send fails
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal sends
        sends += 1
        if sends >= fails_at:
            raise OSError("client gone")

    scope = completions_scope(len(body), spec_version="2.4")
    gc.disable()  # what is asserted must not depend on a collection
    try:
        with contextlib.suppress(OSError, ClientDisconnect):  # the server's to deal with
            await asyncio.wait_for(app(scope, receive, send), timeout=5)  # type: ignore[arg-type]
        # Published by the response's own close, not by a finalizer later (drain waits for
        # those too): it is out the moment the response is.
        assert any(isinstance(e, ControlEvent) for e in producer.events)
        await gateway.drain()
        (cancel,) = [i for i, e in enumerate(producer.events) if isinstance(e, ControlEvent)]
        assert producer.events[cancel].reason == "stream abandoned"  # type: ignore[attr-defined]
        assert producer.events_in[cancel][0] == _where(_server(spans))[0]
        assert _requests(metrics, "cancelled") == 1 and _requests(metrics, "ok") is None
        servers = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
        assert len(servers) == 1
    finally:
        gc.enable()


# -- a stream that fails after its first chunk ----------------------------------------------


async def test_a_stream_failing_after_its_first_chunk_is_counted_with_its_error() -> None:
    """The answer is a 200 whose stream ends with an error event: the request failed, and
    ``genwire_requests_total`` says so (the error budget counts it), as gRPC's does."""
    registry = WaiterRegistry()
    producer = TracingProducer(registry, _token_then(_failed))
    gateway = Gateway(GatewaySettings(result_poll_s=0.05), producer, FakeStore(), registry)  # type: ignore[arg-type]
    app, _, metrics = _app(gateway)
    async with _client(app) as client:
        response = await client.post("/v1/completions", json={"prompt": "hi", "stream": True})
    first, error, done = _events(response.text)
    assert response.status_code == 200 and first["choices"][0]["text"] == "Hel"
    assert error["error"]["code"] == ErrorCode.INFERENCE_FAILED and done == "[DONE]"
    assert _requests(metrics, ErrorCode.INFERENCE_FAILED) == 1
    assert _requests(metrics, "ok") is None


# -- a batch: one trace, a span per prompt --------------------------------------------------


async def test_each_prompt_of_a_batch_has_its_own_span_in_the_calls_trace() -> None:
    """Streamed or not, each prompt of a batch is a request of its own (its id, its claim):
    a span of its own under the SERVER span, with its request id, current while it is
    published, so its pipeline spans hang under it."""
    for stream in (False, True):
        registry = WaiterRegistry()
        producer = TracingProducer(registry, _token_then(_hello))
        gateway = Gateway(GatewaySettings(result_poll_s=0.05), producer, FakeStore(), registry)  # type: ignore[arg-type]
        app, spans, _ = _app(gateway)
        async with _client(app) as client:
            response = await client.post(
                "/v1/completions",
                json={"prompt": ["a", "b"], "stream": stream},
                headers={"Idempotency-Key": "batch-1"},
            )
        assert response.status_code == 200, response.text
        server = _server(spans)
        prompts = [s for s in spans.get_finished_spans() if s.name.endswith(" prompt")]
        assert sorted(str((s.attributes or {})[sc.REQUEST_ID]) for s in prompts) == [
            "batch-1-0",
            "batch-1-1",
        ], stream
        for prompt in prompts:
            assert prompt.kind == SpanKind.INTERNAL
            assert sc.ENTRYPOINT not in (prompt.attributes or {})  # not a request of its own
            assert prompt.parent is not None and prompt.parent.span_id == _where(server)[1]
            assert _where(prompt)[0] == _where(server)[0]
        published = {
            request.request_id: where
            for request, where in zip(producer.requests, producer.sent_in, strict=True)
        }
        assert published == {(s.attributes or {})[sc.REQUEST_ID]: _where(s) for s in prompts}, (
            stream
        )


async def test_a_single_prompt_is_its_server_span() -> None:
    """One prompt (nearly every call): no span of its own, the SERVER span is the request's."""
    registry = WaiterRegistry()
    producer = TracingProducer(registry, _token_then(_hello))
    gateway = Gateway(GatewaySettings(result_poll_s=0.05), producer, FakeStore(), registry)  # type: ignore[arg-type]
    app, spans, _ = _app(gateway)
    async with _client(app) as client:
        response = await client.post("/v1/completions", json={"prompt": "a"})
    assert response.status_code == 200
    server = _server(spans)
    assert len(spans.get_finished_spans()) == 1
    assert producer.sent_in == [_where(server)]
