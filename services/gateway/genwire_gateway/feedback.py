"""Feedback on a generation: ``POST /v1/feedback`` and the gRPC ``FeedbackService.Feedback``.

Both take a request id plus a rating, label and/or correction (``genwire.feedback.
FeedbackBody``), look the request up (its stored result names the model, version and arm;
the request may also be waited for here or claimed by the pipeline), and publish a
``FeedbackEvent`` on ``genwire.feedback`` keyed by the request id, acknowledged by the broker
before the answer. A request id that cannot be found is accepted and marked ``known: false``
(its result may have expired; the export keeps it, flagged). Bad input is a 400 in OpenAI's
error shape / INVALID_ARGUMENT; nothing is published.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from genwire.feedback import FeedbackBody, FeedbackEvent
from genwire.kafka import EventProducer
from genwire.proto.v1 import feedback_pb2, feedback_pb2_grpc
from genwire.request import ErrorCode
from genwire_gateway import openai
from genwire_gateway.errors import GatewayError, http_status
from genwire_gateway.handlers import Gateway

log = logging.getLogger(__name__)


def _explain(exc: ValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    return "; ".join(
        (".".join(str(p) for p in e["loc"]) + ": " if e["loc"] else "") + e["msg"]
        for e in exc.errors()
    ), param


async def submit(
    gateway: Gateway, body: FeedbackBody, *, entrypoint: str, principal: str = ""
) -> FeedbackEvent:
    """Look the request up and publish its feedback (acknowledged)."""
    known, server = False, {}
    try:
        stored = await gateway.store.get(body.request_id)
    except Exception as exc:  # Redis down: the feedback still counts, unmarked as found
        log.warning("Redis lookup of %s failed: %s", body.request_id, exc)
        stored = None
    if stored is not None:
        known = True
        server = {"model": stored.model, "model_version": stored.model_version, "arm": stored.arm}
    else:
        known = await gateway.known(body.request_id)
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


def feedback_router() -> APIRouter:
    """``POST /v1/feedback`` (expects ``app.state.gateway``)."""
    router = APIRouter()

    @router.post("/v1/feedback", response_model=None)
    async def post_feedback(request: Request) -> JSONResponse:
        gateway: Gateway = request.app.state.gateway
        try:
            body = FeedbackBody.model_validate_json(await request.body())
        except ValidationError as exc:
            message, param = _explain(exc)
            code = ErrorCode.INVALID_REQUEST
            return JSONResponse(openai.error_body(code, message, 400, param), 400)
        try:
            event = await submit(gateway, body, entrypoint="http", principal=_principal())
        except GatewayError as exc:
            status = http_status(exc.code)
            return JSONResponse(openai.error_body(exc.code, exc.message, status, None), status)
        return JSONResponse(answer(event))

    return router


class FeedbackServicer(feedback_pb2_grpc.FeedbackServiceServicer):
    """The gRPC ``FeedbackService``."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def Feedback(
        self, request: feedback_pb2.FeedbackRequest, context: grpc.aio.ServicerContext
    ) -> feedback_pb2.FeedbackReply:
        """Validate, look up, publish; INVALID_ARGUMENT / UNAVAILABLE on failure."""
        fields: dict[str, Any] = {"request_id": request.request_id}
        for name in ("rating", "label", "correction", "comment"):
            if request.HasField(name):
                fields[name] = getattr(request, name)
        try:
            body = FeedbackBody.model_validate(fields)
        except ValidationError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _explain(exc)[0])
            raise AssertionError("unreachable") from None
        try:
            event = await submit(self._gateway, body, entrypoint="grpc", principal=_principal())
        except GatewayError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, exc.message)
            raise AssertionError("unreachable") from None
        return feedback_pb2.FeedbackReply(
            feedback_id=event.feedback_id,
            request_id=event.request_id,
            known=event.known,
            model=event.model,
            model_version=event.model_version,
        )


def add_to_server(server: grpc.aio.Server, gateway: Gateway) -> None:
    """Register the ``FeedbackService`` on the gateway's gRPC server."""
    feedback_pb2_grpc.add_FeedbackServiceServicer_to_server(  # type: ignore[no-untyped-call]
        FeedbackServicer(gateway), server
    )
