"""Automatic rollback on a simulated clock: a bad canary (slow, failing or drifting) is rolled
back to its champion, with the time from its first bad request to the decision printed (run
with ``-s``; figures in docs/monitor.md, "Automatic rollback"); a healthy canary over a long
steady run is not; a champion that alerts too holds the rollback back."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from genwire_bench.monitor.synth import REFERENCE, Profile
from genwire_monitor.alerting import AlertEvent
from genwire_monitor.handlers import MonitorEngine
from genwire_monitor.rollback import Decision

from genwire.policy import ModelPolicy

from .simulate import SCALE, fast_settings, traffic

T0 = 1_800_000_000.0
MODEL = REFERENCE.model
CANARY = replace(REFERENCE, version="2")
POLICY = ModelPolicy(
    model=MODEL,
    aliases={"champion": "1", "challenger": "2"},
    weights={"1": 75, "2": 25},
    revision=4,
)


def _mixed(
    engine: MonitorEngine,
    champion: Profile,
    canary: Profile,
    start: float,
    seconds: float,
    rng: random.Random,
    rate: float = 120.0,
    share: float = 0.25,
) -> tuple[float, list[tuple[float, AlertEvent]], list[tuple[float, Decision]]]:
    """Both versions' traffic at once, ticking every step; each decided rollback is
    "published" and comes back as the policy in force (as the feed would bring it)."""
    events: list[tuple[float, AlertEvent]] = []
    decisions: list[tuple[float, Decision]] = []
    t = start
    champ = traffic(champion, start, seconds, rate * (1 - share), rng)
    cand = traffic(canary, start, seconds, rate * share, rng)
    for (t, a), (_, b) in zip(champ, cand, strict=True):
        engine.ingest([a, b], t)
        events += [(t, e) for e in engine.tick(t)]
        for d in engine.due:
            decisions.append((t, d))
            engine.rollback.published(d, t)
            engine.set_policies({d.model: d.policy})
    return t, events, decisions


def _engine() -> MonitorEngine:
    engine = MonitorEngine(fast_settings(canary_min_samples=50))
    engine.set_policies({MODEL: POLICY})
    return engine


@pytest.mark.parametrize(
    ("bad", "kind"),
    [
        (replace(CANARY, slow_ms=1500), "latency_burn"),
        (replace(CANARY, error_share=0.5), "error_burn"),
        (replace(CANARY, mean_logprob=-4.0), "canary"),
    ],
    ids=["slow", "failing", "drifting"],
)
def test_a_bad_canary_is_rolled_back_to_its_champion(bad: Profile, kind: str) -> None:
    engine = _engine()
    rng = random.Random(41)
    t, events, decisions = _mixed(engine, REFERENCE, CANARY, T0, 12.0, rng)
    assert decisions == [] and not [e for _, e in events if e.status == "firing"]
    bad_from = t  # the canary's first bad request ends in the next step
    t, events, decisions = _mixed(engine, REFERENCE, bad, t, 15.0, rng)
    assert len(decisions) == 1, "one rollback, published once"
    at, d = decisions[0]
    s = engine.settings
    short_s = min(r.short_s for r in s.burn_rules) * SCALE
    print(
        f"\n{kind}: rolled back {at - bad_from:.2f}s after the canary's first bad request "
        f"(short window {short_s:.2f}s, trace completion {s.trace_idle_s}s, "
        f"hold floor {s.min_hold_s}s)"
    )
    assert (d.model, d.canary, d.champion, d.from_revision) == (MODEL, "2", "1", 4)
    new = d.policy
    assert new.weights == {"1": 100} and new.revision == 5 and new.updated_by == "monitor"
    assert new.aliases == POLICY.aliases  # the canary keeps its alias: it can be tried again
    assert new.alert is not None and new.alert["kind"] == kind
    assert new.alert["model_version"] == "2" and new.alert["figures"]
    assert "version 2" in new.reason and "champion 1" in new.reason
    assert d.alert.kind == kind and d.alert.model_version == "2"
    fired = {e.id for _, e in events if e.status == "firing"}
    assert not [i for i in fired if ":genwire-gpt:1" in i], "the champion stayed healthy"
    # Traffic is back on the champion: nothing more is decided.
    t, _, more = _mixed(engine, REFERENCE, bad, t, 3.0, rng, share=0.0001)
    assert more == []


def test_a_canary_alert_resolves_once_the_version_no_longer_takes_canary_traffic() -> None:
    engine = _engine()
    rng = random.Random(42)
    t, _, _ = _mixed(engine, REFERENCE, CANARY, T0, 12.0, rng)
    t, events, _decisions = _mixed(
        engine, REFERENCE, replace(CANARY, mean_logprob=-4.0), t, 15.0, rng
    )
    (fired,) = [e for _, e in events if e.kind == "canary" and e.status == "firing"]
    assert fired.id == "canary:genwire-gpt:2:genwire.mean_logprob"
    assert fired.labels["champion"] == "1" and "champion 1" in fired.title
    resolved = [e for _, e in events if e.id == fired.id and e.status == "resolved"]
    assert resolved and "no longer takes canary traffic" in resolved[0].summary


def test_a_healthy_canary_is_not_rolled_back_over_a_long_steady_run() -> None:
    engine = _engine()
    rng = random.Random(43)
    # 12 production hours (120 s at 1/360), 120 requests/s, a quarter on the canary.
    _t, events, decisions = _mixed(engine, REFERENCE, CANARY, T0, 120.0, rng)
    assert decisions == []
    assert [e.id for _, e in events if e.status == "firing"] == []
    assert {c.result.version for c in engine.canary_results} == {"2"}  # it was compared
    assert engine.rollback.published_total == {}


def test_no_rollback_when_the_champion_alerts_too() -> None:
    engine = _engine()
    rng = random.Random(44)
    t, _, _ = _mixed(engine, REFERENCE, CANARY, T0, 12.0, rng)
    slow = 1500.0  # a shared dependency: both versions slow
    t, events, decisions = _mixed(
        engine, replace(REFERENCE, slow_ms=slow), replace(CANARY, slow_ms=slow), t, 6.0, rng
    )
    fired = {e.id for _, e in events if e.status == "firing"}
    assert "latency:e2e:page:genwire-gpt:1" in fired and "latency:e2e:page:genwire-gpt:2" in fired
    assert decisions == []
    assert "both alerting" in engine.rollback.held[MODEL]


def test_no_rollback_without_a_policy_or_when_disabled() -> None:
    for engine in (
        MonitorEngine(fast_settings()),  # no policy: nothing is a canary
        MonitorEngine(fast_settings(auto_rollback=False)),
    ):
        if engine.settings.auto_rollback is False:
            engine.set_policies({MODEL: POLICY})
        rng = random.Random(45)
        t, _, _ = _mixed(engine, REFERENCE, CANARY, T0, 12.0, rng)
        t, events, decisions = _mixed(
            engine, REFERENCE, replace(CANARY, error_share=0.5), t, 6.0, rng
        )
        assert "errors:errors:page:genwire-gpt:2" in {e.id for _, e in events}
        assert decisions == []


def test_a_canary_gets_its_own_series_even_when_the_cap_is_reached() -> None:
    engine = MonitorEngine(fast_settings(max_models=1))
    rng = random.Random(46)
    t, _, _ = _mixed(engine, REFERENCE, replace(REFERENCE, model="someone-else"), T0, 2.0, rng)
    assert ("someone-else", "1") not in engine.models or ("genwire-gpt", "1") not in engine.models
    engine.set_policies({MODEL: POLICY})  # names versions 1 and 2 of genwire-gpt
    t, _, _ = _mixed(engine, REFERENCE, CANARY, t, 2.0, rng)
    assert {("genwire-gpt", "1"), ("genwire-gpt", "2")} <= set(engine.models)


def _failed_and_rolled_back(engine: MonitorEngine, rng: random.Random) -> tuple[float, Decision]:
    t, _, _ = _mixed(engine, REFERENCE, CANARY, T0, 12.0, rng)
    t, _, decisions = _mixed(engine, REFERENCE, replace(CANARY, error_share=0.5), t, 15.0, rng)
    assert len(decisions) == 1
    return t, decisions[0][1]


PAGE = "errors:errors:page:genwire-gpt:2"


def test_an_alert_from_an_earlier_policy_does_not_roll_back_the_canary_tried_again() -> None:
    """Version 2 failed and was rolled back; tried again under a new revision while its error
    page still fires (its slower rule's windows still hold the old failures). That verdict
    judged requests from before the revision: the canary is not rolled back on it (the monitor
    once did, at its first evaluation, before the canary's first request of the new revision);
    healthy, it stays; failing again, its new requests roll it back."""
    engine = _engine()
    rng = random.Random(47)
    t, first = _failed_and_rolled_back(engine, rng)
    t, _, _ = _mixed(engine, REFERENCE, CANARY, t, 2.0, rng, share=0.0001)  # champion only
    assert engine.book.is_firing(PAGE), "the page outlives the canary's traffic"
    again = first.policy.model_copy(
        update={
            "weights": {"1": 75, "2": 25},
            "revision": first.policy.revision + 1,
            "updated_ms": t * 1000.0,  # written now, on the simulated clock
        }
    )
    engine.set_policies({MODEL: again})
    engine.tick(t + 0.05)
    assert engine.due == []
    held = engine.rollback.held[MODEL]
    assert f"not borne out by its requests since revision {again.revision}" in held and PAGE in held
    # Healthy, within its SLO (0.8 % errors against a 1 % budget): its few bad requests do not
    # re-arm the old verdict.
    healthy = replace(CANARY, error_share=0.008)
    errors = engine.models[(MODEL, "2")].errors
    t, events, decisions = _mixed(engine, REFERENCE, healthy, t + 0.05, 8.0, rng)
    assert engine.models[(MODEL, "2")].errors > errors, "it served bad requests meanwhile"
    assert decisions == [], "a healthy canary is not rolled back on an earlier policy's alert"
    assert [e for _, e in events if e.id == PAGE and e.status == "resolved"], (
        "its traffic clears it"
    )
    t, _, decisions = _mixed(engine, REFERENCE, replace(CANARY, error_share=0.5), t, 15.0, rng)
    assert [(d.canary, d.from_revision) for _, d in decisions] == [("2", again.revision)]


def test_an_alert_rebuilt_after_a_restart_waits_for_the_canary_s_own_requests() -> None:
    """After a restart the monitor rebuilds its firing alerts from ``genwire.alerts`` (held on
    no data) and may read spans again from before the policy's revision: neither rolls the
    canary back; its requests under the revision do."""
    before = _engine()
    rng = random.Random(48)
    t, first = _failed_and_rolled_back(before, rng)
    (page,) = [a for a in before.book.active(t) if a.id == PAGE]
    assert first.from_revision == POLICY.revision
    engine = MonitorEngine(fast_settings(canary_min_samples=50))  # the restart
    again = POLICY.model_copy(update={"revision": 6, "updated_ms": (t + 3.0) * 1000.0})
    engine.set_policies({MODEL: again})
    assert engine.restore([page]) == [PAGE]
    # The spans of failures from before the revision, read again after the restart (its
    # consumer resumes from its last commit) and judged at t + 3.5 s...
    failing = replace(CANARY, error_share=0.5)
    late = t + 3.5
    for _, payload in traffic(failing, t, 3.0, 60.0, rng):
        engine.ingest([payload], late)
    for step in (late, late + 0.5, late + 1.0):
        engine.tick(step)
        assert engine.due == [] and PAGE in engine.rollback.held[MODEL]
    assert engine.book.active(late + 1.0)[0].no_data is False, "a current verdict, on old requests"
    t = late + 1.0
    # ...then the revision's own traffic: healthy stays, failing is rolled back.
    t, _, decisions = _mixed(engine, REFERENCE, CANARY, t, 8.0, rng)
    assert decisions == []
    t, _, decisions = _mixed(engine, REFERENCE, failing, t, 15.0, rng)
    assert [(d.canary, d.from_revision) for _, d in decisions] == [("2", again.revision)]


@pytest.mark.parametrize("healthy_s", [25.0, 80.0], ids=["2.5h", "8h"])
def test_a_canary_healthy_for_hours_then_failing_is_rolled_back_when_its_page_fires(
    healthy_s: float,
) -> None:
    """The evidence is the alert's rules on the revision's requests, each window cut at the
    revision: hours of good requests since it do not dilute a failure the rules see (judged
    over everything since the revision, an 8-hour-old canary's failure waited ~4x its page).
    At 2.5 production hours the 6 h rule's windows are cut at the revision, the 1 h rule's
    are whole; at 8 hours every window is whole."""
    engine = _engine()
    rng = random.Random(49)
    # healthy_s at 1/360 (2.5 or 8 production hours) under revision 4, then 20 % errors
    t, _, decisions = _mixed(engine, REFERENCE, CANARY, T0, healthy_s, rng)
    assert decisions == []
    bad_from = t
    failing = replace(CANARY, error_share=0.2)
    t, events, decisions = _mixed(engine, REFERENCE, failing, t, 10.0, rng)
    assert [(d.canary, d.from_revision) for _, d in decisions] == [("2", POLICY.revision)]
    (fired,) = [at for at, e in events if e.id == PAGE and e.status == "firing"]
    at = decisions[0][0]
    took = {"page": fired - bad_from, "rollback": at - bad_from}
    print(f"\nday-old canary, 20 % errors: {', '.join(f'{k} {v:.2f}s' for k, v in took.items())}")
    assert at == fired, "rolled back at the evaluation its page fired"


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("ROLLBACK_KINDS", '["latency"]', "rollback_kinds"),
        ("ROLLBACK_KINDS", '["partition_stalled"]', "rollback_kinds"),  # names no version
        ("ROLLBACK_KINDS", "[]", "auto_rollback"),
        ("ROLLBACK_SEVERITIES", '["critical"]', "rollback_severities"),
        ("ROLLBACK_SEVERITIES", "[]", "auto_rollback"),
        ("ROLLBACK_KINDS", '["drift"]', r"\['drift'\] never come"),  # drift: tickets
        ("ROLLBACK_SEVERITIES", '["ticket"]', r"\['canary'\] never come"),  # canary: pages
        ("SLOS", "[]", r"\['latency_burn'\] never come"),  # no latency SLO to burn
        ("CANARY_FEATURES", '["gen_ai.usage.output_tokenz"]', "canary_features"),
    ],
)
def test_a_rollback_setting_that_names_nothing_is_refused_at_start(
    variable: str, value: str, field: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A typo would leave the automatic rollback waiting for alerts that never come (or compare
    a canary on nothing): the monitor refuses it instead of starting with it."""
    from genwire_monitor.config import MonitorSettings
    from pydantic import ValidationError

    assert MonitorSettings().rollback_kinds == ["latency_burn", "error_burn", "canary"]
    monkeypatch.setenv(f"GENWIRE_MONITOR_{variable}", value)
    with pytest.raises(ValidationError, match=field):
        MonitorSettings()
    if variable == "ROLLBACK_KINDS" and value == '["drift"]':  # with tickets, it can fire
        monkeypatch.setenv("GENWIRE_MONITOR_ROLLBACK_SEVERITIES", '["ticket"]')
        assert MonitorSettings().rollback_kinds == ["drift"]
    if variable == "SLOS":  # without the latency kind, no latency SLO is needed
        monkeypatch.setenv("GENWIRE_MONITOR_ROLLBACK_KINDS", '["error_burn", "canary"]')
        assert MonitorSettings().slos == []
    elif value == "[]":  # no rollback at all: what AUTO_ROLLBACK=false says
        monkeypatch.setenv("GENWIRE_MONITOR_AUTO_ROLLBACK", "false")
        assert not MonitorSettings().auto_rollback
