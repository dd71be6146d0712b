"""Decoding OTLP protobuf (``ExportTraceServiceRequest`` / ``TracesData``) into light span views.

Only the attributes the monitor reads are kept, so decoding stays cheap (the benchmark
measures it) and no prompt or completion text is ever held, even when a service records it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from genwire.policy import SHADOW_ATTRIBUTE
from genwire.telemetry import semconv as sc

STATUS_ERROR = 2  # opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR
# opentelemetry.proto.trace.v1.Span.SpanKind values (``SpanView.kind``).
KIND_SERVER, KIND_CLIENT, KIND_PRODUCER, KIND_CONSUMER = 2, 3, 4, 5
SERVICE_NAME = "service.name"
SERVICE_PREFIX = "genwire-"

# The attributes any part of the monitor reads; everything else is skipped while decoding.
WANTED: frozenset[str] = frozenset(
    {
        sc.STAGE,
        sc.WAIT_MS,
        sc.QUEUE_MS,
        sc.COMPUTE_MS,
        sc.MESSAGING_DESTINATION,
        sc.MESSAGING_OPERATION_TYPE,
        sc.GEN_AI_INPUT_TOKENS,
        sc.GEN_AI_OUTPUT_TOKENS,
        sc.GEN_AI_FINISH_REASONS,
        sc.GEN_AI_REQUEST_MODEL,
        sc.GEN_AI_RESPONSE_MODEL,
        sc.MODEL_VERSION,
        sc.MEAN_LOGPROB,
        sc.FILTER_HITS,
        sc.TIME_TO_FIRST_TOKEN_MS,
        sc.FIRST_TOKEN_UNIX_MS,
        sc.TIME_PER_OUTPUT_TOKEN_MS,
        sc.ERROR_CODE,
        sc.ENTRYPOINT,
        SHADOW_ATTRIBUTE,
    }
)

AttrValue = str | int | float | bool | tuple[str | int | float | bool, ...]


class MalformedPayload(ValueError):
    """A Kafka value that is not an OTLP trace export; counted and skipped by the caller."""


@dataclass(slots=True)
class SpanView:
    """What the monitor needs of one span."""

    trace_id: bytes
    parent_span_id: bytes
    name: str
    kind: int
    service: str
    start_ns: int
    end_ns: int
    error: bool
    attrs: dict[str, AttrValue]

    @property
    def duration_ms(self) -> float:
        """Span duration in milliseconds (0 for a span that ends before it starts)."""
        return max(0, self.end_ns - self.start_ns) / 1e6

    @property
    def stage(self) -> str:
        """``genwire.stage``, else the service name without the ``genwire-`` prefix."""
        stage = self.attrs.get(sc.STAGE)
        if isinstance(stage, str) and stage:
            return stage
        name = self.service
        return name[len(SERVICE_PREFIX) :] if name.startswith(SERVICE_PREFIX) else name


def _scalar(value: AnyValue) -> AttrValue | None:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "array_value":
        items = (_scalar(v) for v in value.array_value.values)
        return tuple(i for i in items if i is not None and not isinstance(i, tuple))
    return None  # bytes and key-value lists: nothing the monitor reads


def decode(payload: bytes) -> Iterator[SpanView]:
    """Every span of one OTLP trace export; raises ``MalformedPayload`` if it is not one."""
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(payload)
    except (DecodeError, ValueError) as exc:
        raise MalformedPayload(f"not an OTLP trace export: {exc}") from exc
    if not request.resource_spans and payload:
        # Arbitrary bytes can parse as a message with only unknown fields: nothing to use.
        raise MalformedPayload("no resource spans in a non-empty payload")
    return _iterate(request)


def _iterate(request: ExportTraceServiceRequest) -> Iterator[SpanView]:
    for resource_spans in request.resource_spans:
        service = "unknown"
        for kv in resource_spans.resource.attributes:
            if kv.key == SERVICE_NAME:
                service = kv.value.string_value or service
                break
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                attrs: dict[str, AttrValue] = {}
                for kv in span.attributes:
                    if kv.key in WANTED:
                        value = _scalar(kv.value)
                        if value is not None:
                            attrs[kv.key] = value
                yield SpanView(
                    trace_id=span.trace_id,
                    parent_span_id=span.parent_span_id,
                    name=span.name,
                    kind=span.kind,
                    service=service,
                    start_ns=span.start_time_unix_nano,
                    end_ns=span.end_time_unix_nano,
                    error=span.status.code == STATUS_ERROR,
                    attrs=attrs,
                )
