"""Per-hop breakdown from Jaeger's trace JSON (a hand-built trace of the Kafka path)."""

from __future__ import annotations

from typing import Any

import pytest
from genwire_bench.traces import breakdown, hop_samples, parse_trace, trace_span_ms

from genwire.telemetry import semconv as sc


def span(
    sid: str,
    name: str,
    start_ms: float,
    dur_ms: float,
    parent: str | None = None,
    proc: str = "p1",
    tags: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "spanID": sid,
        "operationName": name,
        "references": [{"refType": "CHILD_OF", "spanID": parent}] if parent else [],
        "startTime": int(start_ms * 1000),
        "duration": int(dur_ms * 1000),
        "processID": proc,
        "tags": [{"key": k, "type": "float64", "value": v} for k, v in (tags or {}).items()],
    }


def kafka_trace(offset_ms: float = 0.0, wait: float = 2.0) -> dict[str, Any]:
    o = offset_ms
    return {
        "traceID": "t",
        "processes": {
            "p1": {"serviceName": "genwire-preprocess"},
            "p2": {"serviceName": "genwire-inference"},
        },
        "spans": [
            span(
                "a",
                "genwire.requests process",
                o + 3.0,
                1.0,
                parent="root",
                tags={sc.STAGE: "preprocess", sc.WAIT_MS: wait},
            ),
            span("b", "genwire.prepared publish", o + 3.5, 0.1, parent="a"),
            span(
                "c",
                "genwire.prepared process",
                o + 6.0,
                30.0,
                parent="b",
                proc="p2",
                tags={sc.STAGE: "inference", sc.WAIT_MS: 2.5},
            ),
            span(
                "d",
                "triton.generate",
                o + 6.5,
                28.0,
                parent="c",
                proc="p2",
                tags={sc.QUEUE_MS: 0.3, sc.COMPUTE_MS: 27.0},
            ),
            span("e", "unrelated", o + 40.0, 1.0, parent="c", proc="p9"),
        ],
    }


def test_parse_trace_reads_parents_services_and_tags() -> None:
    spans = parse_trace(kafka_trace())
    by_id = {s.span_id: s for s in spans}
    assert by_id["c"].parent_id == "b"
    assert by_id["c"].service == "genwire-inference"
    assert by_id["e"].service == "?"  # its process is not listed
    assert by_id["a"].tags[sc.WAIT_MS] == 2.0
    assert by_id["d"].duration_us == 28_000


def test_hops_are_waits_transits_stage_times_and_triton() -> None:
    samples = {s.hop: s for s in hop_samples(parse_trace(kafka_trace()))}
    assert samples["genwire.requests wait (attr)"].ms == 2.0
    assert samples["preprocess: process genwire.requests"].ms == pytest.approx(1.0)
    assert samples["genwire.prepared transit"].ms == pytest.approx(2.5)  # publish 3.5 → 6.0
    assert samples["genwire.prepared wait (attr)"].ms == 2.5
    assert samples["inference: process genwire.prepared"].ms == pytest.approx(30.0)
    assert samples["triton.generate"].ms == pytest.approx(28.0)
    assert samples["triton.generate queue"].ms == 0.3
    assert samples["triton.generate compute"].ms == 27.0
    assert samples["?: unrelated"].offset_ms == pytest.approx(37.0)
    assert not any(h.endswith("publish") for h in samples)
    # the first process span's parent (our client's) is not in the trace: no transit for it
    assert "genwire.requests transit" not in samples


def test_breakdown_orders_hops_by_position_and_counts_traces() -> None:
    traces = [
        parse_trace(kafka_trace(0.0, wait=1.0)),
        parse_trace(kafka_trace(100.0, wait=3.0)),
        [],
    ]
    b = breakdown(traces, wanted=3)
    assert (b.traces_found, b.traces_wanted) == (2, 3)
    hops = [h.hop for h in b.hops]
    assert hops.index("genwire.requests wait (attr)") < hops.index("genwire.prepared transit")
    assert hops.index("genwire.prepared transit") < hops.index("triton.generate")
    wait = next(h for h in b.hops if h.hop == "genwire.requests wait (attr)")
    assert wait.ms.p50 == pytest.approx(2.0) and wait.per_trace == 1.0
    assert b.trace_span is not None and b.trace_span.p50 == pytest.approx(38.0)


def test_trace_span_of_nothing() -> None:
    assert trace_span_ms([]) is None
    assert hop_samples([]) == []


def test_client_hops_place_the_request_around_its_spans() -> None:
    spans = parse_trace(kafka_trace())  # first span at 3.0 ms, last publish at 3.5 ms
    samples = {s.hop: s for s in hop_samples(spans, client=(1.0, 50.0))}
    assert samples["client → first span"].ms == pytest.approx(2.0)
    assert samples["last publish → client"].ms == pytest.approx(46.5)
    b = breakdown([spans, spans], wanted=2, clients=[(1.0, 50.0), None])
    before = next(h for h in b.hops if h.hop == "client → first span")
    assert before.per_trace == 0.5 and b.hops[0].hop == "client → first span"
