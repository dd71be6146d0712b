"""The HTTP transport without servers: the real routes, error handlers and middleware over a
gateway whose pipeline is faked (``generate``/``stream`` answer at once). What it checks: the
body is bounded before it is read, an unexpected exception still answers in OpenAI's shape,
every answer carries ``x-trace-id``, ``Idempotency-Key`` errors name the header, and streamed
chunks say ``"usage": null`` when a usage chunk comes last."""

from __future__ import annotations

import json
import logging
import re
import types
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from genwire_gateway.auth import AuthError, AuthMiddleware
from genwire_gateway.config import GatewaySettings
from genwire_gateway.handlers import Chunk, Gateway, Prepared
from genwire_gateway.http_api import MAX_BODY_BYTES, install_error_handlers, openai_router
from genwire_gateway.telemetry import GatewayMetrics
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

from genwire.events import MAX_REQUEST_ID_CHARS, REQUEST_ID_PATTERN, GenerationResult, Usage
from genwire.request import ErrorCode
from genwire.telemetry import semconv as sc
from genwire.telemetry.logs import _TraceFilter

SECRET = "password=hunter2 at 10.0.0.7"
"""What a bug's exception says: it must never reach the caller."""


class FakeGateway(Gateway):
    """The real validation (``prepare``); results at once, or ``fail`` raised."""

    def __init__(self) -> None:
        self.settings = GatewaySettings()
        self.seen: list[Prepared] = []
        self.fail: Exception | None = None
        self.fail_mid_stream: Exception | None = None

    async def generate(self, prepared: Prepared) -> GenerationResult:
        self.seen.append(prepared)
        if self.fail is not None:
            raise self.fail
        return _result(prepared)

    async def stream(self, prepared: Prepared) -> AsyncIterator[Chunk]:
        self.seen.append(prepared)
        yield Chunk(index=0, text="he")
        if self.fail_mid_stream is not None:
            raise self.fail_mid_stream
        result = _result(prepared)
        yield Chunk(
            index=1,
            text="llo",
            final=True,
            finish_reason="stop",
            usage=result.usage,
            result=result,
        )


def _result(prepared: Prepared) -> GenerationResult:
    return GenerationResult(
        request_id=prepared.request_id,
        text="hello",
        finish_reason="stop",
        usage=Usage(prompt_tokens=2, completion_tokens=3),
    )


class Models:
    def __init__(self) -> None:
        self.fail: Exception | None = None

    async def served(self) -> list[dict[str, Any]]:
        if self.fail is not None:
            raise self.fail
        return [{"id": "genwire-gpt", "object": "model", "created": 0, "owned_by": "genwire"}]

    async def find(self, model: str) -> dict[str, Any] | None:
        return None


class RefusingAuth:
    """An ``Authenticator`` that refuses every key."""

    async def authenticate(self, header: str | None, scope: str | None) -> Any:
        raise AuthError("invalid_api_key", 401, "unknown API key")


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def app(spans: InMemorySpanExporter) -> FastAPI:
    """Built as the gateway's app is: routes, the auth middleware, then the error handlers."""
    app = FastAPI()
    app.include_router(openai_router())

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        if getattr(app.state, "readiness_fails", False):
            raise RuntimeError(SECRET)
        return {"ready": "yes"}

    app.add_middleware(AuthMiddleware)
    install_error_handlers(app)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    app.state.runtime = types.SimpleNamespace(tracer=provider.get_tracer("test"))
    app.state.gateway = FakeGateway()
    app.state.gateway_metrics = GatewayMetrics(CollectorRegistry())
    app.state.models = Models()
    app.state.auth = None
    return app


def _client(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://gateway")


def _events(text: str) -> list[Any]:
    """The data of every SSE event ("[DONE]" as is)."""
    data = [line[len("data: ") :] for line in text.split("\n") if line.startswith("data: ")]
    return [d if d == "[DONE]" else json.loads(d) for d in data]


# -- the body's size ------------------------------------------------------------------------


def completions_scope(length: int, spec_version: str | None = None) -> dict[str, Any]:
    """The ASGI scope of a ``POST /v1/completions`` with a JSON body of ``length`` bytes (an
    ASGI ``spec_version`` when given: 2.4 servers raise in ``send`` when the client left)."""
    asgi = (
        {"version": "3.0"}
        if spec_version is None
        else {"version": "3.0", "spec_version": spec_version}
    )
    return {
        "type": "http",
        "asgi": asgi,
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/completions",
        "raw_path": b"/v1/completions",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(length).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("gateway", 80),
    }


async def test_a_declared_length_over_the_limit_is_refused_before_reading(app: FastAPI) -> None:
    reads: list[str] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        reads.append("read")
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = completions_scope(MAX_BODY_BYTES + 1)
    await app(scope, receive, send)
    assert sent[0]["status"] == 413 and reads == []
    error = json.loads(sent[1]["body"])["error"]
    assert error["code"] == ErrorCode.REQUEST_TOO_LARGE and str(MAX_BODY_BYTES) in error["message"]
    assert app.state.gateway.seen == []


async def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit(app: FastAPI) -> None:
    piece = 1024 * 1024
    pulled: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        yield b'{"prompt": "'
        for i in range(64 * MAX_BODY_BYTES // piece):  # far more than the limit
            pulled.append(i)
            yield b"a" * piece
        yield b'"}'

    async with _client(app) as client:
        response = await client.post("/v1/completions", content=body())
    assert response.status_code == 413
    assert response.json()["error"]["code"] == ErrorCode.REQUEST_TOO_LARGE
    assert len(pulled) <= MAX_BODY_BYTES // piece + 1  # stopped reading at the limit
    assert app.state.gateway.seen == []


async def test_a_body_within_the_limit_is_read_whole(app: FastAPI) -> None:
    async def body() -> AsyncIterator[bytes]:
        for part in (b'{"prompt"', b': "hel', b'lo"}'):
            yield part

    async with _client(app) as client:
        response = await client.post("/v1/completions", content=body())
    assert response.status_code == 200, response.text
    assert app.state.gateway.seen[0].request.prompt == "hello"


# -- unexpected exceptions ------------------------------------------------------------------


async def test_a_bug_while_answering_is_a_500_in_openai_shape(
    app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    app.state.gateway.fail = RuntimeError(SECRET)
    async with _client(app) as client:
        response = await client.post("/v1/completions", json={"prompt": "x"})
    assert response.status_code == 500
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["code"], error["type"]) == (ErrorCode.INTERNAL, "server_error")
    assert SECRET not in response.text
    assert response.headers["x-trace-id"] and response.headers["x-request-id"]
    logged = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert logged and SECRET in str(logged[0].exc_info[1])  # type: ignore[index]


async def test_a_bug_mid_stream_ends_it_with_an_error_event_and_done(
    app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    app.state.gateway.fail_mid_stream = RuntimeError(SECRET)
    async with _client(app) as client:
        response = await client.post("/v1/completions", json={"prompt": "x", "stream": True})
    assert response.status_code == 200
    events = _events(response.text)
    assert events[0]["choices"][0]["text"] == "he"
    assert events[-2]["error"]["code"] == ErrorCode.INTERNAL and events[-1] == "[DONE]"
    assert SECRET not in response.text
    assert any(r.exc_info for r in caplog.records if r.levelno == logging.ERROR)


async def test_a_bug_on_any_other_route_is_a_500_in_openai_shape(
    app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    app.state.models.fail = RuntimeError(SECRET)
    async with _client(app) as client:
        response = await client.get("/v1/models")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == ErrorCode.INTERNAL
    assert SECRET not in response.text and response.headers["x-trace-id"]
    assert any(r.exc_info for r in caplog.records if r.levelno == logging.ERROR)


# -- x-trace-id -----------------------------------------------------------------------------


async def test_every_answer_of_a_route_carries_a_trace_id(
    app: FastAPI, spans: InMemorySpanExporter
) -> None:
    async with _client(app) as client:
        answers = {
            "models": await client.get("/v1/models"),
            "no model": await client.get("/v1/models/nope"),
            "refused": await client.post("/v1/completions", json={"prompt": "x", "best_of": 3}),
            "answered": await client.post("/v1/completions", json={"prompt": "x"}),
        }
        health = await client.get("/healthz")
    for name, answer in answers.items():
        assert re.fullmatch("[0-9a-f]{32}", answer.headers.get("x-trace-id", "")), name
    assert "x-trace-id" not in health.headers  # probes: no span each
    # The answers no handler traced have a span of their own, which the monitor does not
    # read as a request (no entry point, not a SERVER span).
    own = [s for s in spans.get_finished_spans() if s.kind == SpanKind.INTERNAL]
    assert {s.name for s in own} == {"GET /v1/models", "GET /v1/models/{model_id:path}"}
    assert all(sc.ENTRYPOINT not in (s.attributes or {}) for s in own)
    assert {f"{s.context.trace_id:032x}" for s in own} == {
        answers[n].headers["x-trace-id"] for n in ("models", "no model")
    }


async def test_refusals_and_unknown_routes_make_no_span(
    app: FastAPI, spans: InMemorySpanExporter
) -> None:
    """A flood of refused keys or of scanned paths costs no span export: these answers echo
    the caller's trace id when it sent one, else carry none."""
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traced = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    async with _client(app) as client:
        asks = [
            lambda h: client.get("/v1/nothing", headers=h),
            lambda h: client.delete("/v1/models/genwire-gpt", headers=h),
        ]
        plain = [await ask({}) for ask in asks]
        echoed = [await ask(traced) for ask in asks]
        app.state.auth = RefusingAuth()
        plain.append(await client.post("/v1/completions", json={"prompt": "x"}))
        echoed.append(await client.post("/v1/completions", json={"prompt": "x"}, headers=traced))
    assert [a.status_code for a in plain] == [404, 405, 401]
    assert [a.headers.get("x-trace-id") for a in plain] == [None] * 3
    assert [a.headers.get("x-trace-id") for a in echoed] == [trace_id] * 3
    assert spans.get_finished_spans() == ()


async def test_an_answer_span_is_its_own_trace_linked_to_the_callers(
    app: FastAPI, spans: InMemorySpanExporter
) -> None:
    """In the caller's trace it would widen or fail the generation the monitor assembles."""
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    async with _client(app) as client:
        answer = await client.get("/v1/models", headers=headers)
    (span,) = spans.get_finished_spans()
    assert answer.headers["x-trace-id"] == f"{span.context.trace_id:032x}" != trace_id
    assert span.parent is None
    assert [f"{link.context.trace_id:032x}" for link in span.links] == [trace_id]


async def test_a_500_is_logged_under_the_trace_id_its_caller_gets(
    app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    """The caller is told the log has the details under ``x-trace-id``: the line must carry
    it (the services' log filter reads the current span, as here)."""
    caplog.handler.addFilter(_TraceFilter())
    app.state.models.fail = RuntimeError(SECRET)
    app.state.gateway.fail = RuntimeError(SECRET)
    async with _client(app) as client:
        answers = [
            await client.get("/v1/models"),
            await client.post("/v1/completions", json={"prompt": "x"}),
        ]
    logged = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert [getattr(r, "trace_id", None) for r in logged] == [
        a.headers["x-trace-id"] for a in answers
    ]


# -- Idempotency-Key ------------------------------------------------------------------------


async def test_a_malformed_idempotency_key_is_refused_naming_the_header(app: FastAPI) -> None:
    async with _client(app) as client:
        response = await client.post(
            "/v1/completions", json={"prompt": "x"}, headers={"Idempotency-Key": "has space"}
        )
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (ErrorCode.INVALID_REQUEST, "Idempotency-Key")


async def test_a_batchs_key_must_leave_room_for_the_prompt_suffix(app: FastAPI) -> None:
    longest = "k" * MAX_REQUEST_ID_CHARS
    async with _client(app) as client:
        one = await client.post(
            "/v1/completions", json={"prompt": "a"}, headers={"Idempotency-Key": longest}
        )
        batch = await client.post(
            "/v1/completions", json={"prompt": ["a", "b"]}, headers={"Idempotency-Key": longest}
        )
        fits = await client.post(
            "/v1/completions",
            json={"prompt": ["a", "b"]},
            headers={"Idempotency-Key": longest[:-2]},
        )
    assert one.status_code == 200 and one.headers["x-request-id"] == longest
    assert batch.status_code == 400
    error = batch.json()["error"]
    assert error["param"] == "Idempotency-Key"
    assert f"at most {MAX_REQUEST_ID_CHARS - 2}" in error["message"]
    assert fits.status_code == 200, fits.text
    assert [p.request_id for p in app.state.gateway.seen[-2:]] == [
        f"{longest[:-2]}-0",
        f"{longest[:-2]}-1",
    ]


def test_the_longest_request_id_is_the_patterns() -> None:
    assert re.fullmatch(REQUEST_ID_PATTERN, "k" * MAX_REQUEST_ID_CHARS)
    assert not re.fullmatch(REQUEST_ID_PATTERN, "k" * (MAX_REQUEST_ID_CHARS + 1))


# -- streamed usage -------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
async def test_with_include_usage_every_chunk_before_the_usage_chunk_says_null(
    app: FastAPI, route: str
) -> None:
    body: dict[str, Any] = (
        {"messages": [{"role": "user", "content": "x"}]}
        if "chat" in route
        else {"prompt": "x", "echo": True}
    )
    async with _client(app) as client:
        asked = await client.post(
            route,
            json={**body, "stream": True, "stream_options": {"include_usage": True}},
        )
        plain = await client.post(route, json={**body, "stream": True})
    *chunks, last, done = _events(asked.text)
    assert done == "[DONE]" and last["choices"] == [] and last["usage"]["total_tokens"] == 5
    assert len(chunks) >= 2 and all("usage" in c and c["usage"] is None for c in chunks)
    assert all("usage" not in c for c in _events(plain.text)[:-1])


# -- error codes and params as the caller sent them -----------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"prompt": [[]]}, ErrorCode.MISSING_PROMPT),
        ({"prompt": [[1, -1]]}, ErrorCode.OUT_OF_RANGE),
        ({"prompt": [1, -1]}, ErrorCode.OUT_OF_RANGE),
    ],
)
async def test_token_id_prompts_are_named_prompt(
    app: FastAPI, body: dict[str, Any], code: str
) -> None:
    async with _client(app) as client:
        response = await client.post("/v1/completions", json=body)
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, "prompt")


async def test_a_probes_500_is_logged_without_a_span(
    app: FastAPI, spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in a readiness check would otherwise export a span at every poll."""
    app.state.readiness_fails = True
    async with _client(app) as client:
        answers = [await client.get("/readyz") for _ in range(3)]
    assert [a.status_code for a in answers] == [500] * 3
    assert all("x-trace-id" not in a.headers for a in answers)
    assert spans.get_finished_spans() == ()
    assert len([r for r in caplog.records if r.exc_info]) == 3


async def test_with_tracing_off_a_500_carries_no_empty_trace_id(app: FastAPI) -> None:
    """A no-op tracer's span has no id: no ``x-trace-id: ""`` (the message points at it)."""
    app.state.runtime = types.SimpleNamespace(tracer=trace.NoOpTracer())
    app.state.models.fail = RuntimeError(SECRET)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with _client(app) as client:
        plain = await client.get("/v1/models")
        app.state.models.fail = None
        traced = await client.get(
            "/v1/models", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
        )
    assert plain.status_code == 500 and "x-trace-id" not in plain.headers
    assert traced.status_code == 200 and traced.headers["x-trace-id"] == trace_id
