"""Feedback on a generation: ``POST /v1/feedback`` and the gRPC ``FeedbackService.Feedback``.

Both take a request id plus a rating, label and/or correction (``genwire.feedback.
FeedbackBody``), look the request up (its stored result names the model, version and arm;
the request may also be waited for here or claimed by the pipeline), and publish a
``FeedbackEvent`` on ``genwire.feedback`` keyed by the request id, acknowledged by the broker
before the answer. The id may also be an OpenAI response's ``id`` (``cmpl-<request id>``,
``chatcmpl-<request id>``): the event names the request id inside it. A request id that cannot
be found is accepted and marked ``known: false`` (its result may have expired; the export keeps
it, flagged). Bad input is a 400 in OpenAI's error shape / INVALID_ARGUMENT; nothing is
published.

Traces: like every answer that is not a generation, a feedback call is the root of a trace of
its own, linked to the caller's ``traceparent`` (in the caller's trace the monitor would count
it into the generation it followed), on an INTERNAL span without ``genwire.entrypoint``
(neither a request nor gateway time to the monitor). Over HTTP and gRPC alike the handler
makes that span (``telemetry.own_trace_span``), current while the feedback is looked up and
published (the event's ``traceparent`` is in that trace), and counts the call in
``genwire_requests_total`` (method ``/v1/feedback`` or ``Feedback``) like the other methods.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from opentelemetry import trace
from opentelemetry.trace import Span, Tracer
from pydantic import ValidationError

from genwire.events import REQUEST_ID_PATTERN
from genwire.feedback import FeedbackBody, FeedbackEvent
from genwire.kafka import EventProducer
from genwire.proto.v1 import feedback_pb2, feedback_pb2_grpc
from genwire.request import ErrorCode
from genwire.telemetry import semconv as sc
from genwire_gateway import openai
from genwire_gateway.errors import GatewayError, grpc_status, http_status
from genwire_gateway.grpc_service import (
    FEEDBACK_SERVICE_NAME,
    UNEXPECTED,
    end_call,
    refuse_unknown_fields,
    unexpected,
)
from genwire_gateway.handlers import Gateway
from genwire_gateway.http_api import MAX_BODY_BYTES, TRACE_ID_HEADER, UNEXPECTED_MESSAGE, read_body
from genwire_gateway.telemetry import (
    ENTRYPOINT_GRPC,
    ENTRYPOINT_HTTP,
    GatewayMetrics,
    caller_of,
    carrier_of,
    mark_error,
    own_trace_span,
    trace_id_of,
)

FEEDBACK_SERVICE = FEEDBACK_SERVICE_NAME
FEEDBACK_METHOD = "Feedback"

log = logging.getLogger(__name__)


def _explain(exc: ValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    return "; ".join(
        (".".join(str(p) for p in e["loc"]) + ": " if e["loc"] else "") + e["msg"]
        for e in exc.errors()
    ), param


def candidate_ids(given: str) -> list[str]:
    """The request ids ``given`` may name: itself, then, for an OpenAI response's ``id``
    (``cmpl-<id>``, ``chatcmpl-<id>``; of a batch of prompts, prompt 0's), the request id
    inside it. As given first: a caller's own id may start like a response's."""
    for prefix in (openai.CHAT_PREFIX, openai.COMPLETION_PREFIX):
        inner = given.removeprefix(prefix)
        if inner != given and re.fullmatch(REQUEST_ID_PATTERN, inner):
            return [given, inner]
    return [given]


async def _look_up(gateway: Gateway, request_id: str) -> tuple[bool, dict[str, str]]:
    """(known, what its stored result says of the model) of one request id."""
    try:
        stored = await gateway.store.get(request_id)
    except Exception as exc:  # Redis down: the feedback still counts, unmarked as found
        log.warning("Redis lookup of %s failed: %s", request_id, exc)
        stored = None
    if stored is not None:
        return True, {
            "model": stored.model,
            "model_version": stored.model_version,
            "arm": stored.arm,
        }
    return await gateway.known(request_id), {}


async def submit(
    gateway: Gateway, body: FeedbackBody, *, entrypoint: str, principal: str = ""
) -> FeedbackEvent:
    """Look the request up (``candidate_ids``: the first found is the one; none found, the
    last, a response id's request) and publish its feedback (acknowledged)."""
    for request_id in candidate_ids(body.request_id):
        known, server = await _look_up(gateway, request_id)
        if known:
            break
    body = body.model_copy(update={"request_id": request_id})
    event = FeedbackEvent.of(
        body, known=known, entrypoint=entrypoint, principal=principal, **server
    )
    producer: EventProducer = gateway.producer
    try:
        await producer.publish_and_wait(event)
    except Exception as exc:
        raise GatewayError(
            f"the feedback could not be stored: {exc}", code=ErrorCode.UNAVAILABLE
        ) from None
    return event


def answer(event: FeedbackEvent) -> dict[str, Any]:
    """The reply body."""
    return {
        "id": event.feedback_id,
        "object": "feedback",
        "request_id": event.request_id,
        "known": event.known,
        "model": event.model or None,
        "model_version": event.model_version or None,
    }


def _principal() -> str:
    """The API key's name of the call being handled ("" when auth is off)."""
    try:
        from genwire_gateway.auth import current_principal
    except ImportError:  # a gateway without keys
        return ""
    principal = current_principal()
    return principal.name if principal is not None else ""


FEEDBACK_ROUTE = "/v1/feedback"


def feedback_router() -> APIRouter:
    """``POST /v1/feedback`` (expects ``app.state.gateway``; ``app.state.runtime``'s tracer
    and ``app.state.gateway_metrics`` where the app has them, as the gateway's does)."""
    router = APIRouter()

    @router.post(FEEDBACK_ROUTE, response_model=None)
    async def post_feedback(request: Request) -> JSONResponse:
        started = time.perf_counter()
        state = request.app.state
        runtime_tracer = getattr(getattr(state, "runtime", None), "tracer", None)
        tracer = runtime_tracer or trace.get_tracer("genwire.gateway")
        metrics: GatewayMetrics | None = getattr(state, "gateway_metrics", None)
        span = own_trace_span(
            tracer,
            f"POST {FEEDBACK_ROUTE}",
            caller=caller_of(carrier_of(request.headers.items())),
            attributes={sc.HTTP_REQUEST_METHOD: "POST", sc.HTTP_ROUTE: FEEDBACK_ROUTE},
        )
        # Set here, so the middleware (TraceIds) makes no second span for this answer.
        headers = {TRACE_ID_HEADER: trace_id_of(span)} if span.get_span_context().is_valid else {}
        code, status = "ok", 200
        try:
            # Current while it works: the publish joins the call's trace.
            with trace.use_span(
                span, end_on_exit=False, record_exception=False, set_status_on_exception=False
            ):
                event = await _post(request.app.state.gateway, request)
            return JSONResponse(answer(event), headers=headers)
        except GatewayError as exc:
            code, status = exc.code, http_status(exc.code)
            mark_error(span, exc.code, exc.message)
            body = openai.error_body(exc.code, exc.message, status, exc.param)
            return JSONResponse(body, status, headers=headers)
        except asyncio.CancelledError:
            code = "cancelled"
            raise
        except Exception:  # a bug: OpenAI's shape, a generic message; logged whole
            with trace.use_span(span, end_on_exit=False):  # the log line names the trace
                log.exception("unexpected error answering POST %s", FEEDBACK_ROUTE)
            code, status = ErrorCode.INTERNAL, 500
            mark_error(span, code, UNEXPECTED_MESSAGE)
            body = openai.error_body(code, UNEXPECTED_MESSAGE, status)
            return JSONResponse(body, status, headers=headers)
        finally:
            span.set_attribute(sc.HTTP_RESPONSE_STATUS_CODE, status)
            span.end()
            if metrics is not None:
                elapsed = time.perf_counter() - started
                metrics.observe(ENTRYPOINT_HTTP, FEEDBACK_ROUTE, code, elapsed)

    return router


async def _post(gateway: Gateway, request: Request) -> FeedbackEvent:
    """Read, validate and submit one HTTP feedback; GatewayError for the caller's errors."""
    raw = await read_body(request, MAX_BODY_BYTES)
    try:
        body = FeedbackBody.model_validate_json(raw)
    except ValidationError as exc:
        message, param = _explain(exc)
        raise GatewayError(message, code=ErrorCode.INVALID_REQUEST, param=param) from None
    return await submit(gateway, body, entrypoint=ENTRYPOINT_HTTP, principal=_principal())


def _metadata(context: grpc.aio.ServicerContext[Any, Any]) -> Sequence[tuple[str, str | bytes]]:
    """The call's metadata (none from a context with no call behind it: a direct call's)."""
    read = getattr(context, "invocation_metadata", None)
    return (read() or ()) if read is not None else ()


class FeedbackServicer(feedback_pb2_grpc.FeedbackServiceServicer):
    """The gRPC ``FeedbackService``: each call in a span of its own (the module's *Traces*),
    counted in ``genwire_requests_total`` (``metrics``; None: not counted)."""

    def __init__(
        self,
        gateway: Gateway,
        tracer: Tracer | None = None,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self._gateway = gateway
        # The global tracer is the runtime's in the gateway (it sets it), unless one is given.
        self._tracer = tracer if tracer is not None else trace.get_tracer("genwire.gateway")
        self._metrics = metrics

    def _span(self, context: grpc.aio.ServicerContext[Any, Any]) -> Span:
        """The call's span: a root linked to the caller's trace, not a child in it."""
        return own_trace_span(
            self._tracer,
            f"{FEEDBACK_SERVICE}/{FEEDBACK_METHOD}",
            caller=caller_of(carrier_of(_metadata(context))),
            attributes={
                sc.RPC_SYSTEM: "grpc",
                sc.RPC_SERVICE: FEEDBACK_SERVICE,
                sc.RPC_METHOD: FEEDBACK_METHOD,
            },
        )

    async def Feedback(
        self, request: feedback_pb2.FeedbackRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> feedback_pb2.FeedbackReply:
        """Validate, look up, publish; INVALID_ARGUMENT / UNAVAILABLE on failure."""
        started = time.perf_counter()
        span = self._span(context)
        code = "ok"
        try:
            # Current while it works: the publish joins the call's trace.
            with trace.use_span(
                span, end_on_exit=False, record_exception=False, set_status_on_exception=False
            ):
                return await self._feedback(request)
        except GatewayError as exc:
            code = exc.code
            mark_error(span, exc.code, exc.message)
            await context.abort(grpc_status(exc.code), exc.message)
            raise AssertionError("unreachable: abort raises") from None
        except asyncio.CancelledError:
            code = "cancelled"
            raise
        except Exception as exc:  # a bug, not a caller error: grpc answers UNKNOWN; count it
            code = UNEXPECTED
            mark_error(span, code, unexpected(exc))
            raise
        finally:
            end_call(span, self._metrics, FEEDBACK_METHOD, code, started)

    async def _feedback(self, request: feedback_pb2.FeedbackRequest) -> feedback_pb2.FeedbackReply:
        refuse_unknown_fields(request)  # every field honoured or refused (docs/api.md)
        fields: dict[str, Any] = {"request_id": request.request_id}
        for name in ("rating", "label", "correction", "comment"):
            if request.HasField(name):
                fields[name] = getattr(request, name)
        try:
            body = FeedbackBody.model_validate(fields)
        except ValidationError as exc:
            raise GatewayError(_explain(exc)[0], code=ErrorCode.INVALID_REQUEST) from None
        event = await submit(
            self._gateway, body, entrypoint=ENTRYPOINT_GRPC, principal=_principal()
        )
        return feedback_pb2.FeedbackReply(
            feedback_id=event.feedback_id,
            request_id=event.request_id,
            known=event.known,
            model=event.model,
            model_version=event.model_version,
        )


def add_to_server(
    server: grpc.aio.Server,
    gateway: Gateway,
    tracer: Tracer | None = None,
    metrics: GatewayMetrics | None = None,
) -> None:
    """Register the ``FeedbackService`` on the gateway's gRPC server; the app passes the
    GenerationService's tracer and metrics, so its calls are traced and counted alike."""
    feedback_pb2_grpc.add_FeedbackServiceServicer_to_server(  # type: ignore[no-untyped-call]
        FeedbackServicer(gateway, tracer, metrics), server
    )
