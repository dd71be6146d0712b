"""The census's arithmetic: the helper's lines parsed, two readings subtracted, the tables."""

from __future__ import annotations

from genwire_bench.census import Counters, Report, difference, parse, render

READING = (
    "request\tProduce\t10\n"
    "request\tFetch\t20\n"
    "request\tFetchConsumer\t20\n"
    "messages\tgenwire.requests\t7\n"
    "a line that is not a counter\n"
    "other\tkind\t3\n"
)


def test_parse_reads_counters_and_skips_anything_else() -> None:
    counters = parse(READING)
    assert counters.requests == {"Produce": 10, "Fetch": 20, "FetchConsumer": 20}
    assert counters.messages == {"genwire.requests": 7}


def test_difference_keeps_what_moved_including_new_counters() -> None:
    before = parse(READING)
    after = Counters(
        requests={"Produce": 14, "Fetch": 20, "FetchConsumer": 20, "OffsetCommit": 2},
        messages={"genwire.requests": 11, "otlp_spans": 3},
    )
    gained = difference(before, after)
    assert gained.requests == {"Produce": 4, "OffsetCommit": 2}
    assert gained.messages == {"genwire.requests": 4, "otlp_spans": 3}


def test_render_totals_each_request_once_and_divides_by_per() -> None:
    report = Report(
        seconds=10.0,
        per=4,
        broker_cpu_s=0.2,
        requests={"Produce": 8, "Fetch": 12, "FetchConsumer": 12},
        messages={"genwire.requests": 4},
    )
    out = render(report)
    assert "| Fetch | 12 | 1.2 | 3.00 |" in out
    assert "| FetchConsumer (of Fetch) | 12 | 1.2 | 3.00 |" in out
    # FetchConsumer is a part of Fetch: the total counts 8 + 12, not 32.
    assert "| **all** | 20 | 2.0 | 5.00 |" in out
    assert "| genwire.requests | 4 | 0.4 | 1.00 |" in out
    assert "broker CPU: 200 core-ms (20.0 per second), 10000 µs per request served" in out
    assert "50.00 core-ms per request of the 4" in out


def test_render_without_per_has_no_per_column() -> None:
    report = Report(seconds=2.0, per=None, broker_cpu_s=None, requests={"Produce": 2}, messages={})
    out = render(report)
    assert "| request | count | per second |\n" in out
    assert "broker CPU" not in out
