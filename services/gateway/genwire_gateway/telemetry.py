"""What both transports record of a request: its SERVER span, where its trace starts (or joins
the caller's), and the request count and duration by entry point, method and outcome."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from opentelemetry.propagate import extract
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue
from prometheus_client import CollectorRegistry, Counter, Histogram

from genwire.metrics import LATENCY_BUCKETS
from genwire.telemetry import semconv as sc

ENTRYPOINT_GRPC = "grpc"
ENTRYPOINT_HTTP = "http"


def start_server_span(
    tracer: Tracer,
    name: str,
    *,
    entrypoint: str,
    carrier: Mapping[str, str],
    attributes: Mapping[str, AttributeValue],
) -> Span:
    """Start (not activate) a SERVER span, child of a ``traceparent`` in ``carrier`` if any.

    Not activated, because a streamed answer ends the span in another task than the one that
    started it; callers activate it with ``trace.use_span(span, end_on_exit=False)``.
    """
    return tracer.start_span(
        name,
        context=extract(carrier),
        kind=SpanKind.SERVER,
        attributes={sc.ENTRYPOINT: entrypoint, sc.STAGE: sc.STAGE_GATEWAY, **attributes},
    )


def carrier_of(pairs: Iterable[tuple[str, str | bytes]]) -> dict[str, str]:
    """Trace headers (lower-cased) from gRPC metadata or HTTP headers."""
    return {
        k.lower(): v if isinstance(v, str) else v.decode("latin-1")
        for k, v in pairs
        if k.lower() in ("traceparent", "tracestate", "baggage")
    }


def trace_id_of(span: Span) -> str:
    """The span's trace id as 32 hex digits ('' when not recording a valid context)."""
    ctx = span.get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid else ""


def mark_error(span: Span, code: str, message: str) -> None:
    """Record a failed request on its span (code and message only, never content)."""
    span.set_status(Status(StatusCode.ERROR, message[:200]))
    span.set_attribute(sc.ERROR_CODE, code)


class GatewayMetrics:
    """Requests by entry point, method and outcome code; their duration."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            sc.METRIC_REQUESTS,
            "Requests answered by the gateway, by entry point, method and outcome code.",
            ["entrypoint", "method", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            sc.METRIC_REQUEST_SECONDS,
            "Time from receiving a request to its last byte, at the gateway.",
            ["entrypoint", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def observe(self, entrypoint: str, method: str, code: str, seconds: float) -> None:
        """Count one answered request."""
        self.requests.labels(entrypoint, method, code).inc()
        self.duration.labels(entrypoint, method).observe(seconds)
