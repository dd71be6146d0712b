"""The fault suite's counting: lost, errors, duplicates, inconsistent duplicates, gaps, recovery."""

from __future__ import annotations

import pytest
from genwire_chaos.tracker import Outcome, ResultTracker, longest_gap, recovery_after

OK = Outcome(text="hello", finish_reason="length")


def _tracker(ids: list[str], at: float = 0.0) -> ResultTracker:
    tracker = ResultTracker()
    for rid in ids:
        tracker.expect(rid)
        tracker.acked(rid, at)
    return tracker


def test_counts_lost_errors_and_results() -> None:
    tracker = _tracker(["a", "b", "c", "d"])
    tracker.record("a", OK, 1.0)
    tracker.record("b", Outcome(finish_reason="error", error_code="unavailable"), 1.5)
    tracker.record("c", Outcome(finish_reason="error", error_code="unavailable"), 2.0)
    s = tracker.summary(load_start=0.0)
    assert (s.sent, s.results, s.lost) == (4, 3, 1)
    assert s.lost_ids == ["d"]
    assert s.error_results == {"unavailable": 2}
    assert s.error_ids == {"unavailable": ["b", "c"]}
    assert s.duplicate_records == 0
    assert s.inconsistent_duplicates == 0


def test_identical_duplicates_are_counted_but_consistent() -> None:
    tracker = _tracker(["a", "b"])
    for at in (1.0, 2.0, 3.0):
        tracker.record("a", OK, at)
    tracker.record("b", OK, 1.0)
    s = tracker.summary(load_start=0.0)
    assert s.duplicate_records == 2
    assert s.duplicate_ids == 1
    assert s.inconsistent == []


@pytest.mark.parametrize(
    "other",
    [
        Outcome(text="other text", finish_reason="length"),
        Outcome(finish_reason="error", error_code="unavailable"),
        Outcome(text="hello", finish_reason="cancelled"),
    ],
)
def test_different_answers_for_one_id_are_inconsistent(other: Outcome) -> None:
    tracker = _tracker(["a"])
    tracker.record("a", OK, 1.0)
    tracker.record("a", other, 2.0)
    s = tracker.summary(load_start=0.0)
    assert s.inconsistent_duplicates == 1
    assert s.inconsistent[0].request_id == "a"
    assert (s.inconsistent[0].first, s.inconsistent[0].other) == (OK, other)
    if other.is_error:  # a later error after a success is still an error result of that id
        assert s.error_results == {"unavailable": 1}


def test_foreign_results_are_ignored() -> None:
    tracker = _tracker(["a"])
    assert not tracker.record("someone-else", OK, 1.0)
    tracker.record("a", OK, 1.0)
    s = tracker.summary(load_start=0.0)
    assert (s.results, s.duplicate_records, tracker.foreign_records) == (1, 0, 1)


def test_a_result_before_its_acknowledgement_counts_as_sent() -> None:
    tracker = ResultTracker()
    tracker.expect("a")
    tracker.expect("b")
    tracker.record("a", OK, 1.0)  # the ack was lost, the request was not
    s = tracker.summary(load_start=0.0)
    assert (s.sent, s.lost, s.not_accepted) == (1, 0, 1)


def test_longest_gap_counts_from_the_start_of_the_load() -> None:
    assert longest_gap([], 0.0) == (0.0, 0.0)
    assert longest_gap([5.0, 5.5, 6.0], 0.0) == (5.0, 0.0)
    gap, at = longest_gap([1.0, 2.0, 12.5, 13.0], 0.0)
    assert gap == pytest.approx(10.5)
    assert at == pytest.approx(2.0)


def test_recovery_is_the_first_steady_flow_after_the_fault() -> None:
    # Steady before, silence from 10 to 20, one straggler at 21, silence, steady from 30.
    times = [t * 0.5 for t in range(20)] + [21.0] + [30.0 + t * 0.5 for t in range(20)]
    assert recovery_after(times, 15.0) == pytest.approx(15.0)
    # Results already flowing when the fault ended: no recovery needed.
    assert recovery_after(times, 2.0) == 0.0


def test_recovery_accepts_a_flow_that_ends_with_the_load() -> None:
    times = [0.0, 0.5, 1.0, 20.0, 20.5, 21.0]
    assert recovery_after(times, 10.0) == pytest.approx(10.0)


def test_no_results_after_the_fault_means_never() -> None:
    assert recovery_after([1.0, 2.0], 5.0) is None
    assert recovery_after([], 0.0) is None


def test_summary_reports_recovery_per_fault() -> None:
    ids = [f"r{i}" for i in range(40)]
    tracker = _tracker(ids)
    for i, rid in enumerate(ids):  # results at 0..4.75 s, then from 20 s on
        at = i * 0.25 if i < 20 else 20.0 + (i - 20) * 0.25
        tracker.record(rid, OK, at)
    s = tracker.summary(load_start=0.0, fault_ends=[12.0, 100.0])
    assert s.recoveries_s[0] == pytest.approx(8.0)
    # A fault that ended after every answer came, with nothing missing: nothing to recover.
    assert s.recoveries_s[1] == 0.0
    assert s.longest_gap_s == pytest.approx(20.0 - 4.75)


def test_summary_with_lost_requests_and_silence_after_a_fault_is_never() -> None:
    tracker = _tracker(["a", "b"])
    tracker.record("a", OK, 1.0)
    s = tracker.summary(load_start=0.0, fault_ends=[5.0])
    assert s.recoveries_s == [None]
    assert s.lost == 1
