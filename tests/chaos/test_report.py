"""Verdicts and the report of a scenario: table and JSON."""

from __future__ import annotations

import json
from pathlib import Path

from genwire_chaos.report import FaultWindow, ScenarioReport, format_table, write_json
from genwire_chaos.scenarios import judge
from genwire_chaos.tracker import Outcome, ResultTracker

OK = Outcome(text="t", finish_reason="length")


def _report(tracker: ResultTracker, stuck: list[str] | None = None) -> ScenarioReport:
    report = ScenarioReport("kill-inference", "inference SIGKILLed", params={"kills": 2})
    report.figures = tracker.summary(load_start=0.0, fault_ends=[3.0])
    report.stuck = stuck or []
    report.faults = [FaultWindow("SIGKILL inference", 1.0, 3.0, "back after 2.0 s")]
    report.failures = judge(report)
    return report


def test_a_clean_run_passes() -> None:
    tracker = ResultTracker()
    for i in range(10):
        tracker.acked(f"r{i}", 0.0)
        tracker.record(f"r{i}", OK, 0.5 * i)
    tracker.record("r1", OK, 6.0)  # an identical duplicate is fine
    report = _report(tracker)
    assert report.passed and report.verdict == "PASS", report.failures


def test_loss_errors_inconsistency_and_stuck_partitions_fail() -> None:
    tracker = ResultTracker()
    for i in range(4):
        tracker.acked(f"r{i}", 0.0)
    tracker.record("r0", OK, 4.0)
    tracker.record("r0", Outcome(text="other", finish_reason="length"), 4.5)
    tracker.record("r1", Outcome(finish_reason="error", error_code="unavailable"), 5.0)
    tracker.record("r2", OK, 5.5)
    report = _report(tracker, stuck=["genwire-inference genwire.prepared[1] 10/12"])
    text = " | ".join(report.failures)
    assert "1 request(s) lost" in text
    assert "1 request id(s) answered inconsistently" in text
    assert "unavailable=1" in text
    assert "1 partition(s) stuck" in text
    assert report.verdict == "FAIL"


def test_table_and_json(tmp_path: Path) -> None:
    tracker = ResultTracker()
    tracker.acked("a", 0.0)
    tracker.acked("b", 0.0)
    tracker.record("a", OK, 1.0)
    report = _report(tracker)
    skipped = ScenarioReport("brokers3-kill", "cluster", skipped="not provided")
    table = format_table([report, skipped])
    first, second = table.splitlines()[1:3]
    assert first.split()[:5] == ["kill-inference", "FAIL", "2", "1", "1"]
    assert second.split()[:2] == ["brokers3-kill", "SKIP"]
    assert "FAILED: 1 request(s) lost" in table
    assert "lost (first ids): b" in table
    assert "fault: SIGKILL inference from 1.0 s to 3.0 s" in table
    path = tmp_path / "out" / "chaos.json"
    write_json([report, skipped], path, {"profile": "short"})
    data = json.loads(path.read_text())
    assert data["passed"] is False
    first_json = data["scenarios"][0]
    assert first_json["verdict"] == "FAIL"
    assert first_json["figures"]["lost"] == 1
    assert first_json["figures"]["inconsistent_duplicates"] == 0
    assert first_json["figures"]["recoveries_s"] == [None]


def test_groups_are_checked_on_the_topics_they_consume() -> None:
    from aiokafka import TopicPartition
    from genwire_chaos.kafka_io import group_topics

    assert group_topics("genwire-inference", []) == {"genwire.prepared"}
    assert group_topics("genwire-preprocess-retry", []) == {"genwire.retry"}
    committed = [TopicPartition("genwire.other", 0)]
    assert group_topics("genwire-custom", committed) == {"genwire.other"}


def test_only_unexpected_restarts_count() -> None:
    from genwire_chaos.faults import ProcessState
    from genwire_chaos.scenarios import _changed

    before = {
        "preprocess": ProcessState(10, 0),
        "inference": ProcessState(11, 0),
        "gateway": ProcessState(12, 0),
    }
    after = {
        "preprocess": ProcessState(20, 2),  # killed twice by the plan: expected
        "inference": ProcessState(11, 1),  # same pid but the supervisor says it restarted
        "gateway": ProcessState(30, 1),
    }
    assert _changed(before, after, ["preprocess"]) == {"inference": 1, "gateway": 1}
