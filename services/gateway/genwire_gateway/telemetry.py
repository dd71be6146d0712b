"""What both transports record of a request: its SERVER span, where its trace starts (or joins
the caller's), the request count and duration by entry point, method and outcome, and the
caller-side serving figures named like vLLM's (``RequestClock``): time to first token,
inter-token latency and end-to-end latency as the caller sees them (from the gateway receiving
the request), token counters, running and waiting gauges; beside them the OpenTelemetry
``gen_ai.server.*`` histograms of the same measurements."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagate import extract
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from genwire.events import GenerationResult
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


def own_trace_span(
    tracer: Tracer,
    name: str,
    *,
    caller: SpanContext | None,
    attributes: Mapping[str, AttributeValue],
    start_ns: int | None = None,
) -> Span:
    """A span of the gateway's that is not a generation request's (``GET /v1/models``,
    feedback, a 500 before any handler): the root of a trace of its own, linked to ``caller``
    (the caller's ``traceparent``), started at ``start_ns`` (None: now); the caller ends it.

    Its own trace: the monitor assembles a request from every span of its trace (its end, its
    error), so an answer in the caller's trace (a feedback call, a model listing) would widen
    or fail the generation it followed. INTERNAL, not SERVER, and without
    ``genwire.entrypoint``: the monitor reads the gateway's SERVER spans as the gateway stage
    of generation requests, and a trace holding that attribute as a request; these answers
    are neither."""
    return tracer.start_span(
        name,
        context=Context(),  # a root, whatever span is current
        kind=SpanKind.INTERNAL,
        attributes={sc.STAGE: sc.STAGE_GATEWAY, **attributes},
        links=[Link(caller)] if caller is not None else None,
        start_time=start_ns,
    )


def answer_span(
    tracer: Tracer,
    name: str,
    *,
    caller: SpanContext | None,
    attributes: Mapping[str, AttributeValue],
    start_ns: int,
) -> Span:
    """The span of an HTTP answer no request handler traced (``own_trace_span``), from
    ``start_ns`` to now, ended. A 5xx is an error."""
    span = own_trace_span(tracer, name, caller=caller, attributes=attributes, start_ns=start_ns)
    status = attributes.get(sc.HTTP_RESPONSE_STATUS_CODE)
    if isinstance(status, int) and status >= 500:
        span.set_status(Status(StatusCode.ERROR))
    span.end()
    return span


def carrier_of(pairs: Iterable[tuple[str, str | bytes]]) -> dict[str, str]:
    """Trace headers (lower-cased) from gRPC metadata or HTTP headers."""
    return {
        k.lower(): v if isinstance(v, str) else v.decode("latin-1")
        for k, v in pairs
        if k.lower() in ("traceparent", "tracestate", "baggage")
    }


def caller_of(carrier: Mapping[str, str]) -> SpanContext | None:
    """The caller's span context, from its ``traceparent`` in ``carrier`` (``carrier_of``);
    None: it sent none valid."""
    if "traceparent" not in carrier:
        return None
    context = trace.get_current_span(extract(carrier)).get_span_context()
    return context if context.is_valid else None


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

        label = ["entrypoint"]
        self.ttft = Histogram(
            "genwire_gateway_time_to_first_token_seconds",
            "Time to first token as the caller sees it: from the gateway receiving the request "
            "to its first text leaving (streamed) or its first token being sampled (unary).",
            label,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.itl = Histogram(
            "genwire_gateway_inter_token_latency_seconds",
            "Time between streamed pieces sent to the caller, per token (unary: the mean "
            "time per output token after the first, once per request).",
            label,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.e2e = Histogram(
            "genwire_gateway_e2e_request_latency_seconds",
            "From the gateway receiving a generation request to its last byte, successful "
            "requests only.",
            label,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "genwire_gateway_prompt_tokens",
            "Prompt tokens of the requests answered.",
            label,
            registry=registry,
        )
        self.generation_tokens = Counter(
            "genwire_gateway_generation_tokens",
            "Generated tokens of the requests answered (every choice).",
            label,
            registry=registry,
        )
        self.success = Counter(
            "genwire_gateway_request_success",
            "Requests answered with a result, by finish reason.",
            ["entrypoint", "finished_reason"],
            registry=registry,
        )
        self.running = Gauge(
            "genwire_gateway_num_requests_running",
            "Requests producing tokens now (first token seen, not finished).",
            label,
            registry=registry,
        )
        self.waiting = Gauge(
            "genwire_gateway_num_requests_waiting",
            "Requests published and waiting for their first token.",
            label,
            registry=registry,
        )
        # OpenTelemetry GenAI semantic-convention names of the same measurements.
        self.otel_ttft = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "gen_ai.server.time_to_first_token (same as genwire_gateway_time_to_first_token).",
            label,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.otel_tpot = Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "gen_ai.server.time_per_output_token (same as the inter-token latency).",
            label,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.otel_duration = Histogram(
            "gen_ai_server_request_duration_seconds",
            "gen_ai.server.request.duration (same as genwire_gateway_e2e_request_latency).",
            label,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def observe(self, entrypoint: str, method: str, code: str, seconds: float) -> None:
        """Count one answered request."""
        self.requests.labels(entrypoint, method, code).inc()
        self.duration.labels(entrypoint, method).observe(seconds)

    def clock(self, entrypoint: str) -> RequestClock:
        """The caller-side figures of one generation request, from now."""
        return RequestClock(self, entrypoint)


FINISH_REASONS = frozenset(
    {"stop", "length", "cancelled", "deadline", "content_filter", "error", "abort"}
)
"""Finish reasons counted under their own label; any other: ``other`` (a bounded label set)."""


class RequestClock:
    """Times one request as its caller sees it; every method is safe to call once or not."""

    def __init__(self, metrics: GatewayMetrics, entrypoint: str) -> None:
        self.m = metrics
        self.entrypoint = entrypoint
        self.started = time.perf_counter()
        self.first: float | None = None
        self.last: float | None = None
        self.done = False
        self.m.waiting.labels(entrypoint).inc()

    def piece(self, tokens: int = 1, choice: int = 0) -> None:
        """A streamed piece (of about ``tokens`` tokens) of ``choice`` left for the caller.

        The first piece of any choice is the first token; the inter-token gaps are choice 0's
        (with ``n > 1`` the choices' pieces interleave: a gap between two choices is none).
        """
        now = time.perf_counter()
        e = self.entrypoint
        if self.first is None:
            self.first = now
            self.m.ttft.labels(e).observe(now - self.started)
            self.m.otel_ttft.labels(e).observe(now - self.started)
            self.m.waiting.labels(e).dec()
            self.m.running.labels(e).inc()
        elif choice != 0:
            return
        elif self.last is not None:
            gap = (now - self.last) / max(1, tokens)
            self.m.itl.labels(e).observe(gap)
            self.m.otel_tpot.labels(e).observe(gap)
        if choice == 0:
            self.last = now

    def finish(self, result: GenerationResult | None, *, unary: bool = False) -> None:
        """The request ended (``result``: with a result, else an error or the caller left)."""
        if self.done:
            return
        self.done = True
        e = self.entrypoint
        now = time.perf_counter()
        if self.first is None:
            self.m.waiting.labels(e).dec()
        else:
            self.m.running.labels(e).dec()
        if result is None or result.error is not None:
            return
        usage = result.usage.counts()
        if unary:
            t = result.timings
            if t.first_token and t.received and t.first_token >= t.received:
                ttft = (t.first_token - t.received) / 1000.0
                self.m.ttft.labels(e).observe(ttft)
                self.m.otel_ttft.labels(e).observe(ttft)
                if usage["completion_tokens"] > 1:
                    tpot = max(0.0, now - self.started - ttft) / (usage["completion_tokens"] - 1)
                    self.m.itl.labels(e).observe(tpot)
                    self.m.otel_tpot.labels(e).observe(tpot)
        self.m.e2e.labels(e).observe(now - self.started)
        self.m.otel_duration.labels(e).observe(now - self.started)
        self.m.prompt_tokens.labels(e).inc(usage["prompt_tokens"])
        self.m.generation_tokens.labels(e).inc(usage["completion_tokens"])
        reason = result.finish_reason or "other"  # (n > 1: choice 0's, one count per request)
        self.m.success.labels(e, reason if reason in FINISH_REASONS else "other").inc()
