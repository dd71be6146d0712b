"""The OpenAI-compatible HTTP transport: /v1/completions, /v1/chat/completions, /v1/models.

Thin: OpenAI bodies in and out (``openai``), ``Gateway`` does the work. A client that hangs
up cancels the generation downstream, streamed or not. A streamed answer starts only once its
first chunk (or its error) is known, so errors found before any text still get a real HTTP
status instead of an error event inside a 200 stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from opentelemetry import trace
from opentelemetry.trace import Span

from genwire.events import GenerationResult
from genwire.telemetry import semconv as sc
from genwire_gateway import openai
from genwire_gateway.errors import CANCELLED, GatewayError, http_status
from genwire_gateway.handlers import Chunk, Gateway
from genwire_gateway.models import ModelCatalog
from genwire_gateway.telemetry import (
    ENTRYPOINT_HTTP,
    GatewayMetrics,
    carrier_of,
    mark_error,
    start_server_span,
    trace_id_of,
)

IDEMPOTENCY_HEADER = "idempotency-key"
REQUEST_ID_HEADER = "x-request-id"
TRACE_ID_HEADER = "x-trace-id"
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}

T = TypeVar("T")


def _error_response(exc: GatewayError, headers: dict[str, str]) -> JSONResponse:
    status = http_status(exc.code)
    return JSONResponse(openai.error_body(exc.code, exc.message, status), status, headers)


async def _until_disconnected(request: Request) -> None:
    """Return when the client hangs up (the body is already read, so only that can come)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client hangs up first, cancel it (which cancels downstream)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise GatewayError("the client disconnected", code=CANCELLED)
    return task.result()


class _Handler:
    """One completions endpoint (plain or chat)."""

    def __init__(self, *, chat: bool) -> None:
        self.chat = chat
        self.route = "/v1/chat/completions" if chat else "/v1/completions"
        self.body_model = openai.ChatCompletionRequest if chat else openai.CompletionRequest

    async def __call__(self, request: Request) -> Response:
        gateway: Gateway = request.app.state.gateway
        metrics: GatewayMetrics = request.app.state.gateway_metrics
        started = time.perf_counter()
        span = start_server_span(
            request.app.state.runtime.tracer,
            f"POST {self.route}",
            entrypoint=ENTRYPOINT_HTTP,
            carrier=carrier_of(request.headers.items()),
            attributes={sc.HTTP_REQUEST_METHOD: "POST", sc.HTTP_ROUTE: self.route},
        )
        headers = {TRACE_ID_HEADER: trace_id_of(span)}
        code = "ok"
        streaming = False
        try:
            with trace.use_span(span, end_on_exit=False, record_exception=False):
                body = openai.parse_body(self.body_model, await request.body())
                prepared = gateway.prepare(
                    body.fields(),
                    request_id=request.headers.get(IDEMPOTENCY_HEADER) or None,
                    stream=body.stream,
                )
                span.set_attribute(sc.REQUEST_ID, prepared.request_id)
                headers[REQUEST_ID_HEADER] = prepared.request_id
                model = body.model or gateway.settings.default_model
                created = int(time.time())
                if not body.stream:
                    result = await _unless_disconnected(request, gateway.generate(prepared))
                    payload = self._response(result, created=created, model=model)
                    span.set_attribute(sc.HTTP_RESPONSE_STATUS_CODE, 200)
                    return JSONResponse(payload, headers=headers)
                chunks = gateway.stream(prepared).__aiter__()
                first = await _unless_disconnected(request, anext(chunks))
            streaming = True
            events = self._events(
                first, chunks, span, prepared.request_id, created, model, body.include_usage
            )
            span.set_attribute(sc.HTTP_RESPONSE_STATUS_CODE, 200)
            return StreamingResponse(
                self._finish(events, span, metrics, started),
                media_type="text/event-stream",
                headers={**headers, **SSE_HEADERS},
            )
        except GatewayError as exc:
            code = exc.code
            mark_error(span, exc.code, exc.message)
            span.set_attribute(sc.HTTP_RESPONSE_STATUS_CODE, http_status(exc.code))
            return _error_response(exc, headers)
        except asyncio.CancelledError:
            code = "cancelled"
            raise
        finally:
            if not streaming:
                span.end()
                metrics.observe(ENTRYPOINT_HTTP, self.route, code, time.perf_counter() - started)

    def _response(self, result: GenerationResult, *, created: int, model: str) -> dict[str, Any]:
        if self.chat:
            return openai.chat_response(result, created=created, model=model)
        return openai.completion_response(result, created=created, model=model)

    async def _events(
        self,
        first: Chunk,
        rest: AsyncIterator[Chunk],
        span: Span,
        request_id: str,
        created: int,
        model: str,
        include_usage: bool,
    ) -> AsyncIterator[bytes]:
        """SSE bytes: OpenAI chunks, an optional usage chunk, then ``[DONE]``."""
        chunk: Chunk | None = first
        role_sent = False
        try:
            while chunk is not None:
                if self.chat:
                    if chunk.text or not role_sent:
                        delta = {"content": chunk.text}
                        if not role_sent:
                            delta["role"] = "assistant"
                            role_sent = True
                        yield openai.sse(
                            openai.chat_chunk(request_id, created=created, model=model, delta=delta)
                        )
                    if chunk.final:
                        yield openai.sse(
                            openai.chat_chunk(
                                request_id,
                                created=created,
                                model=model,
                                delta={},
                                finish_reason=chunk.finish_reason,
                            )
                        )
                else:
                    yield openai.sse(
                        openai.completion_chunk(
                            request_id,
                            created=created,
                            model=model,
                            text=chunk.text,
                            finish_reason=chunk.finish_reason if chunk.final else None,
                        )
                    )
                if chunk.final:
                    if include_usage and chunk.usage is not None:
                        yield openai.sse(
                            openai.usage_chunk(
                                request_id,
                                chat=self.chat,
                                created=created,
                                model=model,
                                usage=chunk.usage,
                            )
                        )
                    break
                chunk = await anext(rest, None)
        except GatewayError as exc:  # the stream has started: the error becomes an event
            mark_error(span, exc.code, exc.message)
            yield openai.sse(openai.error_body(exc.code, exc.message, http_status(exc.code)))
        yield openai.SSE_DONE

    async def _finish(
        self,
        events: AsyncIterator[bytes],
        span: Span,
        metrics: GatewayMetrics,
        started: float,
    ) -> AsyncIterator[bytes]:
        """Relay ``events``; end the span and count the request when the stream ends."""
        code = "ok"
        try:
            async for event in events:
                yield event
        except asyncio.CancelledError:
            code = "cancelled"
            raise
        finally:
            span.end()
            metrics.observe(ENTRYPOINT_HTTP, self.route, code, time.perf_counter() - started)


def openai_router() -> APIRouter:
    """The /v1 routes; they expect ``app.state.gateway``, ``gateway_metrics`` and ``models``."""
    router = APIRouter()
    completions = _Handler(chat=False)
    chat = _Handler(chat=True)

    @router.post("/v1/completions", response_model=None)
    async def create_completion(request: Request) -> Response:
        return await completions(request)

    @router.post("/v1/chat/completions", response_model=None)
    async def create_chat_completion(request: Request) -> Response:
        return await chat(request)

    @router.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        catalog: ModelCatalog = request.app.state.models
        return openai.models_list(await catalog.names())

    return router
