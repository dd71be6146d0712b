"""The census's arithmetic: the helper's lines parsed, two readings subtracted, the tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from genwire_bench import census
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
    requests = {"Produce": 8, "Fetch": 12, "FetchConsumer": 12}
    report = Report(
        seconds=10.0,
        per=4,
        broker_cpu_s=0.2,
        requests=requests,
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
    report = Report(
        seconds=2.0,
        per=None,
        broker_cpu_s=None,
        requests={"Produce": 2},
        messages={},
    )
    out = render(report)
    assert "| request | count | per second |\n" in out
    assert "broker CPU" not in out


def test_a_counter_that_went_down_is_refused() -> None:
    """A broker restarted between the readings starts its counters at zero again."""
    before = parse(READING)
    after = Counters(requests={"Produce": 3}, messages={"genwire.requests": 7})
    with pytest.raises(ValueError, match="Produce"):
        difference(before, after)


def test_a_topic_whose_meter_went_is_left_out_not_refused() -> None:
    """A deleted topic's meter goes with it (and starts from zero if the topic comes back)."""
    before = parse(READING)
    after = Counters(
        requests={"Produce": 12, "Fetch": 20, "FetchConsumer": 20},
        messages={"otlp_spans": 2},
    )
    gained = difference(before, after)
    assert gained.messages == {"otlp_spans": 2}
    assert gained.requests == {"Produce": 2}


@pytest.fixture
def two_readings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """``read_counters`` answers READING, then READING with 6 more produce requests; no JDK,
    no broker (``has_compiler`` is true, the broker's process is not found)."""
    later = Counters({"Produce": 16, "Fetch": 20, "FetchConsumer": 20}, {"genwire.requests": 10})
    readings = [parse(READING), later]
    calls: list[int] = []

    def read(port: int, java: str = "java") -> Counters:
        calls.append(port)
        return readings[len(calls) - 1]

    monkeypatch.setattr(census, "read_counters", read)
    monkeypatch.setattr(census, "has_compiler", lambda java="java": True)
    monkeypatch.setattr(census, "broker_process", lambda bootstrap: None)
    return calls


def test_main_runs_the_command_after_the_double_dash_and_keeps_its_exit_code(
    two_readings: list[int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "census.json"
    argv = ["--jmx-port", "12345", "--per", "3", "--json", str(out), "--", "sh", "-c", "exit 3"]
    assert census.main(argv) == 3
    assert two_readings == [12345, 12345]
    printed = capsys.readouterr().out
    assert "| Produce | 6 |" in printed and "2.00 |" in printed
    data = json.loads(out.read_text())
    assert data["requests"] == {"Produce": 6} and data["total_requests"] == 6
    assert data["messages"] == {"genwire.requests": 3} and data["per"] == 3


def test_main_reports_a_command_that_cannot_start(
    two_readings: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert census.main(["--", "/nonexistent/genwire-census-command"]) == 2
    assert "census:" in capsys.readouterr().err


def test_main_refuses_a_per_of_zero(two_readings: list[int]) -> None:
    with pytest.raises(SystemExit):
        census.main(["--per", "0", "--", "true"])
