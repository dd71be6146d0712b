"""Little's law over the answers' timings: how many requests the model held (pure logic)."""

from __future__ import annotations

import pytest
from genwire_bench.at_model import at_model, interpolate
from genwire_bench.report import render
from genwire_bench.stats import Dist, Load, Summary, compare

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


def test_interpolation_between_the_measured_concurrencies_only() -> None:
    curve = [(4.0, 80.0), (8.0, 120.0)]
    assert interpolate(curve, 6.0) == pytest.approx(100.0)
    assert interpolate(curve, 8.0) == pytest.approx(120.0)
    assert interpolate(curve, 2.0) is None  # below the lowest measured: the curve bends there
    assert interpolate(curve, 8.5) is None  # beyond what was measured: no guess
    assert interpolate([], 1.0) is None
    # With c=1 measured, below it the loop has its one request in flight part of the time.
    assert interpolate([(1.0, 30.0), *curve], 0.5) == pytest.approx(15.0)
    assert interpolate([(1.0, 30.0), *curve], 2.0) == pytest.approx(30.0 + 50.0 / 3)


def test_the_loss_splits_into_time_away_from_the_model_and_the_rest() -> None:
    summaries = [
        _summary("triton", 4, 80.0),
        _summary("triton", 8, 120.0),
        _summary("kafka", 8, 90.0, at_model_ms=60.0),  # 90/s × 0.060 s = 5.4 held
        _summary("grpc", 8, 70.0),  # no timings in its answers: no row
        _summary("kafka", 4, 60.0, at_model_ms=50.0),
    ]
    rows = at_model(summaries, {"kafka": "triton", "grpc": "triton"})
    assert [(r.target, r.load.value) for r in rows] == [("kafka", 8), ("kafka", 4)]
    top = rows[0]
    assert top.in_flight == pytest.approx(5.4)
    assert top.direct_at_load == 120.0
    assert top.direct_in_flight == pytest.approx(94.0)  # 80 + 40 × 1.4 / 4
    assert top.held_share == pytest.approx(94.0 / 120.0)
    assert top.rest_share == pytest.approx(90.0 / 94.0)
    # The two shares multiply back to the throughput against direct Triton at the same c.
    assert top.held_share * top.rest_share == pytest.approx(90.0 / 120.0)
    assert rows[1].in_flight == pytest.approx(3.0) and rows[1].direct_at_load == 80.0


def test_the_report_shows_the_split_only_where_answers_carried_timings() -> None:
    direct, kafka = _summary("triton", 8, 120.0), _summary("kafka", 8, 90.0, at_model_ms=60.0)
    report = _report(
        config={
            "model": "m",
            "requests": 10,
            "rounds": 1,
            "warmup": 0,
            "sampling": {"max_tokens": 32, "temperature": 0, "seed": 1},
        },
        environment={
            "cpus": 2,
            "loadavg_before": [0.0],
            "loadavg_after": [0.0],
            "started_at": "t",
            "duration_s": 1,
        },
        summaries=[direct, kafka],
        overheads=[compare(kafka, direct)],
    )
    text = render(report)
    assert "At the model" in text
    rows = [x.split() for x in text.splitlines() if x.split()[:3] == ["kafka", "c=8", "90.0"]]
    assert rows == [["kafka", "c=8", "90.0", "60.0", "5.40", "-", "-", "-"]]  # none at 5.4
    plain = _report(
        config=report.config,
        environment=report.environment,
        summaries=[direct, _summary("kafka", 8, 90.0)],
        overheads=[compare(_summary("kafka", 8, 90.0), direct)],
    )
    assert "At the model" not in render(plain)
