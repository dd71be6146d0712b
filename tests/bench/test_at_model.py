"""Little's law over the model's own time: how many requests it held (pure logic)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from genwire_bench.at_model import at_model, interpolate
from genwire_bench.drivers import gateway, kafka, triton
from genwire_bench.records import MODEL_MS, RequestRecord
from genwire_bench.report import render
from genwire_bench.stats import Dist, Load, Summary, compare, summarize
from google.protobuf.duration_pb2 import Duration

from genwire.events import Timings
from genwire.proto.v1 import generation_pb2 as pb
from genwire.triton_io import Output
from tests.bench.test_runner_report import _report


def _summary(target: str, c: int, rps: float, at_model_ms: float | None = None) -> Summary:
    at = None
    if at_model_ms is not None:
        at = Dist(count=10, mean=at_model_ms, p50=at_model_ms, p95=0, p99=0, min=0, max=0)
    return Summary(
        target=target,
        load=Load("closed", c),
        requests=10,
        errors=0,
        duration_s=10 / rps,
        requests_per_s=rps,
        output_tokens_per_s=rps * 32,
        e2e=Dist(count=10, mean=50, p50=50, p95=60, p99=70, min=40, max=80),
        ttft=None,
        tpot=None,
        at_model=at,
    )


def test_interpolation_between_measured_points_only() -> None:
    curve = [(4.0, 80.0), (8.0, 120.0)]
    mid = interpolate(curve, 6.0)
    assert mid is not None and (mid.value, mid.span) == (pytest.approx(100.0), 4.0)
    reading = interpolate(curve, 8.0)
    assert reading is not None and (reading.value, reading.span) == (120.0, 0.0)
    assert interpolate(curve, 2.0) is None  # below the lowest point: the curve bends there
    assert interpolate(curve, 8.5) is None  # beyond what was measured: no guess
    assert interpolate([], 1.0) is None
    # A phase that held one or less: below it the model holds its one request part of the time.
    low = [(0.9, 30.0), *curve]
    half = interpolate(low, 0.45)
    assert half is not None and half.value == pytest.approx(15.0)
    two = interpolate(low, 2.0)
    assert two is not None and two.value == pytest.approx(30.0 + 50.0 * 1.1 / 3.1)


def test_the_loss_splits_into_time_away_from_the_model_and_the_rest() -> None:
    summaries = [
        _summary("triton", 4, 80.0, at_model_ms=45.0),  # holds 3.6
        _summary("triton", 8, 120.0, at_model_ms=62.5),  # holds 7.5
        _summary("kafka", 8, 90.0, at_model_ms=60.0),  # 90/s × 0.060 s = 5.4 held
        _summary("grpc", 8, 70.0),  # no model time in its answers: no row
        _summary("kafka", 4, 60.0, at_model_ms=50.0),  # 3.0 held: below triton's lowest
    ]
    rows = at_model(summaries, {"kafka": "triton", "grpc": "triton"})
    assert [(r.target, r.load.value) for r in rows] == [("kafka", 8), ("kafka", 4)]
    top = rows[0]
    assert top.held == pytest.approx(5.4)
    assert top.direct_held == pytest.approx(7.5)
    assert top.direct_at_load == 120.0
    assert top.direct_at_held is not None
    assert top.direct_at_held.value == pytest.approx(80.0 + 40.0 * 1.8 / 3.9)
    assert top.rough  # read between points 3.9 held apart
    assert top.held_share == pytest.approx(98.46 / 120.0, rel=1e-3)
    assert top.rest_share == pytest.approx(90.0 / 98.46, rel=1e-3)
    low = rows[1]
    assert low.held == pytest.approx(3.0) and low.direct_at_held is None
    assert low.held_share is None and low.rest_share is None and not low.rough


def test_direct_phases_without_the_models_time_count_their_concurrency() -> None:
    for d4 in (_summary("triton", 4, 80.0), _summary("triton", 4, 80.0, at_model_ms=45.0)):
        # None of them reports it, or only some: one axis for all, the concurrency.
        summaries = [d4, _summary("triton", 6, 100.0), _summary("kafka", 6, 70.0, 70.0)]
        (row,) = at_model(summaries, {"kafka": "triton"})  # 4.9 held
        assert row.direct_held is None
        assert row.direct_at_held is not None
        assert row.direct_at_held.value == pytest.approx(89.0)
        assert not row.rough
    d6, k6 = summaries[1], summaries[2]
    rows, _ = _rows(_report(**_env(), summaries=summaries, overheads=[compare(k6, d6)]))
    assert rows == [["kafka", "c=6", "70.0", "70.0", "4.90", "-", "89.0", "89%", "79%"]]


def test_the_rough_mark_and_the_zero_point_at_their_boundaries() -> None:
    exactly_two = interpolate([(3.0, 80.0), (5.0, 100.0)], 4.0)
    assert exactly_two is not None and exactly_two.span == 2.0  # not past WIDE: not rough
    one = interpolate([(1.0, 30.0), (3.0, 80.0)], 0.5)  # a phase that held exactly one
    assert one is not None and one.value == pytest.approx(15.0)
    assert interpolate([(1.01, 30.0), (3.0, 80.0)], 0.5) is None


def test_summaries_average_the_models_time_over_the_answers_that_have_it() -> None:
    def record(i: int, at: float | None, error: str | None = None) -> RequestRecord:
        r = RequestRecord("kafka", i, f"r{i}", start=float(i), end=i + 0.05, error=error)
        if at is not None:
            r.extra[MODEL_MS] = at
        return r

    records = [record(0, 40.0), record(1, 20.0), record(2, None), record(3, 900.0, "timeout")]
    s = summarize("kafka", Load("closed", 1), records)
    assert s.at_model is not None and s.at_model.count == 2 and s.at_model.mean == 30.0
    assert summarize("kafka", Load("closed", 1), [record(0, None)]).at_model is None


def test_each_driver_reads_the_models_time_from_its_answer() -> None:
    assert kafka.model_ms(Timings(triton_queue_ms=1.5, triton_compute_ms=40.0)) == 41.5
    assert kafka.model_ms(Timings(triton_compute_ms=40.0)) is None  # no answer from the model
    reply = pb.Timings(
        triton_queue=Duration(nanos=1_500_000), triton_compute=Duration(seconds=1, nanos=250_000)
    )
    assert gateway.model_ms(reply) == pytest.approx(1001.75)
    assert gateway.model_ms(pb.Timings(triton_compute=Duration(seconds=1))) is None
    # A zero queue is a real reading (the field is set), not a missing one.
    zero = pb.Timings(triton_queue=Duration(), triton_compute=Duration(nanos=2_000_000))
    assert gateway.model_ms(zero) == pytest.approx(2.0)

    class Final:
        def __init__(self, **outputs: float) -> None:
            self.outputs = outputs

        def as_numpy(self, name: str) -> Any:
            v = self.outputs.get(name)
            return None if v is None else np.asarray([v], dtype=np.float32)

    final = Final(**{Output.QUEUE_MS: 0.5, Output.COMPUTE_MS: 30.25})
    assert triton.model_ms(final) == pytest.approx(30.75)
    assert triton.model_ms(Final(**{Output.COMPUTE_MS: 30.0})) is None


def _env() -> dict[str, Any]:
    return {
        "config": {
            "model": "m",
            "requests": 10,
            "rounds": 1,
            "warmup": 0,
            "sampling": {"max_tokens": 32, "temperature": 0, "seed": 1},
        },
        "environment": {
            "cpus": 2,
            "loadavg_before": [0.0],
            "loadavg_after": [0.0],
            "started_at": "t",
            "duration_s": 1,
        },
    }


def _rows(report: Any) -> tuple[list[list[str]], list[str]]:
    """The table's rows (split) and the lines after it, up to the next blank line."""
    text = render(report).splitlines()
    start = next(i for i, x in enumerate(text) if x.startswith("At the model"))
    end = text.index("", start)
    body = text[start + 3 : end]  # after the title, the header and its rule
    return [x.split() for x in body if not x.startswith("  ~:")], body


def test_the_report_shows_the_split_and_marks_a_rough_reading() -> None:
    d6, d8 = _summary("triton", 6, 100.0, 58.0), _summary("triton", 8, 120.0, 62.5)
    k6 = _summary("kafka", 6, 100.0, at_model_ms=60.0)  # 6.0 held: between 5.8 and 7.5
    rows, body = _rows(_report(**_env(), summaries=[d6, d8, k6], overheads=[compare(k6, d6)]))
    # 100 + 20 × 0.2 / 1.7 = 102.35 req/s with 6 held; 102.35 / 100; 100 / 102.35.
    assert rows == [["kafka", "c=6", "100.0", "60.0", "6.00", "5.80", "102.4", "102%", "98%"]]
    assert len(body) == 1  # 1.7 apart: a close reading, no footnote

    d4 = _summary("triton", 4, 80.0, 37.5)  # 3.0 held
    k8 = _summary("kafka", 8, 90.0, at_model_ms=60.0)  # 5.4 held: 80 + 40 × 2.4 / 4.5
    rows, body = _rows(_report(**_env(), summaries=[d4, d8, k8], overheads=[compare(k8, d8)]))
    assert rows == [["kafka", "c=8", "90.0", "60.0", "5.40", "7.50", "~101.3", "84%", "89%"]]
    assert body[-1].startswith("  ~: read between direct phases more than 2 held apart")

    d5 = _summary("triton", 5, 100.0, 58.0)  # 5.8 held: none at or below k8's 5.4
    rows, _ = _rows(_report(**_env(), summaries=[d5, d8, k8], overheads=[compare(k8, d8)]))
    assert rows == [["kafka", "c=8", "90.0", "60.0", "5.40", "7.50", "-", "-", "-"]]

    plain = _summary("kafka", 8, 90.0)
    report = _report(**_env(), summaries=[d8, plain], overheads=[compare(plain, d8)])
    assert not any(x.startswith("At the model") for x in render(report).splitlines())
