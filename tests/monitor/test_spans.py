"""Decoding OTLP payloads: the attributes the monitor reads, bad input, unknown services."""

from __future__ import annotations

import random

import pytest
from genwire_bench.monitor.synth import REFERENCE, SPANS_PER_REQUEST, encode, request_spans
from genwire_monitor.spans import MalformedPayload, decode
from genwire_monitor.stages import TRITON_QUEUE, observations, ordered
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from genwire.telemetry import semconv as sc


def _one_request() -> list:
    by_service = request_spans(REFERENCE, random.Random(1))
    return list(decode(encode(by_service)))


def test_decodes_every_span_with_service_and_wanted_attributes() -> None:
    spans = _one_request()
    assert len(spans) == SPANS_PER_REQUEST == 6
    assert len({s.trace_id for s in spans}) == 1
    inference = next(s for s in spans if s.stage == sc.STAGE_INFERENCE)
    assert inference.service == "genwire-inference"
    assert inference.attrs[sc.GEN_AI_FINISH_REASONS] in (("stop",), ("length",))
    assert isinstance(inference.attrs[sc.GEN_AI_OUTPUT_TOKENS], int)
    assert inference.duration_ms > 0


def test_stage_observations_cover_the_request_path() -> None:
    stages = {stage for s in _one_request() for stage, _ in observations(s)}
    assert {"gateway", "preprocess", "inference", "postprocess", TRITON_QUEUE} <= stages
    assert "kafka genwire.prepared" in stages  # the wait in the topic, from the process span
    assert ordered(sorted(stages))[0] == "gateway"


def test_text_attributes_are_never_kept() -> None:
    span = Span(trace_id=b"t" * 16, span_id=b"s" * 8, name="x", kind=Span.SPAN_KIND_SERVER)
    span.attributes.add(key=sc.GEN_AI_PROMPT).value.string_value = "secret prompt"
    payload = encode({"genwire-gateway": [span]})
    (view,) = decode(payload)
    assert sc.GEN_AI_PROMPT not in view.attrs


def test_unknown_services_are_accepted() -> None:
    span = Span(
        trace_id=b"u" * 16,
        span_id=b"s" * 8,
        name="GET /",
        kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=1,
        end_time_unix_nano=2_000_001,
    )
    (view,) = decode(encode({"someone-else": [span]}))
    assert view.stage == "someone-else"
    assert observations(view) == [("someone-else", 2.0)]


@pytest.mark.parametrize("payload", [b"\xff\xff\xff garbage", b'{"json": true}', b"\x0a\x05abc"])
def test_malformed_payloads_raise_a_clear_error(payload: bytes) -> None:
    with pytest.raises(MalformedPayload):
        list(decode(payload))
