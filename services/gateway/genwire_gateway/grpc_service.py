"""The gRPC transport: GenerationService, standard health checking and reflection.

Thin: proto messages in and out, ``Gateway`` does the work. The caller's deadline bounds the
wait and travels downstream as the request's ``deadline_ms``; a call that expires publishes a
cancel, so the generation loop stops too, and so does one that is cancelled, unless it is named
(``request_id`` / ``idempotency-key``: the caller's retry collects it), as docs/security.md's
keep rule says.

Every field is honoured or refused (docs/api.md): a request message carrying a field this
proto does not know (a newer client's), at any depth, is refused ``unsupported_parameter``.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.protobuf.unknown_fields import UnknownFieldSet
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from opentelemetry import trace
from opentelemetry.trace import Span

from genwire.events import (
    MAX_REASON_CHARS,
    MAX_REQUEST_ID_CHARS,
    REQUEST_ID_PATTERN,
    GenerationResult,
    OutputLogprob,
    Timings,
    Usage,
)
from genwire.proto.v1 import feedback_pb2
from genwire.proto.v1 import generation_pb2 as pb
from genwire.proto.v1 import generation_pb2_grpc as pb_grpc
from genwire.request import ErrorCode
from genwire.telemetry import semconv as sc
from genwire_gateway.config import GatewaySettings
from genwire_gateway.errors import GatewayError, grpc_status
from genwire_gateway.handlers import Chunk, Gateway, Prepared, ResultStatus
from genwire_gateway.telemetry import (
    ENTRYPOINT_GRPC,
    GatewayMetrics,
    RequestClock,
    carrier_of,
    mark_error,
    start_server_span,
    trace_id_of,
)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GenerationService"].full_name
FEEDBACK_SERVICE_NAME = feedback_pb2.DESCRIPTOR.services_by_name["FeedbackService"].full_name
"""genwire.v1.FeedbackService (feedback.py serves it on the same server)."""
IDEMPOTENCY_METADATA = "idempotency-key"
UNEXPECTED = "unknown"
"""Outcome code (metrics, span) of a call that failed with an exception no code was mapped to."""

T = TypeVar("T")


_GUIDED_KINDS = {
    pb.Guided.KIND_JSON_OBJECT: "json_object",
    pb.Guided.KIND_JSON_SCHEMA: "json_schema",
    pb.Guided.KIND_REGEX: "regex",
    pb.Guided.KIND_CHOICE: "choice",
    pb.Guided.KIND_GRAMMAR: "grammar",
}
_OPTIONAL = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "n",
    "top_logprobs",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "min_p",
    "min_tokens",
)


def _unknown_field(message: Message, path: str = "") -> tuple[int, str] | None:
    """(number, where) of the first field ``message`` carries that its proto does not know,
    itself or in a message it holds (``messages[1]``, ``guided``); None when there is none."""
    unknown = UnknownFieldSet(message)
    if len(unknown):
        return unknown[0].field_number, path
    for field, value in message.ListFields():
        held = field.message_type
        if field.type != FieldDescriptor.TYPE_MESSAGE or held is None:
            continue
        name = f"{path}.{field.name}" if path else field.name
        if held.GetOptions().map_entry:
            if held.fields_by_name["value"].type != FieldDescriptor.TYPE_MESSAGE:
                continue
            items: list[tuple[str, Message]] = [(f"{name}[{k}]", v) for k, v in value.items()]
        elif field.is_repeated:
            items = [(f"{name}[{i}]", v) for i, v in enumerate(value)]
        else:
            items = [(name, value)]
        for where, item in items:
            found = _unknown_field(item, where)
            if found is not None:
                return found
    return None


_DISCARD_DEPTH = 16
"""The deepest message nesting ``_holds_unknown`` leaves to ``DiscardUnknownFields``: upb's
stops, silently, at 64 levels, so a deeper (or recursive) type is walked instead."""


def _held_message(field: FieldDescriptor) -> Descriptor | None:
    """The message type a field holds, as ``_unknown_field`` walks it: a map's value type (a
    map of scalars holds none: upb keeps a map entry with an unknown field as an unknown field
    of the map's owner), else the field's own; None for a scalar field."""
    held = field.message_type
    if field.type != FieldDescriptor.TYPE_MESSAGE or held is None:
        return None
    if held.GetOptions().map_entry:
        value = held.fields_by_name["value"]
        return value.message_type if value.type == FieldDescriptor.TYPE_MESSAGE else None
    return held


@functools.cache
def _nesting(descriptor: Descriptor) -> int | None:
    """How many levels of messages a message of this type can span (1: it holds none); None
    when the type can hold itself, at any depth."""

    def depth(d: Descriptor, outer: frozenset[str]) -> int | None:
        if d.full_name in outer:
            return None
        deepest = 0
        for field in d.fields:
            held = _held_message(field)
            if held is not None:
                below = depth(held, outer | {d.full_name})
                if below is None:
                    return None
                deepest = max(deepest, below)
        return deepest + 1

    return depth(descriptor, frozenset())


def _holds_unknown(message: Message) -> bool:
    """False only when ``_unknown_field`` would find nothing, cheaply: that walk costs ~1 µs a
    message held in Python (a 200-turn chat: ~220 µs), this one a copy and two sizes in C. An
    unknown field, kept aside by the parse, is counted in ``ByteSize`` and dropped by
    ``DiscardUnknownFields`` (at every depth the walk reaches, nesting bounded above), so the
    sizes differ exactly when the walk would find one."""
    nesting = _nesting(message.DESCRIPTOR)
    if nesting is None or nesting > _DISCARD_DEPTH:
        return True  # beyond what DiscardUnknownFields reaches: let the walk decide
    if nesting == 1:
        return len(UnknownFieldSet(message)) > 0  # nothing held: the walk's first check
    copy = type(message)()
    copy.CopyFrom(message)
    copy.DiscardUnknownFields()
    return copy.ByteSize() != message.ByteSize()


def refuse_unknown_fields(message: Message) -> None:
    """Refuse a request message with a field this proto does not know: every field is honoured
    or refused, never ignored (docs/api.md). protobuf keeps such a field (a newer client's, or a
    known number sent with the wrong wire type) aside instead of failing the parse. A message
    without one (nearly all) is cleared in C; only one with one is walked, to name where."""
    found = _unknown_field(message) if _holds_unknown(message) else None
    if found is not None:
        number, where = found
        raise GatewayError(
            f"unknown field {number}" + (f" in {where}" if where else ""),
            code=ErrorCode.UNSUPPORTED_PARAMETER,
            param=where or None,
        )


def request_fields(message: pb.GenerateRequest) -> dict[str, Any]:
    """The genwire request fields of a proto request (unset optionals left to defaults)."""
    fields: dict[str, Any] = {
        "prompt": message.prompt or None,
        "prompt_token_ids": list(message.prompt_token_ids) or None,
        "messages": [{"role": m.role, "content": m.content} for m in message.messages] or None,
        "stop": list(message.stop) or None,
        "model": message.model or None,
        "model_version": message.model_version or None,
        "metadata": dict(message.metadata) or None,
        "logprobs": message.logprobs or None,
        "ignore_eos": message.ignore_eos or None,
        "stop_token_ids": list(message.stop_token_ids) or None,
        "logit_bias": {str(k): v for k, v in message.logit_bias.items()} or None,
    }
    for name in _OPTIONAL:
        if message.HasField(name):
            fields[name] = getattr(message, name)
    if message.HasField("guided"):
        kind = _GUIDED_KINDS.get(message.guided.kind)
        if kind is None:
            raise GatewayError(
                "guided.kind must be set (JSON_OBJECT, JSON_SCHEMA, REGEX, CHOICE, GRAMMAR)",
                code=ErrorCode.INVALID_REQUEST,
                param="guided",
            )
        fields["guided"] = {"kind": kind, "spec": message.guided.spec}
    return fields


def _timestamp(ms: float | None) -> Timestamp | None:
    if not ms:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int(ms * 1_000_000))
    return stamp


def _duration(ms: float | None) -> Duration | None:
    if ms is None or ms < 0:
        return None
    duration = Duration()
    duration.FromNanoseconds(int(ms * 1_000_000))
    return duration


def _between(start: float | None, end: float | None) -> Duration | None:
    return _duration(end - start) if start and end else None


def timings_message(t: Timings) -> pb.Timings:
    """A result's timings as Timestamps, with the durations a caller asks about."""
    return pb.Timings(
        received=_timestamp(t.received),
        prepared=_timestamp(t.prepared),
        inference_start=_timestamp(t.inference_start),
        first_token=_timestamp(t.first_token),
        inference_end=_timestamp(t.inference_end),
        completed=_timestamp(t.completed),
        time_to_first_token=_between(t.received, t.first_token),
        total=_between(t.received, t.completed),
        triton_queue=_duration(t.triton_queue_ms),
        triton_compute=_duration(t.triton_compute_ms),
    )


def logprobs_message(logprobs: Sequence[OutputLogprob] | None) -> list[pb.TokenLogprob]:
    """Token logprobs as proto messages."""
    return [
        pb.TokenLogprob(
            token=lp.token,
            token_id=lp.token_id,
            logprob=lp.logprob,
            bytes=bytes(lp.bytes or b""),
            top_logprobs=[
                pb.TopLogprob(
                    token=alt.token,
                    token_id=alt.token_id,
                    logprob=alt.logprob,
                    bytes=bytes(alt.bytes or b""),
                )
                for alt in lp.top
            ],
            text_offset=lp.text_offset,
        )
        for lp in logprobs or []
    ]


def to_response(result: GenerationResult, *, model: str, trace_id: str) -> pb.GenerateResponse:
    """A finished result as a proto response, answering ``model`` (docs/api.md, *Model*: the
    name the caller asked for, else the default; the result's own name where that is unknown)."""
    return pb.GenerateResponse(
        request_id=result.request_id,
        text=result.text,
        finish_reason=result.finish_reason or "",
        usage=pb.Usage(**result.usage.counts()),
        model=model,
        model_version=result.model_version,
        timings=timings_message(result.timings),
        trace_id=trace_id,
        choices=[
            pb.Choice(
                index=c.index,
                text=c.text,
                finish_reason=c.finish_reason or "",
                logprobs=logprobs_message(c.logprobs),
            )
            for c in result.choices
        ],
        logprobs=logprobs_message(result.logprobs),
    )


def to_stream_response(
    chunk: Chunk, request_id: str, trace_id: str, *, model: str
) -> pb.GenerateStreamResponse:
    """A streamed chunk as a proto message; the last one carries the result's timings. Every
    one names ``model``, as ``to_response`` does and as OpenAI's stream names it in every chunk
    (a few bytes a message)."""
    result = chunk.result if chunk.final else None
    return pb.GenerateStreamResponse(
        request_id=request_id,
        model=model,
        index=chunk.index,
        text=chunk.text,
        final=chunk.final,
        finish_reason=chunk.finish_reason or "",
        usage=pb.Usage(**(chunk.usage or Usage()).counts()) if chunk.final else None,
        trace_id=trace_id,
        choice=chunk.choice,
        logprobs=logprobs_message(chunk.logprobs),
        timings=timings_message(result.timings) if result is not None else None,
    )


def unexpected(exc: BaseException) -> str:
    """What a span's status says of an exception no code was mapped to: its type only. Its
    message may quote a prompt (a redaction hook's, a model's), and spans leave the process;
    grpc logs the whole exception."""
    return f"unexpected {type(exc).__name__}"


def end_call(
    span: Span, metrics: GatewayMetrics | None, method: str, code: str, started: float
) -> None:
    """End a call's SERVER span with its gRPC status and count the call (``metrics``: None,
    not counted), with the outcome ``code`` it ended with."""
    span.set_attribute(sc.RPC_GRPC_STATUS_CODE, status_of(code).value[0])
    span.end()
    if metrics is not None:
        metrics.observe(ENTRYPOINT_GRPC, method, code, time.perf_counter() - started)


def status_of(code: str) -> grpc.StatusCode:
    """The gRPC status a call ended with, given its outcome code."""
    if code == "ok":
        return grpc.StatusCode.OK
    if code == UNEXPECTED:
        return grpc.StatusCode.UNKNOWN  # what grpc answers for an exception we did not map
    return grpc_status(code)


class GenerationServicer(pb_grpc.GenerationServiceServicer):  # type: ignore[misc]
    """genwire.v1.GenerationService over ``Gateway``."""

    def __init__(self, gateway: Gateway, tracer: trace.Tracer, metrics: GatewayMetrics) -> None:
        self._gateway = gateway
        self._tracer = tracer
        self._metrics = metrics

    # -- helpers --------------------------------------------------------------------------------

    def _span(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Span:
        return start_server_span(
            self._tracer,
            f"{SERVICE_NAME}/{method}",
            entrypoint=ENTRYPOINT_GRPC,
            carrier=carrier_of(context.invocation_metadata() or ()),
            attributes={sc.RPC_SYSTEM: "grpc", sc.RPC_SERVICE: SERVICE_NAME, sc.RPC_METHOD: method},
        )

    def _prepare(
        self,
        message: pb.GenerateRequest,
        context: grpc.aio.ServicerContext[Any, Any],
        *,
        stream: bool,
        timeout_s: float | None = None,
    ) -> Prepared:
        key = next(
            (
                v if isinstance(v, str) else v.decode()
                for k, v in context.invocation_metadata() or ()
                if k == IDEMPOTENCY_METADATA
            ),
            None,
        )
        refuse_unknown_fields(message)
        if key is not None and re.fullmatch(REQUEST_ID_PATTERN, key) is None:
            # Checked here, so the refusal names the metadata the caller sent, as HTTP's names
            # its Idempotency-Key header (not request_id, which the caller did not send).
            raise GatewayError(
                f"the idempotency-key metadata must be 1-{MAX_REQUEST_ID_CHARS} letters, "
                "digits, '.', '_', ':' or '-', starting with a letter or digit",
                code=ErrorCode.INVALID_REQUEST,
                param=IDEMPOTENCY_METADATA,
            )
        if key and message.request_id and key != message.request_id:
            raise GatewayError(
                "request_id and the idempotency-key metadata differ",
                code=ErrorCode.INVALID_REQUEST,
                param=IDEMPOTENCY_METADATA,
            )
        return self._gateway.prepare(
            request_fields(message),
            request_id=message.request_id or key or None,
            stream=stream,
            timeout_s=context.time_remaining() if timeout_s is None else timeout_s,
        )

    async def _call(
        self,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        work: Callable[[Span], Awaitable[T]],
    ) -> T:
        """Run a unary method in its SERVER span; map errors to statuses; count it."""
        started = time.perf_counter()
        span = self._span(method, context)
        code = "ok"
        try:
            with trace.use_span(span, end_on_exit=False, record_exception=False):
                return await work(span)
        except GatewayError as exc:
            code = exc.code
            await self._abort(context, span, exc)
        except asyncio.CancelledError:
            code = "cancelled"
            raise
        except Exception as exc:  # a bug, not a caller error: grpc answers UNKNOWN; count it
            code = UNEXPECTED
            mark_error(span, code, unexpected(exc))
            raise
        finally:
            end_call(span, self._metrics, method, code, started)

    async def _abort(
        self, context: grpc.aio.ServicerContext[Any, Any], span: Span, exc: GatewayError
    ) -> NoReturn:
        mark_error(span, exc.code, exc.message)
        await context.abort(grpc_status(exc.code), f"{exc.code}: {exc.message}")
        raise AssertionError("unreachable: abort raises")

    # -- methods --------------------------------------------------------------------------------

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GenerateResponse:
        """Generate and return the whole result."""

        async def work(span: Span) -> pb.GenerateResponse:
            prepared = self._prepare(request, context, stream=False)
            span.set_attribute(sc.REQUEST_ID, prepared.request_id)
            trace_id = trace_id_of(span)
            clock = self._metrics.clock(ENTRYPOINT_GRPC)
            try:
                result = await self._gateway.generate(prepared)
                clock.finish(result, unary=True)
            finally:
                clock.finish(None)  # (no-op after a result)
            # As HTTP: the name the caller sent, as sent, else the default (docs/api.md, *Model*).
            model = request.model or self._default_model
            return to_response(result, model=model, trace_id=trace_id)

        return await self._call("Generate", context, work)

    async def GenerateStream(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        """Generate and stream text chunks; the last one is final."""
        started = time.perf_counter()
        span = self._span("GenerateStream", context)
        code = "ok"
        clock: RequestClock | None = None
        try:
            with trace.use_span(span, end_on_exit=False, record_exception=False):
                prepared = self._prepare(request, context, stream=True)
                span.set_attribute(sc.REQUEST_ID, prepared.request_id)
                trace_id = trace_id_of(span)
                # As Generate: the name the caller sent, as sent, else the default.
                model = request.model or self._default_model
                clock = self._metrics.clock(ENTRYPOINT_GRPC)
                chunks = self._gateway.stream(prepared)
                async for chunk in chunks:
                    if chunk.text or chunk.logprobs:
                        clock.piece(len(chunk.logprobs) if chunk.logprobs else 1, chunk.choice)
                    if chunk.final:
                        clock.finish(chunk.result)
                    yield to_stream_response(chunk, prepared.request_id, trace_id, model=model)
        except GatewayError as exc:
            code = exc.code
            await self._abort(context, span, exc)
        except (asyncio.CancelledError, GeneratorExit):
            code = "cancelled"
            raise
        except Exception as exc:  # a bug, not a caller error: grpc answers UNKNOWN; count it
            code = UNEXPECTED
            mark_error(span, code, unexpected(exc))
            raise
        finally:
            if clock is not None:
                clock.finish(None)  # (no-op after the final chunk)
            end_call(span, self._metrics, "GenerateStream", code, started)

    async def Submit(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SubmitResponse:
        """Accept a request and return its id once the broker has it."""

        async def work(span: Span) -> pb.SubmitResponse:
            # The caller does not wait, so its deadline says nothing about the work's: the
            # request may take up to the longest wait any caller gets.
            timeout = self._gateway.settings.max_timeout_s
            prepared = self._prepare(request, context, stream=False, timeout_s=timeout)
            span.set_attribute(sc.REQUEST_ID, prepared.request_id)
            request_id = await self._gateway.submit(prepared)
            return pb.SubmitResponse(request_id=request_id, trace_id=trace_id_of(span))

        return await self._call("Submit", context, work)

    async def GetResult(
        self, request: pb.GetResultRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetResultResponse:
        """The stored result of a request, waiting up to ``wait_ms`` for a pending one."""

        async def work(span: Span) -> pb.GetResultResponse:
            # Only its owner's key or an admin reads it (usage.MeteredGateway.get_result).
            refuse_unknown_fields(request)
            _require_request_id(request.request_id, span)
            # The same ceiling as every other wait (max_timeout_s), then the call's deadline.
            wait_s = self._gateway.timeout_for(request.wait_ms / 1000.0)
            remaining = context.time_remaining()
            if remaining is not None:
                wait_s = min(wait_s, max(0.0, remaining - 0.05))
            status, result = await self._gateway.get_result(request.request_id, wait_s)
            return self._result_response(status, result)

        return await self._call("GetResult", context, work)

    async def Cancel(
        self, request: pb.CancelRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CancelResponse:
        """Publish a cancel of a request."""

        async def work(span: Span) -> pb.CancelResponse:
            refuse_unknown_fields(request)
            _require_request_id(request.request_id, span)
            known = await self._gateway.known(request.request_id)
            # Only its owner's key or an admin cancels it (usage.MeteredGateway.cancel), and a
            # key without admin publishes no cancel of an id nobody knows: not accepted.
            reason = _cancel_reason(request.reason)
            accepted = await self._gateway.cancel(request.request_id, reason)
            return pb.CancelResponse(accepted=accepted, known=known)

        return await self._call("Cancel", context, work)

    # -- mapping --------------------------------------------------------------------------------

    @property
    def _default_model(self) -> str:
        return self._gateway.settings.default_model

    def _result_response(
        self, status: str, result: GenerationResult | None
    ) -> pb.GetResultResponse:
        statuses = {
            ResultStatus.PENDING: pb.GetResultResponse.STATUS_PENDING,
            ResultStatus.DONE: pb.GetResultResponse.STATUS_DONE,
            ResultStatus.FAILED: pb.GetResultResponse.STATUS_FAILED,
            ResultStatus.NOT_FOUND: pb.GetResultResponse.STATUS_NOT_FOUND,
        }
        response = pb.GetResultResponse(status=statuses[status])
        if result is not None and result.error is not None:
            response.error_code = result.error.code
            response.error_message = result.error.message
        elif result is not None:
            # The name the request was sent with is not stored: the served result's name.
            model = result.model or self._default_model
            response.result.CopyFrom(to_response(result, model=model, trace_id=""))
        return response


def build_server(
    settings: GatewaySettings,
    servicer: GenerationServicer,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> tuple[grpc.aio.Server, HealthServicer]:
    """The gRPC server with GenerationService, health and (optionally) reflection; not started."""
    limit = settings.grpc_max_message_bytes
    server = grpc.aio.server(
        interceptors=list(interceptors),
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),  # a second instance on the same port must fail loudly
        ],
    )
    pb_grpc.add_GenerationServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if settings.grpc_reflection:
        from grpc_reflection.v1alpha import reflection

        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                FEEDBACK_SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    if settings.tls_certfile is not None and settings.tls_keyfile is not None:
        # TLS (and mTLS with tls_client_ca_file): the same certificate as the HTTP port.
        ca = settings.tls_client_ca_file
        credentials = grpc.ssl_server_credentials(
            [(settings.tls_keyfile.read_bytes(), settings.tls_certfile.read_bytes())],
            root_certificates=ca.read_bytes() if ca is not None else None,
            require_client_auth=ca is not None,
        )
        bound = server.add_secure_port(address, credentials)
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot bind gRPC to {address}")
    return server, health


async def set_serving(health: HealthServicer, serving: bool) -> None:
    """Mark the overall server, GenerationService and FeedbackService SERVING or NOT_SERVING."""
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ("", SERVICE_NAME, FEEDBACK_SERVICE_NAME):
        await health.set(name, status)


def _require_request_id(request_id: str, span: Span) -> None:
    """GetResult and Cancel name an existing request: an empty id, or one no request can have
    (a message may be 16 MiB: an unbounded id would be published, looked up and remembered by
    inference as is), is the caller's error."""
    if not request_id:
        raise GatewayError("request_id is required", code=ErrorCode.INVALID_REQUEST)
    if re.fullmatch(REQUEST_ID_PATTERN, request_id) is None:
        raise GatewayError(
            f"request_id must match {REQUEST_ID_PATTERN} (at most {MAX_REQUEST_ID_CHARS} "
            "characters)",
            code=ErrorCode.INVALID_REQUEST,
        )
    span.set_attribute(sc.REQUEST_ID, request_id)


def _cancel_reason(reason: str) -> str:
    """The caller's reason cut to ``MAX_REASON_CHARS`` before anything redacts or publishes it
    (a long one would hold the event loop in the redactor), or the default."""
    return reason[:MAX_REASON_CHARS] or "cancelled by caller"
