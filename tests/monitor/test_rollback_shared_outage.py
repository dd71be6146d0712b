"""A shared outage (both versions failing alike) does not roll back a healthy canary, though
the canary's windows, nearly empty since its revision, fire minutes before the champion's full
ones; a canary failing alone, judged on the same requests, still is rolled back."""

from __future__ import annotations

import random
from dataclasses import replace

from genwire_bench.monitor.synth import REFERENCE, Profile
from genwire_monitor.handlers import MonitorEngine
from genwire_monitor.rollback import Decision

from genwire.policy import ModelPolicy

from .simulate import fast_settings, traffic
from .test_rollback import _mixed as mixed

T0 = 1_800_000_000.0
MODEL = REFERENCE.model
CANARY = replace(REFERENCE, version="2")
CHAMPION_ONLY = ModelPolicy(
    model=MODEL, aliases={"champion": "1", "challenger": "2"}, weights={"1": 100}, revision=4
)


def _rolled_out(rng: random.Random) -> tuple[MonitorEngine, float]:
    """Hours of the champion alone, then the canary at 10% (revision 5) for a while, healthy."""
    engine = MonitorEngine(fast_settings(canary_min_samples=50))
    engine.set_policies({MODEL: CHAMPION_ONLY})
    t = T0
    for t, payload in traffic(REFERENCE, T0, 60.0, 120.0, rng):
        engine.ingest([payload], t)
        engine.tick(t)
    canary = CHAMPION_ONLY.model_copy(
        update={"weights": {"1": 90, "2": 10}, "revision": 5, "updated_ms": t * 1000}
    )
    engine.set_policies({MODEL: canary})
    t, decisions = _mixed(engine, REFERENCE, CANARY, t, 3.0, rng)
    assert decisions == []
    return engine, t


def _mixed(
    engine: MonitorEngine,
    champion: Profile,
    canary: Profile,
    start: float,
    seconds: float,
    rng: random.Random,
) -> tuple[float, list[Decision]]:
    """Both versions at once (90/10), ticking every step (``test_rollback._mixed``)."""
    t, _, decided = mixed(engine, champion, canary, start, seconds, rng, share=0.1)
    return t, [d for _, d in decided]


def test_a_shared_outage_holds_the_rollback() -> None:
    rng = random.Random(1)
    engine, t = _rolled_out(rng)
    down = {"error_share": 1.0}  # a shared dependency fails: every request of both fails
    t, decisions = _mixed(engine, replace(REFERENCE, **down), replace(CANARY, **down), t, 4.0, rng)
    assert decisions == [], [d.alert.id for d in decisions]
    held = engine.rollback.held[MODEL]
    assert "both alerting" in held
    assert engine.book.is_firing(f"errors:errors:page:{MODEL}:1")


def test_a_canary_failing_alone_is_still_rolled_back() -> None:
    rng = random.Random(1)
    engine, t = _rolled_out(rng)
    t, decisions = _mixed(engine, REFERENCE, replace(CANARY, error_share=1.0), t, 4.0, rng)
    (decision,) = decisions
    assert decision.canary == "2" and decision.champion == "1"
    assert decision.alert.kind == "error_burn"


def test_a_canary_with_all_the_traffic_failing_is_rolled_back() -> None:
    """Weights 0/100: the champion has no requests to judge on the same evidence, and the
    all-traffic alert fires because of the canary: nothing holds the rollback."""
    rng = random.Random(1)
    engine, start = _rolled_out(rng)
    everything = CHAMPION_ONLY.model_copy(
        update={"weights": {"1": 0, "2": 100}, "revision": 6, "updated_ms": start * 1000}
    )
    engine.set_policies({MODEL: everything})  # the canary takes all the traffic
    decisions: list[Decision] = []
    for t, payload in traffic(replace(CANARY, error_share=1.0), start, 4.0, 120.0, rng):
        engine.ingest([payload], t)
        engine.tick(t)
        for d in engine.due:
            decisions.append(d)
            engine.rollback.published(d, t)
            engine.set_policies({d.model: d.policy})
    (decision,) = decisions
    assert decision.canary == "2" and decision.from_revision == 6
