"""traceparent survives the trip through Kafka headers."""

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from genwire.telemetry.propagation import extract, inject


def test_injected_context_extracts_to_the_same_trace() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("parent") as span:
        headers = inject([("other", b"x")])
    names = [k for k, _ in headers]
    assert "traceparent" in names and "other" in names
    ctx = extract(headers)
    remote = trace.get_current_span(ctx).get_span_context()
    assert remote.trace_id == span.get_span_context().trace_id
    assert remote.span_id == span.get_span_context().span_id
    assert remote.is_remote


def test_missing_headers_give_an_empty_context() -> None:
    assert not trace.get_current_span(extract(None)).get_span_context().is_valid
