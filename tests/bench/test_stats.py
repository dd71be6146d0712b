"""Percentiles, summaries and overhead arithmetic of the benchmark report."""

from __future__ import annotations

import time

import pytest
from genwire_bench import stats
from genwire_bench.records import RequestRecord
from genwire_bench.stats import Load, compare, distribution, summarize, wall_duration


def rec(
    index: int,
    start: float,
    ms: float,
    *,
    target: str = "t",
    tokens: int = 10,
    first_ms: float | None = None,
    error: str | None = None,
    round_no: int = 0,
) -> RequestRecord:
    r = RequestRecord(target=target, index=index, request_id=f"r{index}", start=start)
    r.end = start + ms / 1000
    r.output_tokens = tokens
    r.first_token = None if first_ms is None else start + first_ms / 1000
    r.error = error
    r.extra["round"] = round_no
    return r


def test_distribution_percentiles_interpolate() -> None:
    d = distribution(float(v) for v in range(1, 101))
    assert d is not None
    assert d.count == 100
    assert d.p50 == pytest.approx(50.5)
    assert d.p95 == pytest.approx(95.05)
    assert d.p99 == pytest.approx(99.01)
    assert (d.min, d.max, d.mean) == (1.0, 100.0, 50.5)


def test_distribution_skips_missing_values_and_is_none_when_empty() -> None:
    assert distribution([None, None]) is None
    d = distribution([None, 4.0])
    assert d is not None and d.count == 1 and d.p99 == 4.0


def test_record_latencies_ttft_and_tpot() -> None:
    r = rec(0, 10.0, 100.0, tokens=11, first_ms=20.0)
    assert r.e2e_ms == pytest.approx(100.0)
    assert r.ttft_ms == pytest.approx(20.0)
    assert r.tpot_ms == pytest.approx(8.0)  # 80 ms over the 10 tokens after the first
    assert rec(1, 0.0, 5.0).ttft_ms is None
    assert rec(2, 0.0, 5.0, tokens=1, first_ms=5.0).tpot_ms is None


def test_open_loop_latency_counts_from_the_due_time() -> None:
    r = rec(0, 10.0, 100.0)
    r.scheduled = 9.95  # sent 50 ms late: the caller waited those 50 ms too
    assert r.e2e_ms == pytest.approx(150.0)


def test_summarize_counts_throughput_over_wall_time_and_errors_apart() -> None:
    records = [
        rec(0, 0.0, 500.0, tokens=10),
        rec(1, 0.5, 500.0, tokens=20),  # ends at 1.0 s
        rec(2, 0.2, 100.0, error="timeout: no answer"),
        rec(3, 0.3, 100.0, error="RuntimeError: boom"),
    ]
    s = summarize("t", Load("closed", 2), records)
    assert s.requests == 4 and s.errors == 2
    assert s.duration_s == pytest.approx(1.0)
    assert s.requests_per_s == pytest.approx(2.0)
    assert s.output_tokens_per_s == pytest.approx(30.0)
    assert s.e2e is not None and s.e2e.count == 2 and s.e2e.p50 == pytest.approx(500.0)
    assert s.error_kinds == {"timeout": 1, "RuntimeError": 1}
    assert s.ttft is None


def test_summarize_adds_the_wall_time_of_separate_rounds() -> None:
    records = [rec(0, 0.0, 1000.0, round_no=0), rec(1, 100.0, 1000.0, round_no=1)]
    s = summarize("t", Load("closed", 1), records)
    assert s.duration_s == pytest.approx(2.0)  # not the 101 s between the rounds
    assert wall_duration(records) == pytest.approx(101.0)


def test_compare_reports_added_latency_ratio_and_pairs() -> None:
    base = [rec(i, float(i), 10.0 + i, target="triton") for i in range(10)]
    pipe = [rec(i, float(i), 13.0 + i, target="kafka") for i in range(10)]
    pipe[3].output_tokens = 9  # one generation of another length: flagged
    load = Load("closed", 1)
    o = compare(summarize("kafka", load, pipe), summarize("triton", load, base), pipe, base)
    assert o.target == "kafka" and o.baseline == "triton"
    assert o.p50_ms == pytest.approx(3.0)
    assert o.p99_ms == pytest.approx(3.0)
    assert o.paired_p50_ms == pytest.approx(3.0)
    assert o.ratio_p50 == pytest.approx(17.5 / 14.5)
    assert o.throughput_ratio == pytest.approx(9.019 / 9.022)  # same count, longer wall
    assert o.token_mismatches == 1
    assert o.ttft_p50_ms is None


def test_compare_without_successes_gives_no_numbers() -> None:
    load = Load("closed", 1)
    failed = [rec(0, 0.0, 1.0, error="x: y")]
    o = compare(summarize("a", load, failed), summarize("b", load, failed), failed, failed)
    assert o.p50_ms is None and o.ratio_p50 is None and o.paired_p50_ms is None
    assert o.throughput_ratio is None


def test_load_labels() -> None:
    assert Load("closed", 4).label == "c=4"
    assert Load("open", 2.5).label == "r=2.5/s"


def test_laps_time_each_piece_of_a_path(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 1.0, 1.002, 1.010, 2.0, 2.001, 2.005])
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    laps = stats.Laps()  # 0.0
    for _ in range(2):
        laps.start()  # 1.0, then 2.0
        laps.lap("claim")  # 2 ms, then 1 ms
        laps.lap("tokenize")  # 8 ms, then 4 ms
    assert laps.ms["claim"] == pytest.approx([2.0, 1.0])
    assert laps.ms["tokenize"] == pytest.approx([8.0, 4.0])
    text = laps.report("pieces")
    assert text.splitlines()[0].startswith("pieces  (load average ")
    assert [line.split()[0] for line in text.splitlines()[2:]] == ["claim", "tokenize"]
    assert text.splitlines()[2].split()[1:] == ["1.500", "1.950", "1.500"]
