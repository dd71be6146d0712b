"""The alert state machine: pending, firing, minimum hold, hysteresis, resolution."""

from __future__ import annotations

from genwire_monitor.alerting import AlertBook, Draft, Level, Policy

from genwire.settings import CommonSettings


def _draft(n: int = 1) -> Draft:
    return Draft(
        kind="drift",
        severity="ticket",
        title=f"t{n}",
        summary="s",
        rule="r",
        figures={"n": n},
        examples=["ab" * 16, "cd" * 16],
    )


def test_fires_after_for_evaluations_and_resolves_after_the_hold() -> None:
    jaeger = CommonSettings(trace_url_template="http://127.0.0.1:16686/trace/{trace_id}")
    book = AlertBook(jaeger.trace_url, max_examples=5)
    policy = Policy(for_s=0, for_evaluations=2, keep_firing_s=10)
    assert book.observe("a", Level.FIRE, _draft(), policy, 0) is None  # pending
    fired = book.observe("a", Level.FIRE, _draft(2), policy, 1)
    assert fired is not None and fired.status == "firing"
    assert fired.trace_links[0] == "http://127.0.0.1:16686/trace/" + "ab" * 16  # template filled
    assert book.observe("a", Level.CLEAR, _draft(), policy, 2) is None  # hold starts
    assert book.observe("a", Level.CLEAR, _draft(), policy, 11) is None
    resolved = book.observe("a", Level.CLEAR, _draft(), policy, 12)
    assert resolved is not None and resolved.status == "resolved"
    assert resolved.id == fired.id and resolved.resolved_at is not None
    assert [e.status for e in book.history] == ["firing", "resolved"]


def test_no_flapping_a_fire_during_the_hold_restarts_it() -> None:
    book = AlertBook(lambda t: t, 5)
    policy = Policy(keep_firing_s=10)
    assert book.observe("a", Level.FIRE, _draft(), policy, 0) is not None
    events = [
        book.observe("a", level, _draft(), policy, t)
        for t, level in [(1, Level.CLEAR), (5, Level.FIRE), (6, Level.CLEAR), (15, Level.CLEAR)]
    ]
    assert events == [None, None, None, None]  # 6 + 10 > 15: still held
    assert book.is_firing("a")


def test_hold_level_keeps_state() -> None:
    book = AlertBook(lambda t: t, 5)
    policy = Policy(keep_firing_s=0)
    book.observe("a", Level.FIRE, _draft(), policy, 0)
    assert book.observe("a", Level.HOLD, _draft(), policy, 100) is None  # between thresholds
    assert book.is_firing("a")
    assert book.observe("a", Level.CLEAR, None, policy, 101) is not None


def test_pending_that_clears_never_fires() -> None:
    book = AlertBook(lambda t: t, 5)
    policy = Policy(for_s=5)
    assert book.observe("a", Level.FIRE, _draft(), policy, 0) is None
    assert book.observe("a", Level.CLEAR, _draft(), policy, 1) is None
    assert book.observe("a", Level.FIRE, _draft(), policy, 2) is None  # pending anew
    assert book.known() == ["a"]
    assert book.observe("a", Level.FIRE, _draft(), policy, 7) is not None
