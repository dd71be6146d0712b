"""genwire's span encoder writes the bytes of the message the SDK's OTLP encoder builds."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import AttributeValue

from genwire.telemetry.otlp_wire import MAX_NESTING, encode_spans
from genwire.topics import Topic


def _provider(
    exporter: InMemorySpanExporter, service: str, limits: SpanLimits | None = None
) -> TracerProvider:
    provider = TracerProvider(
        resource=Resource.create({"service.name": service, "service.version": "1.2"}),
        span_limits=limits,
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def _both(spans: Sequence[ReadableSpan]) -> tuple[ExportTraceServiceRequest, bytes]:
    return sdk_encode(spans), encode_spans(spans)


def _parsed(payload: bytes) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest.FromString(payload)


def test_every_attribute_type_event_link_and_status_as_the_sdk_encodes_them() -> None:
    exporter = InMemorySpanExporter()
    provider = _provider(exporter, "genwire-test")
    tracer = provider.get_tracer("genwire.kafka", "0.3", attributes={"scope.attr": "s"})
    other = provider.get_tracer("genwire.other")  # a second scope, without a version
    remote = SpanContext(
        trace_id=0x0102030405060708090A0B0C0D0E0F10,
        span_id=0x1112131415161718,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "v1"), ("genwire", "x")]),
    )
    attributes: dict[str, AttributeValue] = {
        "str": "kafka",
        "unicode": "ħé — 日本",
        "long": "x" * 300,  # lengths past one varint byte at every level
        "empty": "",
        "true": True,
        "false": False,
        "zero": 0,
        "small": 127,
        "offset": 2**40 + 7,
        "negative": -5,
        "int64.max": 2**63 - 1,
        "int64.min": -(2**63),
        "float": 1.25,
        "negative.float": -0.0,
        "strs": ("a", "b"),
        "ints": (1, -2, 300),
        "floats": (0.5,),
        "bools": (True, False),
    }
    ctx = trace.set_span_in_context(trace.NonRecordingSpan(remote))
    with tracer.start_as_current_span(
        "genwire.prepared process", context=ctx, kind=SpanKind.CONSUMER, attributes=attributes
    ) as parent:
        parent.add_event("retry", {"attempt": 2, "reason": "timeout"})
        parent.add_event("bare")
        with other.start_as_current_span(
            "genwire.results publish",
            kind=SpanKind.PRODUCER,
            links=[Link(remote, {"link.attr": 1}), Link(parent.get_span_context())],
        ) as child:
            child.set_status(Status(StatusCode.ERROR, "broker down"))
    for kind in (SpanKind.INTERNAL, SpanKind.SERVER, SpanKind.CLIENT):
        with tracer.start_as_current_span(f"k{kind.value}", kind=kind) as span:
            span.set_status(Status(StatusCode.OK))
    with tracer.start_as_current_span(""):  # an empty name, an unset status
        pass
    spans = exporter.get_finished_spans()
    assert len(spans) == 6
    theirs, ours = _both(spans)
    assert _parsed(ours) == theirs
    # The parsed form hides nothing the SDK wrote: serialised again they are the same bytes.
    assert _parsed(ours).SerializeToString(deterministic=True) == theirs.SerializeToString(
        deterministic=True
    )


def test_spans_of_two_providers_keep_their_own_resources() -> None:
    first, second = InMemorySpanExporter(), InMemorySpanExporter()
    a, b = _provider(first, "a"), _provider(second, "b")
    for provider in (a, b, a):
        with provider.get_tracer("t").start_as_current_span("s"):
            pass
    spans = [*first.get_finished_spans(), *second.get_finished_spans()]
    theirs, ours = _both(spans)
    parsed = _parsed(ours)
    assert parsed == theirs
    services = [
        {kv.key: kv.value.string_value for kv in rs.resource.attributes}["service.name"]
        for rs in parsed.resource_spans
    ]
    assert services == ["a", "b"]
    assert [len(rs.scope_spans[0].spans) for rs in parsed.resource_spans] == [2, 1]


def test_equal_resources_and_scopes_of_two_providers_are_one_group_as_in_the_sdk() -> None:
    first, second = InMemorySpanExporter(), InMemorySpanExporter()
    a, b = _provider(first, "same"), _provider(second, "same")
    for provider, name in ((a, "1"), (b, "2"), (a, "3")):
        with provider.get_tracer("lib", "1").start_as_current_span(name):
            pass
    # Interleaved: the group keeps the batch's order, not each provider's.
    spans = [first.get_finished_spans()[0], second.get_finished_spans()[0]]
    spans.append(first.get_finished_spans()[1])
    theirs, ours = _both(spans)
    parsed = _parsed(ours)
    assert parsed == theirs
    assert len(parsed.resource_spans) == 1
    assert len(parsed.resource_spans[0].scope_spans) == 1
    assert [s.name for s in parsed.resource_spans[0].scope_spans[0].spans] == ["1", "2", "3"]


def test_dropped_counts_are_written() -> None:
    exporter = InMemorySpanExporter()
    limits = SpanLimits(max_span_attributes=2, max_events=1, max_links=1)
    provider = _provider(exporter, "limited", limits)
    link = Link(SpanContext(1, 2, is_remote=True))
    with provider.get_tracer("t").start_as_current_span(
        "s", attributes={"a": 1, "b": 2, "c": 3}, links=[link, link]
    ) as span:
        span.add_event("one")
        span.add_event("two")
    theirs, ours = _both(exporter.get_finished_spans())
    parsed = _parsed(ours)
    assert parsed == theirs
    written = parsed.resource_spans[0].scope_spans[0].spans[0]
    assert (
        written.dropped_attributes_count,
        written.dropped_events_count,
        written.dropped_links_count,
    ) == (1, 1, 1)


def test_an_attribute_that_cannot_be_encoded_is_left_out_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exporter = InMemorySpanExporter()
    provider = _provider(exporter, "odd")
    with provider.get_tracer("t").start_as_current_span(
        "s", attributes={"kept": "yes", "too.big": 2**64, "bad.utf8": "\udcff"}
    ):
        pass
    spans = exporter.get_finished_spans()
    with caplog.at_level(logging.WARNING, logger="genwire.telemetry.otlp_wire"):
        ours = _parsed(encode_spans(spans))
    written = ours.resource_spans[0].scope_spans[0].spans[0]
    assert [kv.key for kv in written.attributes] == ["kept"]
    assert {r.getMessage().split()[2] for r in caplog.records} == {"too.big", "bad.utf8"}


def test_nesting_too_deep_for_a_parser_leaves_that_attribute_out() -> None:
    exporter = InMemorySpanExporter()
    provider = _provider(exporter, "deep")
    deepest_kept: AttributeValue = "leaf"
    for _ in range(MAX_NESTING):
        deepest_kept = [deepest_kept]  # type: ignore[list-item]
    huge: object = 1
    for _ in range(500):  # deep enough to exhaust a recursive encoder's stack
        huge = {"a": huge}
    with provider.get_tracer("t").start_as_current_span("s") as span:
        span.set_attribute("kept", deepest_kept)
        span.set_attribute("too.deep", [deepest_kept])
        span.set_attribute("far.too.deep", huge)  # type: ignore[arg-type]
        span.set_attribute("after", 1)
    written = _parsed(encode_spans(exporter.get_finished_spans()))
    attributes = written.resource_spans[0].scope_spans[0].spans[0].attributes
    assert [kv.key for kv in attributes] == ["kept", "after"]


def test_maps_nested_to_the_limit_in_a_link_still_parse_and_one_more_is_left_out() -> None:
    exporter = InMemorySpanExporter()
    provider = _provider(exporter, "maps")
    at_limit: object = "leaf"
    for _ in range(MAX_NESTING):
        at_limit = {"m": at_limit}
    over = {"m": at_limit}
    link = Link(
        SpanContext(1, 2, is_remote=True),
        {"at.limit": at_limit, "over": over},  # type: ignore[dict-item]
    )
    with provider.get_tracer("t").start_as_current_span("s", links=[link]):
        pass
    spans = exporter.get_finished_spans()
    # Links are the deepest place an attribute sits: this must still parse.
    written = _parsed(encode_spans(spans)).resource_spans[0].scope_spans[0].spans[0]
    assert [kv.key for kv in written.links[0].attributes] == ["at.limit"]


def test_a_span_that_cannot_be_encoded_is_left_out_and_the_others_go(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exporter = InMemorySpanExporter()
    tracer = _provider(exporter, "bad").get_tracer("t")
    with tracer.start_as_current_span("before"):
        pass
    with tracer.start_as_current_span("failing") as span:
        span.set_status(Status(StatusCode.ERROR, "bad text \udcff from an error message"))
    with tracer.start_as_current_span("after"):
        pass
    with caplog.at_level(logging.WARNING, logger="genwire.telemetry.otlp_wire"):
        written = _parsed(encode_spans(exporter.get_finished_spans()))
    names = [s.name for s in written.resource_spans[0].scope_spans[0].spans]
    assert names == ["before", "after"]
    assert any("'failing' not exported" in r.getMessage() for r in caplog.records)


def test_a_str_enum_value_is_its_text() -> None:
    exporter = InMemorySpanExporter()
    with (
        _provider(exporter, "enum")
        .get_tracer("t")
        .start_as_current_span("s", attributes={"topic": Topic.PREPARED})
    ):
        pass
    theirs, ours = _both(exporter.get_finished_spans())
    assert _parsed(ours) == theirs
    written = _parsed(ours).resource_spans[0].scope_spans[0].spans[0].attributes[0]
    assert written.value.string_value == "genwire.prepared"


def test_nothing_to_encode_is_an_empty_request() -> None:
    assert encode_spans([]) == b""
    assert _parsed(encode_spans([])) == sdk_encode([])
