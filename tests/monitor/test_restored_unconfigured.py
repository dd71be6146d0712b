"""A burn alert rebuilt after a restart whose SLO (or severity) is no longer configured
resolves at the first evaluation: nothing would judge it again, and a champion alert stuck
firing would hold every rollback of its model."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime

from genwire_bench.monitor.synth import REFERENCE
from genwire_monitor.alerting import AlertEvent
from genwire_monitor.config import LatencySLO
from genwire_monitor.handlers import MonitorEngine

from genwire.policy import ModelPolicy

from .simulate import fast_settings, traffic

T0 = 1_800_000_000.0
MODEL = REFERENCE.model
CANARY = replace(REFERENCE, version="2")
OLD_ID = f"latency:e2e:page:{MODEL}:1"
REBUILT = AlertEvent(
    id=OLD_ID,
    status="firing",
    kind="latency_burn",
    severity="page",
    title=f"SLO e2e of {MODEL} 1: end_to_end over 1000 ms burning budget 30.0x",
    summary="slow",
    rule="burn rate >= 14.4x over 1h and 5m",
    model=MODEL,
    model_version="1",
    labels={"slo": "e2e", "stage": "end_to_end", "model": MODEL, "version": "1"},
    started_at=datetime.fromtimestamp(T0 - 60, UTC),
)


def test_a_restored_alert_of_an_slo_no_longer_configured_resolves() -> None:
    renamed = LatencySLO(name="e2e_v2", stage="end_to_end", threshold_ms=1000, objective=0.99)
    engine = MonitorEngine(fast_settings(slos=[renamed]))
    policy = ModelPolicy(
        model=MODEL,
        aliases={"champion": "1", "challenger": "2"},
        weights={"1": 75, "2": 25},
        revision=4,
        updated_ms=T0 * 1000,
    )
    engine.set_policies({MODEL: policy})
    assert engine.restore([REBUILT]) == [OLD_ID]
    rng = random.Random(1)
    champion = traffic(REFERENCE, T0, 60.0, 90.0, rng)
    canary = traffic(replace(CANARY, error_share=0.5), T0, 60.0, 30.0, rng)
    resolved, decided = [], []
    for (t, a), (_, b) in zip(champion, canary, strict=False):
        engine.ingest([a, b], t)
        resolved += [e for e in engine.tick(t) if e.id == OLD_ID]
        assert "both alerting" not in engine.rollback.held.get(MODEL, "")
        if engine.due:
            decided = list(engine.due)
            break
    (event,) = resolved
    assert event.status == "resolved"
    assert "no longer configured" in event.summary
    assert decided and decided[0].canary == "2"
