"""The OpenAI-compatible HTTP transport: /v1/completions, /v1/chat/completions, /v1/models.

Thin: OpenAI bodies in and out (``openai``), ``Gateway`` does the work. A client that hangs
up cancels the generation downstream, streamed or not. A streamed answer starts only once its
first chunk (or its error) is known, so errors found before any text still get a real HTTP
status instead of an error event inside a 200 stream. A batch of prompts (``/v1/completions``)
is one pipeline request per prompt (ids ``<id>-<i>``), admitted together against the caller's
limits (all or none) and answered together; streamed, their chunks interleave. The call is one
trace: its SERVER span, and under it a span per prompt of a batch. Every error,
unknown routes and wrong methods included, has OpenAI's shape (``install_error_handlers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import anyio
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanContext, SpanKind, Tracer, format_trace_id
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from genwire.events import MAX_REQUEST_ID_CHARS, REQUEST_ID_PATTERN, GenerationResult, Usage
from genwire.request import MAX_REQUEST_BYTES, ErrorCode
from genwire.telemetry import semconv as sc
from genwire_gateway import openai
from genwire_gateway.errors import CANCELLED, REQUEST_TIMEOUT, GatewayError, http_status
from genwire_gateway.handlers import Chunk, Gateway, Prepared
from genwire_gateway.models import ModelCatalog
from genwire_gateway.telemetry import (
    ENTRYPOINT_HTTP,
    GatewayMetrics,
    RequestClock,
    answer_span,
    caller_of,
    carrier_of,
    mark_error,
    start_server_span,
    trace_id_of,
)

IDEMPOTENCY_HEADER = "idempotency-key"
IDEMPOTENCY_PARAM = "Idempotency-Key"
"""``error.param`` of a refused key: the header, as the caller wrote it."""
MAX_BODY_BYTES = MAX_REQUEST_BYTES
"""The longest body read: the most one request's JSON may have (the Kafka value's bound,
whose 413 a larger body would meet anyway; a batch's prompts share it)."""
UNEXPECTED_MESSAGE = "the gateway failed unexpectedly; its log has the details (x-trace-id)"
"""What a caller learns of a bug (500 ``internal``): nothing of its internals."""
REQUEST_ID_HEADER = "x-request-id"
TRACE_ID_HEADER = "x-trace-id"
SERVER_TIMING_HEADER = "server-timing"
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
METHOD_NOT_ALLOWED = "method_not_allowed"
"""Error code of a known route called with another method (405)."""
SHOULD_RETRY_HEADER = "x-should-retry"
NO_RETRY = frozenset({400, 401, 403, 404, 405, 409, 413, 422})
"""Statuses whose retry cannot succeed (the same request gets the same answer): they say
``x-should-retry: false``, which the OpenAI SDKs obey over their own rule (it retries 409, an
``idempotency_conflict``). The rest keep the SDKs' rule: 408, 429 (with ``Retry-After``) and
5xx are retried."""

T = TypeVar("T")
log = logging.getLogger(__name__)


def server_timing(results: Sequence[GenerationResult]) -> str:
    """A non-streamed answer's ``Server-Timing`` header (W3C): the model's own time for the
    request, ``model-queue`` (from the model taking it in to its decode loop admitting it) and
    ``model-compute`` (from there to its final response), in milliseconds; of a batch of
    prompts, the result that spent the longest there (the one the answer waited for). Empty
    when no result carries both (a model that does not report them)."""
    timed = [
        (t.triton_queue_ms, t.triton_compute_ms)
        for t in (r.timings for r in results)
        if t.triton_queue_ms is not None and t.triton_compute_ms is not None
    ]
    if not timed:
        return ""
    queue, compute = max(timed, key=lambda pair: pair[0] + pair[1])
    return f"model-queue;dur={queue:.3f}, model-compute;dur={compute:.3f}"


def _error_response(exc: GatewayError, headers: dict[str, str]) -> JSONResponse:
    status = http_status(exc.code)
    body = openai.error_body(exc.code, exc.message, status, getattr(exc, "param", None))
    return JSONResponse(body, status, headers)  # a 408 closes its connection: TraceIds


def install_error_handlers(app: FastAPI) -> None:
    """OpenAI's error shape for what FastAPI answers itself: unknown routes (404), wrong
    methods (405), bodies FastAPI refuses, any other HTTP error, and any exception nothing
    handled (500, ``CatchAll``); ``x-trace-id`` on every answer (``TraceIds``). Call it after
    adding the app's other middleware, which these wrap."""

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        if status == 404:
            code, message = "not_found", f"no route {request.method} {request.url.path}"
        elif status == 405:
            allowed = next((v for k, v in (exc.headers or {}).items() if k.lower() == "allow"), "")
            code = METHOD_NOT_ALLOWED
            message = f"{request.method} is not allowed on {request.url.path}" + (
                f" (allowed: {allowed})" if allowed else ""
            )
        else:
            code, message = "http_error", str(exc.detail)
        return JSONResponse(
            openai.error_body(code, message, status), status, headers=dict(exc.headers or {})
        )

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query"))
        message = "; ".join(str(e.get("msg", "")) for e in exc.errors()[:5]) or "invalid request"
        body = openai.error_body(ErrorCode.INVALID_REQUEST, message, 400, param or None)
        return JSONResponse(body, 400)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    # Added last, so they wrap the app's other middleware (an auth refusal gets a trace id).
    app.add_middleware(CatchAll)
    app.add_middleware(TraceIds)


class CatchAll:
    """Pure ASGI: an exception nothing handled becomes a 500 in OpenAI's shape (``internal``,
    a generic message: nothing of the internals), logged with its traceback. Once an answer
    has started, it cannot become another: the exception goes on to the server, which ends
    the connection and logs it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        arrived = time.time_ns()
        try:
            await self.app(scope, receive, watched)
        except Exception:
            if started:
                raise
            headers: dict[str, str] = {}
            # A probe's 500 too is logged, but makes no span (a poll each would bury traces).
            probe = scope["path"] in OPERATIONAL_PATHS
            span = None if probe else _answer_span(scope, 500, arrived)
            if span is not None and span.get_span_context().is_valid:  # tracing may be off
                headers[TRACE_ID_HEADER] = trace_id_of(span)  # the log line carries it too
            with trace.use_span(span or trace.INVALID_SPAN, end_on_exit=False):
                log.exception("unexpected error answering %s %s", scope["method"], scope["path"])
            body = openai.error_body(ErrorCode.INTERNAL, UNEXPECTED_MESSAGE, 500)
            await JSONResponse(body, 500, headers=headers)(scope, receive, send)


OPERATIONAL_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
"""Routes whose answers carry no ``x-trace-id``: polled by probes, a span each would bury
the traces that matter."""


REFUSALS = frozenset({401, 403, 405, 429})
"""Statuses of a request refused before any work (a key, a scope, a method, a rate): no span,
so that a flood of them costs a header parse and a lookup each (docs/security.md), not a span
export. (An unmatched path, 404 with no route, neither.)"""


class TraceIds:
    """Pure ASGI: every answer but the operational routes' carries ``x-trace-id``. The
    completions routes set it themselves (their request's SERVER span); any other answer of a
    route (``GET /v1/models``, feedback, a 500) gets a span of its own, from the request's
    arrival to the answer: a trace of its own, linked to the caller's ``traceparent`` (in the
    caller's trace it would widen or fail the request the monitor assembles from it).
    Refusals (401, 403, 429) and unknown routes (404, 405) get no span: they echo the
    caller's trace id when it sent a ``traceparent``, else carry none. A refusal no retry can
    change also says ``x-should-retry: false`` (``_with_retry_hint``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPERATIONAL_PATHS:
            await self.app(scope, receive, send)
            return
        arrived = time.time_ns()

        async def traced(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = _with_retry_hint(_with_trace_id(scope, message, arrived))
            await send(message)

        await self.app(scope, receive, traced)


def _with_trace_id(scope: Scope, message: Message, arrived_ns: int) -> Message:
    """``message`` (a response start) with ``x-trace-id``: its own, else a new span's (none
    for a refusal or an unknown route: the caller's, if it sent one)."""
    headers = list(message.get("headers", ()))
    if any(name.lower() == TRACE_ID_HEADER.encode() for name, _ in headers):
        return message
    status = message["status"]
    if status in REFUSALS or scope.get("route") is None:
        caller = _caller_context(scope)
        trace_id = caller.trace_id if caller is not None else None
    else:
        span = _answer_span(scope, status, arrived_ns)
        trace_id = span.get_span_context().trace_id if span is not None else None
        if not trace_id:  # tracing off (a no-op span): the caller's, as for a refusal
            caller = _caller_context(scope)
            trace_id = caller.trace_id if caller is not None else None
    if not trace_id:
        return message
    headers.append((TRACE_ID_HEADER.encode(), format_trace_id(trace_id).encode()))
    return {**message, "headers": headers}


def _with_retry_hint(message: Message) -> Message:
    """``message`` (a response start) with ``x-should-retry: false`` when its status is a
    permanent refusal (``NO_RETRY``) and it has no hint of its own; a 408 (a body that stalled)
    closes the connection, whichever route answered it: what is left of the body would be
    read as the next request."""
    if message["status"] == 408:
        headers = list(message.get("headers", ()))
        if not any(name.lower() == b"connection" for name, _ in headers):
            headers.append((b"connection", b"close"))
        return {**message, "headers": headers}
    if message["status"] not in NO_RETRY:
        return message
    headers = list(message.get("headers", ()))
    if any(name.lower() == SHOULD_RETRY_HEADER.encode() for name, _ in headers):
        return message
    headers.append((SHOULD_RETRY_HEADER.encode(), b"false"))
    return {**message, "headers": headers}


def _caller_context(scope: Scope) -> SpanContext | None:
    """The caller's span context, from its ``traceparent`` (None: it sent none valid)."""
    return caller_of(carrier_of((k.decode("latin-1"), v) for k, v in scope["headers"]))


def _answer_span(scope: Scope, status: int, arrived_ns: int) -> Span | None:
    """The span of an answer no handler traced (``answer_span``); None without a tracer."""
    state = getattr(scope.get("app"), "state", None)
    tracer = getattr(getattr(state, "runtime", None), "tracer", None)
    if tracer is None:  # an app without the runtime (not the gateway's)
        return None
    route = getattr(scope.get("route"), "path", None)
    method = scope["method"]
    return answer_span(
        tracer,
        f"{method} {route}" if route else method,  # unmatched paths: no name per path
        caller=_caller_context(scope),
        attributes={
            sc.HTTP_REQUEST_METHOD: method,
            sc.HTTP_RESPONSE_STATUS_CODE: status,
            **({sc.HTTP_ROUTE: route} if route else {}),
        },
        start_ns=arrived_ns,
    )


async def _until_disconnected(request: Request) -> None:
    """Return when the client hangs up (the body is already read, so only that can come)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


WORK_CANCEL_S = 1.0
"""How long a cancelled request's handler waits for its work's clean-up before it goes on."""


def _retrieved(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client hangs up first, cancel it (which cancels downstream)."""
    task = asyncio.ensure_future(work)
    task.add_done_callback(_retrieved)  # a cancelled one may still end with an error: not logged
    watcher = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        # Our own cancel (the server stopping): it ends the work too (whose clean-up, the
        # downstream cancels, comes first; bounded), and stays a cancel, not an answer that
        # blames the client.
        watcher.cancel()
        task.cancel()
        await asyncio.wait((task,), timeout=WORK_CANCEL_S)
        raise
    watcher.cancel()
    if not task.done():
        task.cancel()
        # Its clean-up (the downstream cancels) comes first, bounded as above: one that hangs
        # (the broker down) goes on alone; the handler answers. A cancel of ours raises.
        await asyncio.wait((task,), timeout=WORK_CANCEL_S)
        raise GatewayError("the client disconnected", code=CANCELLED)
    return task.result()


async def _all(works: Sequence[Awaitable[T]]) -> list[T]:
    """Await every one; the first failure cancels the others (which cancels them downstream)."""
    if len(works) == 1:  # one prompt (nearly every call): no task of its own, no gather
        return [await works[0]]
    tasks = [asyncio.ensure_future(w) for w in works]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _merge(streams: Sequence[AsyncIterator[Chunk]]) -> AsyncIterator[tuple[int, Chunk]]:
    """The chunks of several streams as they come, each with its stream's position."""
    if len(streams) == 1:
        async with _closing(streams[0]) as only:
            async for chunk in only:
                yield 0, chunk
        return
    queue: asyncio.Queue[tuple[int, Chunk | Exception | None]] = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[Chunk]) -> None:
        try:
            async with _closing(stream) as chunks:
                async for chunk in chunks:
                    await queue.put((i, chunk))
            await queue.put((i, None))
        except Exception as exc:
            await queue.put((i, exc))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    remaining = len(streams)
    try:
        while remaining:
            i, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def _closing(stream: AsyncIterator[Chunk]) -> AsyncIterator[AsyncIterator[Chunk]]:
    """``stream``, closed (its ``finally`` run: a cancel downstream) when left early."""
    try:
        yield stream
    finally:
        await _aclose(stream)


async def _aclose(items: AsyncIterable[Any]) -> None:
    """Close ``items`` (run its ``finally``) if it is a generator; no-op once it has ended."""
    close = getattr(items, "aclose", None)
    if close is not None:
        await close()


@contextlib.contextmanager
def _current(span: Span) -> Iterator[Span]:
    """``span`` current for a block; an exception leaves it unmarked (the callers record the
    error's code and message themselves: never an exception's text, which may quote content)."""
    with trace.use_span(
        span, end_on_exit=False, record_exception=False, set_status_on_exception=False
    ) as current:
        yield current


async def _stepped(span: Span, items: AsyncIterator[T]) -> AsyncIterator[T]:
    """``items`` with ``span`` current while each is made and while they are closed.

    A streamed answer's steps run as the server iterates the response, after the handler
    returned, where no span is current: what they record or publish (captured content, the
    usage event, an abandoned stream's cancel) would start traces of their own. Never current
    across a ``yield``: the consumer's context is its own (and a span attached there could
    not be detached). The context is built once and attached per step (per chunk: a tenth of
    ``use_span``'s cost)."""
    ctx = trace.set_span_in_context(span)
    try:
        while True:
            token = otel_context.attach(ctx)
            try:
                item = await anext(items)
            except StopAsyncIteration:
                return
            finally:
                otel_context.detach(token)
            yield item
    finally:
        token = otel_context.attach(ctx)
        try:
            await _aclose(items)
        finally:
            otel_context.detach(token)


class _ClosingStream(StreamingResponse):
    """A streamed answer that is closed and settled when the response ends, however it ended.

    Starlette leaves a body suspended when the client leaves while a chunk is being sent (a
    slow client's full socket; ``send`` raising on newer servers), and never starts one whose
    first ``send`` failed: until the garbage collector found it, the abandoned work was not
    cancelled, its span not ended, the call not counted. The close is shielded (the
    response's own cancellation must not cut it) and bounded; ``settle`` (idempotent) then
    ends what a body that never ran could not."""

    def __init__(self, content: AsyncIterator[bytes], settle: _Settle, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._settle = settle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(WORK_CANCEL_S):
                try:
                    if not getattr(self.body_iterator, "ag_running", False):
                        await _aclose(self.body_iterator)
                    await self._settle(left=True)
                except Exception:
                    log.exception("closing an abandoned stream failed")


def _prompt_span(tracer: Tracer, parent: Span, name: str, request_id: str) -> Span:
    """The span of one prompt of a batch, under the call's SERVER span: the prompts share the
    call's trace, each has its request id on a span of its own. INTERNAL, without
    ``genwire.entrypoint``: the monitor counts neither a request nor gateway time of it."""
    return tracer.start_span(
        name,
        context=trace.set_span_in_context(parent),
        kind=SpanKind.INTERNAL,
        attributes={sc.STAGE: sc.STAGE_GATEWAY, sc.REQUEST_ID: request_id},
    )


def _mark(span: Span, exc: BaseException) -> None:
    """Record on ``span`` why its work failed (code and message, or nothing of a bug's text)."""
    if isinstance(exc, GatewayError):
        mark_error(span, exc.code, exc.message)
    elif isinstance(exc, Exception):
        mark_error(span, ErrorCode.INTERNAL, UNEXPECTED_MESSAGE)


async def _generated(opened: Callable[[], Span], work: Callable[[], Awaitable[T]]) -> T:
    """``work()`` with a prompt's span (``opened()``, started when the work starts: work that
    never starts leaves no span open) current; the span ends with it."""
    span = opened()
    try:
        with _current(span):
            return await work()
    except Exception as exc:
        _mark(span, exc)
        raise
    finally:
        span.end()


async def _streamed(
    opened: Callable[[], Span], stream: AsyncIterator[Chunk]
) -> AsyncIterator[Chunk]:
    """``stream`` with a prompt's span (``opened()``, started with the first step) current at
    each step; the span ends with it."""
    span = opened()
    try:
        async with _closing(_stepped(span, stream)) as chunks:
            async for chunk in chunks:
                yield chunk
    except Exception as exc:
        _mark(span, exc)
        raise
    finally:
        span.end()


@dataclass
class _Outcome:
    """How a streamed answer ended: ``_events`` sets the code of the error event it sent,
    ``_settle`` counts the request with it (a 200 stream may still have failed), once."""

    code: str = "ok"
    settled: bool = False


class _Settle(Protocol):
    """``_Handler._settle`` bound to one answer: ``left`` when its body never started."""

    def __call__(self, *, left: bool = False) -> Awaitable[None]: ...


def _batch_ids(key: str | None, count: int) -> Sequence[str | None]:
    """The request ids of a batch of ``count`` prompts named by an ``Idempotency-Key``: the
    key itself for one prompt, ``<key>-<i>`` for prompt ``i`` of a batch (each must be a
    request id, so a batch's key leaves room for its suffix); None: unnamed."""
    if key is None:
        return [None] * count
    if re.fullmatch(REQUEST_ID_PATTERN, key) is None:
        raise GatewayError(
            f"the Idempotency-Key header must be 1-{MAX_REQUEST_ID_CHARS} letters, digits, "
            "'.', '_', ':' or '-', starting with a letter or digit",
            code=ErrorCode.INVALID_REQUEST,
            param=IDEMPOTENCY_PARAM,
        )
    if count == 1:
        return [key]
    ids = [f"{key}-{i}" for i in range(count)]
    if re.fullmatch(REQUEST_ID_PATTERN, ids[-1]) is None:  # the longest: too long
        room = MAX_REQUEST_ID_CHARS - len(f"-{count - 1}")
        raise GatewayError(
            f"the Idempotency-Key header is {len(key)} characters; a batch of {count} prompts "
            f"names its requests <key>-<i>, which must fit in {MAX_REQUEST_ID_CHARS}, so its "
            f"key may have at most {room}",
            code=ErrorCode.INVALID_REQUEST,
            param=IDEMPOTENCY_PARAM,
        )
    return ids


PROMPT_PARAMS = frozenset({"prompt", "prompt_token_ids"})


def _prepared(
    gateway: Gateway,
    fields: dict[str, Any],
    prompts: Sequence[dict[str, Any]],
    ids: Sequence[str | None],
    *,
    stream: bool,
) -> list[Prepared]:
    """Each prompt's request, validated; a batch's refusal names the prompt at fault
    (``prompt[i]``: the same message for the i-th of 64 prompts would not say which)."""
    batch = []
    for i, (prompt, request_id) in enumerate(zip(prompts, ids, strict=True)):
        try:
            batch.append(
                gateway.prepare({**fields, **prompt}, request_id=request_id, stream=stream)
            )
        except GatewayError as exc:
            if len(prompts) == 1:
                raise
            param = f"prompt[{i}]" if exc.param in PROMPT_PARAMS else exc.param
            raise GatewayError(f"prompt[{i}]: {exc.message}", code=exc.code, param=param) from None
    return batch


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused (413 ``request_too_large``) as soon as it is known to be
    over ``limit`` bytes: a ``Content-Length`` over it before anything is read, a chunked
    body as soon as what arrived passes it (never held whole first). One that has not all
    arrived within the gateway's ``body_read_timeout_s`` is refused too (408
    ``request_timeout``): the request's own deadline starts only once it is read, and a
    stalled client must not hold its connection and span open for ever."""
    timeout_s = _body_read_timeout(request)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    pieces: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for piece in request.stream():
                size += len(piece)
                if size > limit:
                    raise _too_large(limit)
                pieces.append(piece)
    except ClientDisconnect:  # gone before its body arrived: no bug, nothing to answer
        raise GatewayError("the client disconnected", code=CANCELLED) from None
    except TimeoutError:
        raise GatewayError(
            f"the request body did not arrive within {timeout_s:g} s "
            f"({size} bytes of {declared or 'a chunked body'} came)",
            code=REQUEST_TIMEOUT,
        ) from None
    return b"".join(pieces)


def _body_read_timeout(request: Request) -> float | None:
    """The app's gateway's ``body_read_timeout_s`` (None, no bound: an app without one)."""
    gateway = getattr(request.app.state, "gateway", None)
    return getattr(getattr(gateway, "settings", None), "body_read_timeout_s", None)


def _too_large(limit: int) -> GatewayError:
    return GatewayError(
        f"the body is over {limit} bytes, the most one request's JSON may have",
        code=ErrorCode.REQUEST_TOO_LARGE,
    )


class _Handler:
    """One completions endpoint (plain or chat)."""

    def __init__(self, *, chat: bool) -> None:
        self.chat = chat
        self.route = "/v1/chat/completions" if chat else "/v1/completions"
        self.body_model = openai.ChatCompletionRequest if chat else openai.CompletionRequest
        self.prompt_name = f"POST {self.route} prompt"
        """The span name of one prompt of a batch (``_prompt_span``)."""

    async def __call__(self, request: Request) -> Response:
        gateway: Gateway = request.app.state.gateway
        metrics: GatewayMetrics = request.app.state.gateway_metrics
        tracer: Tracer = request.app.state.runtime.tracer
        started = time.perf_counter()
        span = start_server_span(
            tracer,
            f"POST {self.route}",
            entrypoint=ENTRYPOINT_HTTP,
            carrier=carrier_of(request.headers.items()),
            attributes={sc.HTTP_REQUEST_METHOD: "POST", sc.HTTP_ROUTE: self.route},
        )
        headers = {TRACE_ID_HEADER: trace_id_of(span)}
        code = "ok"
        streaming = False
        clocks: list[RequestClock] = []
        body: Any = None
        try:
            with trace.use_span(span, end_on_exit=False, record_exception=False):
                raw = await read_body(request, MAX_BODY_BYTES)
                body = openai.parse_body(self.body_model, raw)
                fields = body.fields()
                prompts: list[dict[str, Any]] = body.prompts() if not self.chat else [{}]
                key = request.headers.get(IDEMPOTENCY_HEADER) or None
                stream = bool(body.stream)
                ids = _batch_ids(key, len(prompts))
                batch = _prepared(gateway, fields, prompts, ids, stream=stream)
                batch = await gateway.admit(batch)  # a batch: all its prompts or none
                span.set_attribute(sc.REQUEST_ID, batch[0].request_id)
                headers[REQUEST_ID_HEADER] = batch[0].request_id
                model = body.model or gateway.settings.default_model
                created = int(time.time())
                echo = (
                    [p.get("prompt", "") for p in prompts] if getattr(body, "echo", False) else []
                )
                clocks = [metrics.clock(ENTRYPOINT_HTTP) for _ in batch]
                if not stream:
                    works = (
                        [gateway.generate(batch[0])]
                        if len(batch) == 1  # the SERVER span is the request's own
                        else [
                            _generated(
                                functools.partial(
                                    _prompt_span, tracer, span, self.prompt_name, p.request_id
                                ),
                                functools.partial(gateway.generate, p),
                            )
                            for p in batch
                        ]
                    )
                    results = await _unless_disconnected(request, _all(works))
                    for clock, result in zip(clocks, results, strict=True):
                        clock.finish(result, unary=True)
                    payload = self._response(
                        results, created=created, model=model, echo=echo, body=body
                    )
                    span.set_attribute(sc.HTTP_RESPONSE_STATUS_CODE, 200)
                    timing = server_timing(results)
                    if timing:
                        headers[SERVER_TIMING_HEADER] = timing
                    return JSONResponse(payload, headers=headers)
                streams = (
                    [gateway.stream(batch[0])]
                    if len(batch) == 1
                    else [
                        _streamed(
                            functools.partial(
                                _prompt_span, tracer, span, self.prompt_name, p.request_id
                            ),
                            gateway.stream(p),
                        )
                        for p in batch
                    ]
                )
                # Its steps after the first run as Starlette iterates the response, outside
                # this block: each makes the SERVER span current again (_stepped).
                chunks = _stepped(span, _merge(streams))
                first = await _unless_disconnected(request, anext(chunks))
            streaming = True
            outcome = _Outcome()
            events = self._events(
                first, chunks, span, batch, created, model, body, echo, clocks, outcome
            )
            span.set_attribute(sc.HTTP_RESPONSE_STATUS_CODE, 200)
            settle = functools.partial(
                self._settle, (events, chunks), outcome, span, metrics, started, clocks
            )
            return _ClosingStream(
                self._finish(events, outcome, settle),
                settle,
                media_type="text/event-stream",
                headers={**headers, **SSE_HEADERS},
            )
        except GatewayError as exc:
            code = exc.code
            if body is not None:
                exc.param = body.caller_param(exc.param)
            mark_error(span, exc.code, exc.message)
            span.set_attribute(sc.HTTP_RESPONSE_STATUS_CODE, http_status(exc.code))
            return _error_response(exc, headers)
        except asyncio.CancelledError:
            code = "cancelled"
            raise
        except Exception:  # a bug: OpenAI's shape, the ids, a generic message; logged whole
            with trace.use_span(span, end_on_exit=False):  # the log line names x-trace-id
                log.exception("unexpected error answering POST %s", self.route)
            code = ErrorCode.INTERNAL
            mark_error(span, code, UNEXPECTED_MESSAGE)
            span.set_attribute(sc.HTTP_RESPONSE_STATUS_CODE, 500)
            return _error_response(GatewayError(UNEXPECTED_MESSAGE, code=code), headers)
        finally:
            if not streaming:
                for clock in clocks:
                    clock.finish(None)
                span.end()
                metrics.observe(ENTRYPOINT_HTTP, self.route, code, time.perf_counter() - started)

    def _response(
        self,
        results: list[GenerationResult],
        *,
        created: int,
        model: str,
        echo: list[str],
        body: Any,
    ) -> dict[str, Any]:
        if self.chat:
            return openai.chat_response(
                results[0], created=created, model=model, logprobs=body.wants_logprobs
            )
        return openai.completion_response(
            results, created=created, model=model, echo=echo, logprobs=body.wants_logprobs
        )

    def _piece(
        self,
        request_id: str,
        *,
        created: int,
        model: str,
        index: int,
        text: str,
        chunk: Chunk | None,
        shift: int,
        wants_logprobs: bool,
        usage_null: bool,
        role: bool = False,
    ) -> list[bytes]:
        """The SSE events of one piece of one choice (``usage_null``: ``include_usage`` asked
        for a usage chunk last, so these say ``"usage": null``)."""
        lps = chunk.logprobs if chunk is not None else None
        reason = chunk.finish_reason if chunk is not None else None
        if not self.chat:
            logprobs = openai.completion_logprobs(lps or [], shift) if wants_logprobs else None
            return [
                openai.sse(
                    openai.completion_chunk(
                        request_id,
                        created=created,
                        model=model,
                        text=text,
                        finish_reason=reason,
                        index=index,
                        logprobs=logprobs,
                        usage_null=usage_null,
                    )
                )
            ]
        out = []
        if text or role or lps:
            delta = {"content": text}
            if role:
                delta["role"] = "assistant"
            logprobs = openai.chat_logprobs(lps or []) if wants_logprobs else None
            out.append(
                openai.sse(
                    openai.chat_chunk(
                        request_id,
                        created=created,
                        model=model,
                        delta=delta,
                        index=index,
                        logprobs=logprobs,
                        usage_null=usage_null,
                    )
                )
            )
        if reason is not None:
            out.append(
                openai.sse(
                    openai.chat_chunk(
                        request_id,
                        created=created,
                        model=model,
                        delta={},
                        finish_reason=reason,
                        index=index,
                        usage_null=usage_null,
                    )
                )
            )
        return out

    async def _events(
        self,
        first: tuple[int, Chunk],
        rest: AsyncIterator[tuple[int, Chunk]],
        span: Span,
        batch: list[Prepared],
        created: int,
        model: str,
        body: Any,
        echo: list[str],
        clocks: list[RequestClock],
        outcome: _Outcome,
    ) -> AsyncIterator[bytes]:
        """SSE bytes: OpenAI chunks (echoed prompts first), an optional usage chunk, then
        ``[DONE]``; an error after the first chunk is an error event, its code in
        ``outcome``."""
        request_id = batch[0].request_id
        n = body.choices_per_prompt
        wants = body.wants_logprobs
        role_sent: set[int] = set()
        usages: list[Usage] = []
        item: tuple[int, Chunk] | None = first
        try:
            for p, prompt in enumerate(echo):  # echo: the prompt is each choice's first text
                for c in range(n):
                    for event in self._piece(
                        request_id,
                        created=created,
                        model=model,
                        index=p * n + c,
                        text=prompt,
                        chunk=None,
                        shift=0,
                        wants_logprobs=wants,
                        usage_null=body.include_usage,
                    ):
                        yield event
            while item is not None:
                p, chunk = item
                index = p * n + chunk.choice
                if chunk.text or chunk.logprobs:
                    clocks[p].piece(len(chunk.logprobs) if chunk.logprobs else 1, chunk.choice)
                role = self.chat and index not in role_sent
                role_sent.add(index)
                for event in self._piece(
                    request_id,
                    created=created,
                    model=model,
                    index=index,
                    text=chunk.text,
                    chunk=chunk,
                    shift=len(echo[p]) if p < len(echo) else 0,
                    wants_logprobs=wants,
                    usage_null=body.include_usage,
                    role=role,
                ):
                    yield event
                if chunk.final:
                    clocks[p].finish(chunk.result)
                    if chunk.usage is not None:
                        usages.append(chunk.usage)
                item = await anext(rest, None)
            if body.include_usage:
                yield openai.sse(
                    openai.usage_chunk(
                        request_id,
                        chat=self.chat,
                        created=created,
                        model=model,
                        usage=openai.total_usage(usages),
                    )
                )
        except GatewayError as exc:  # the stream has started: the error becomes an event
            outcome.code = exc.code
            mark_error(span, exc.code, exc.message)
            status = http_status(exc.code)
            param = body.caller_param(exc.param)
            yield openai.sse(openai.error_body(exc.code, exc.message, status, param))
        except Exception:  # a bug: the caller still gets an error event and the stream's end
            outcome.code = ErrorCode.INTERNAL
            with trace.use_span(span, end_on_exit=False):  # the log line names x-trace-id
                log.exception("unexpected error streaming %s %s", self.route, request_id)
            mark_error(span, ErrorCode.INTERNAL, UNEXPECTED_MESSAGE)
            yield openai.sse(openai.error_body(ErrorCode.INTERNAL, UNEXPECTED_MESSAGE, 500))
        yield openai.SSE_DONE

    async def _finish(
        self, events: AsyncIterator[bytes], outcome: _Outcome, settle: _Settle
    ) -> AsyncIterator[bytes]:
        """Relay ``events``; when the stream ends, ``settle`` it with the code it ended with
        (``outcome``: an error event's)."""
        try:
            async for event in events:
                yield event
        except (asyncio.CancelledError, GeneratorExit):  # the client went (or the server)
            if outcome.code == "ok":  # an error already answered stays the outcome
                outcome.code = "cancelled"
            raise
        finally:
            await settle()

    async def _settle(
        self,
        streams: tuple[AsyncIterator[bytes], AsyncIterator[tuple[int, Chunk]]],
        outcome: _Outcome,
        span: Span,
        metrics: GatewayMetrics,
        started: float,
        clocks: list[RequestClock],
        *,
        left: bool = False,
    ) -> None:
        """End a streamed answer, once: its streams closed (their clean-up inside the span's
        life), its clocks and span ended, the call counted. ``streams``: the SSE events and the
        chunks under them (closed by the events' own end, unless those never started: then
        here, so that the abandoned work is cancelled now). ``left``: the response ended before
        the stream did (its body never started: the caller is gone)."""
        if outcome.settled:
            return
        outcome.settled = True
        if left and outcome.code == "ok":
            outcome.code = "cancelled"
        try:
            for stream in streams:
                await _aclose(stream)  # a stream closed already: nothing
        finally:
            for clock in clocks:
                clock.finish(None)
            span.end()
            elapsed = time.perf_counter() - started
            metrics.observe(ENTRYPOINT_HTTP, self.route, outcome.code, elapsed)


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

    # HEAD too (as auth admits it): the server sends a HEAD answer's headers only.
    @router.api_route("/v1/models", methods=["GET", "HEAD"])
    async def list_models(request: Request) -> dict[str, Any]:
        catalog: ModelCatalog = request.app.state.models
        return {"object": "list", "data": await catalog.served()}  # models.py (lifecycle)

    @router.api_route("/v1/models/{model_id:path}", methods=["GET", "HEAD"], response_model=None)
    async def get_model(request: Request, model_id: str) -> dict[str, Any] | JSONResponse:
        catalog: ModelCatalog = request.app.state.models
        found = await catalog.find(model_id)
        if found is None:
            missing = GatewayError(
                f"the model {model_id!r} is not served (see GET /v1/models)",
                code=ErrorCode.MODEL_NOT_FOUND,
            )
            return _error_response(missing, {})
        return found

    return router
