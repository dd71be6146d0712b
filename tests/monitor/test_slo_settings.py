"""SLO settings the burn-rate rules could not honour are refused at start, not run silently."""

from __future__ import annotations

import json

import pytest
from genwire_monitor.burnrate import Verdict, evaluate, ring_for
from genwire_monitor.config import BurnRule, ErrorSLO, MonitorSettings, max_burn
from pydantic import ValidationError

T0 = 1_800_000_000.0


def _outage(settings: MonitorSettings, objective: float) -> list[Verdict]:
    """Every rule's verdict after its longest window of requests, every one bad."""
    ring = ring_for(settings.burn_rules, 1.0)
    longest = max(r.long_s for r in settings.burn_rules)
    for i in range(int(longest) // 10):  # one bad request every 10 s
        ring.add(T0 - longest + 10 * i + 5, T0, False)
    results = evaluate(ring, objective, settings.burn_rules, T0, 1.0, settings.min_events)
    return [r.verdict for r in results]


def _slo(name: str, objective: float = 0.999) -> dict[str, object]:
    return {"name": name, "stage": "end_to_end", "threshold_ms": 1000, "objective": objective}


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [  # the error SLO at 0.8 burns 5x at most: neither page rule (14.4x, 6x) could fire
        (
            "ERROR_SLO__OBJECTIVE",
            "0.8",
            r"SLO 'errors' \(objective 0.8\) burns at most 5x .* below every page rule "
            r"\('page 1h/5m 14.4x', 'page 6h/30m 6x'\); the lowest needs .* 0\.8333",
        ),
        (
            "SLOS",
            json.dumps([_slo("e2e", 0.8)]),
            r"SLO 'e2e' \(objective 0.8\) burns at most 5x .* below every page rule",
        ),
        (  # 200x: beyond the 0.99 SLOs (100x), whatever their kind
            "BURN_RULES",
            json.dumps([{"severity": "page", "long_s": 60, "short_s": 5, "factor": 200}]),
            r"SLO 'ttft' \(objective 0.99\) burns at most 100x .* rule \('page 1m/5s 200x'\)",
        ),
        (  # the tickets of a 0.5 SLO: 2x at most, under the 3x rule but not the 1x one: kept;
            # its pages (14.4x, 6x) refused
            "SLOS",
            json.dumps([_slo("half", 0.5)]),
            r"SLO 'half' \(objective 0.5\) burns at most 2x .* below every page rule",
        ),
    ],
)
def test_a_burn_rule_an_slo_can_never_reach_is_refused_at_start(
    variable: str, value: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The highest burn is 1 / (1 - objective): above it a rule says clear through a total
    outage (at 0.8, 100 % errors burn 5x: both page rules said clear)."""
    assert MonitorSettings().error_slo.objective == 0.99
    monkeypatch.setenv(f"GENWIRE_MONITOR_{variable}", value)
    with pytest.raises(ValidationError, match=message) as info:
        MonitorSettings()
    assert "below every ticket rule" not in str(info.value)


def test_an_slo_one_rule_of_a_severity_cannot_reach_is_kept_while_another_can() -> None:
    """At 0.9 (10x at most) the Workbook's 14.4x page never fires, its 6x page does: accepted,
    and a total outage pages."""
    settings = MonitorSettings(slos=[_slo("e2e", 0.9)])  # type: ignore[list-item]
    verdicts = dict(
        zip([r.factor for r in settings.burn_rules], _outage(settings, 0.9), strict=True)
    )
    assert verdicts[6.0] is Verdict.FIRE and verdicts[14.4] is not Verdict.FIRE


def test_every_rule_an_accepted_setting_holds_fires_on_a_total_outage() -> None:
    """The check at start and the evaluator agree: at the boundary (objective 0.9375, max burn
    exactly 16x) a 16x rule is accepted and fires on 100 % bad requests."""
    defaults = MonitorSettings()
    for objective in [s.objective for s in defaults.slos] + [defaults.error_slo.objective]:
        assert set(_outage(defaults, objective)) == {Verdict.FIRE}
    rule = BurnRule(severity="page", long_s=3600, short_s=300, factor=16)
    edge = MonitorSettings(error_slo=ErrorSLO(objective=0.9375), burn_rules=[rule])
    assert max_burn(0.9375) == 16.0
    assert _outage(edge, 0.9375) == [Verdict.FIRE]
    with pytest.raises(ValidationError, match=r"burns at most 15\.87x"):
        MonitorSettings(error_slo=ErrorSLO(objective=0.937), burn_rules=[rule])


@pytest.mark.parametrize(
    ("slos", "error_slo"),
    [
        ([_slo("e2e"), {**_slo("e2e"), "stage": "ttft", "threshold_ms": 1e9}], "errors"),
        ([_slo("e2e"), _slo("errors")], "errors"),  # one metric series, one rollback look-up
        ([_slo("e2e")], "e2e"),
    ],
)
def test_two_slos_of_one_name_are_refused_at_start(
    slos: list[dict[str, object]], error_slo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One name, one alert id: a healthy SLO's clear wiped a failing one's pending state at
    every evaluation, so with alert_for_s set the failing one never fired."""
    monkeypatch.setenv("GENWIRE_MONITOR_SLOS", json.dumps(slos))
    monkeypatch.setenv("GENWIRE_MONITOR_ERROR_SLO__NAME", error_slo)
    with pytest.raises(ValidationError, match=r"SLO names \['.*'\] are used more than once"):
        MonitorSettings()
    monkeypatch.setenv("GENWIRE_MONITOR_ERROR_SLO__NAME", "failures")
    if len({s["name"] for s in slos}) == len(slos):  # renamed apart: accepted
        assert [s.name for s in MonitorSettings().slos] == [s["name"] for s in slos]
