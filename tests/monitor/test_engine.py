"""The engine end to end on simulated traffic: latency burn, drift, no false alarms."""

from __future__ import annotations

import random
from dataclasses import replace

from genwire_bench.monitor.synth import LENGTH_STOPS, LONG_PROMPTS, REFERENCE
from genwire_monitor.handlers import MonitorEngine

from genwire.telemetry import semconv as sc

from .simulate import fast_settings, run

T0 = 1_800_000_000.0


def test_steady_reference_traffic_raises_nothing() -> None:
    engine = MonitorEngine(fast_settings())
    _, events = run(engine, REFERENCE, T0, 40.0, 100, random.Random(1))
    assert events == []
    assert engine.counts.requests > 3500
    assert any(r.scores for r in engine.drift_results)  # drift was really tested
    pct = engine.percentiles(T0 + 40)
    assert {"gateway", "preprocess", "inference", "postprocess", "end_to_end", "ttft"} <= set(pct)


def test_latency_incident_fires_a_page_and_resolves_after_it() -> None:
    engine = MonitorEngine(fast_settings())
    rng = random.Random(2)
    t, events = run(engine, REFERENCE, T0, 12.0, 100, rng)
    assert events == []
    slow = replace(REFERENCE, slow_ms=1500)
    t_incident = t
    t, events = run(engine, slow, t, 3.0, 100, rng)
    fired = [(ts, e) for ts, e in events if e.id == "latency:e2e:page"]
    assert fired, [e.id for _, e in events]
    ts, alert = fired[0]
    assert alert.status == "firing" and alert.kind == "latency_burn"
    assert ts - t_incident < 0.83 + 0.5  # within the short window plus trace completion
    assert alert.figures["threshold_ms"] == 1000
    assert float(alert.figures["p99_ms"]) > 1000
    assert alert.example_trace_ids and alert.trace_links[0].endswith(alert.example_trace_ids[0])
    _, events = run(engine, REFERENCE, t, 12.0, 100, rng)
    resolved = [e for _, e in events if e.id == "latency:e2e:page" and e.status == "resolved"]
    assert resolved


def test_errors_burn_the_error_budget() -> None:
    engine = MonitorEngine(fast_settings())
    rng = random.Random(3)
    t, _ = run(engine, REFERENCE, T0, 5.0, 100, rng)
    _, events = run(engine, replace(REFERENCE, error_share=0.5), t, 3.0, 100, rng)
    assert any(e.id == "errors:errors:page" and e.kind == "error_burn" for _, e in events)


def test_longer_prompts_raise_drift_naming_the_feature() -> None:
    engine = MonitorEngine(fast_settings())
    rng = random.Random(4)
    t, events = run(engine, REFERENCE, T0, 14.0, 100, rng)
    assert events == []
    _, events = run(engine, LONG_PROMPTS, t, 6.0, 100, rng)
    drift = [e for _, e in events if e.kind == "drift"]
    assert drift
    alert = drift[0]
    assert alert.labels["feature"] == sc.GEN_AI_INPUT_TOKENS
    assert "prompt tokens" in alert.title
    assert alert.model == "genwire-gpt" and alert.model_version == "1"
    assert float(alert.figures["psi"]) >= 0.2
    assert len(alert.example_trace_ids) == 5


def test_length_stops_drift_the_finish_reason_mix() -> None:
    engine = MonitorEngine(fast_settings())
    rng = random.Random(5)
    t, _ = run(engine, REFERENCE, T0, 14.0, 100, rng)
    _, events = run(engine, LENGTH_STOPS, t, 6.0, 100, rng)
    features = {e.labels["feature"] for _, e in events if e.kind == "drift"}
    assert sc.GEN_AI_FINISH_REASONS in features


def test_each_model_version_has_its_own_reference() -> None:
    engine = MonitorEngine(fast_settings(model_idle_s=7200))  # v1 idles 14 s: not evicted
    rng = random.Random(6)
    t, _ = run(engine, REFERENCE, T0, 14.0, 100, rng)
    v2 = replace(LONG_PROMPTS, version="2")  # a new version with its own (long) normal
    _, events = run(engine, v2, t, 14.0, 100, rng)
    assert not [e for _, e in events if e.kind == "drift"]
    assert {(r.model, r.version) for r in engine.drift_results} == {
        ("genwire-gpt", "1"),
        ("genwire-gpt", "2"),
    }


def test_malformed_records_are_counted_and_skipped() -> None:
    engine = MonitorEngine(fast_settings())
    engine.ingest([b"\xff\xfe not protobuf", b""], T0)
    assert engine.counts.malformed == 1
    assert engine.counts.records == 2


def test_rejected_input_does_not_burn_the_error_budget() -> None:
    engine = MonitorEngine(fast_settings())
    rng = random.Random(8)
    t, _ = run(engine, REFERENCE, T0, 5.0, 100, rng)
    invalid = replace(REFERENCE, error_share=0.5, error_code="invalid_request")
    _, events = run(engine, invalid, t, 3.0, 100, rng)
    assert not [e for _, e in events if e.kind == "error_burn"]
    assert engine.counts.client_errors > 100 and engine.counts.errors == 0


def test_rolling_reference_also_detects_a_switch() -> None:
    engine = MonitorEngine(
        fast_settings(
            drift={
                "reference": "rolling",
                "reference_window_s": 3600,
                "current_window_s": 1440,
                "min_samples": 200,
            }
        )
    )
    rng = random.Random(9)
    t, events = run(engine, REFERENCE, T0, 20.0, 100, rng)
    assert events == []
    _, events = run(engine, LONG_PROMPTS, t, 6.0, 100, rng)
    assert {e.labels.get("feature") for _, e in events if e.kind == "drift"} >= {
        sc.GEN_AI_INPUT_TOKENS
    }


def test_an_slo_whose_stage_no_span_has_raises_a_ticket_not_silence() -> None:
    """A span-stage SLO counts only spans of its stage: one named wrongly (``preproces``)
    counts nothing and could never fire. Once ``NO_DATA_REQUESTS`` requests were generated
    without such a span it says so (``slo_no_data``). One on a genwire stage raises nothing:
    it comes, or it is one only some requests pass (a retry's topic)."""
    from genwire_monitor import rules
    from genwire_monitor.config import LatencySLO

    slos = [
        LatencySLO(name="e2e", stage="end_to_end", threshold_ms=1000, objective=0.99),
        LatencySLO(name="pre", stage="preprocess", threshold_ms=1000, objective=0.99),
        LatencySLO(name="retry", stage="kafka genwire.retry", threshold_ms=1000, objective=0.99),
        LatencySLO(name="typo", stage="preproces", threshold_ms=1000, objective=0.99),
    ]
    settings = fast_settings(slos=slos)
    engine = MonitorEngine(settings)
    _, events = run(engine, REFERENCE, T0, 5.0, 100, random.Random(6))
    fired = [e for _, e in events if e.kind == "slo_no_data"]
    assert [(e.id, e.status, e.severity) for e in fired] == [
        ("slo-no-data:typo", "firing", "ticket")
    ]
    assert fired[0].labels == {"slo": "typo", "stage": "preproces"}
    assert "'preprocess'" in fired[0].summary  # the stages seen, to compare with
    assert engine.generated >= rules.NO_DATA_REQUESTS

    # Fewer requests than that since start: too early to tell, nothing raised.
    early = MonitorEngine(fast_settings(slos=slos))
    _, events = run(early, REFERENCE, T0, 0.3, 100, random.Random(7))
    assert 0 < early.generated < rules.NO_DATA_REQUESTS
    assert not [e for _, e in events if e.kind == "slo_no_data"]


def test_the_no_data_alert_resolves_when_its_stage_comes_or_its_slo_goes() -> None:
    from genwire_monitor import rules
    from genwire_monitor.alerting import AlertBook
    from genwire_monitor.config import LatencySLO

    settings = fast_settings(
        slos=[LatencySLO(name="mine", stage="my-service", threshold_ms=50, objective=0.99)]
    )
    engine = MonitorEngine(settings)
    (slo,) = [x for x in engine.slos if x.name == "mine"]
    book = AlertBook(settings.trace_url, 5)
    many = rules.NO_DATA_REQUESTS
    assert rules.no_data_events(settings, book, [(slo, False)], many - 1, [], T0) == []
    (fired,) = rules.no_data_events(settings, book, [(slo, False)], many, ["gateway"], T0 + 1)
    assert fired.status == "firing" and "Stages seen: 'gateway'" in fired.summary
    (resolved,) = rules.no_data_events(settings, book, [(slo, True)], many + 5, [], T0 + 2)
    assert resolved.id == fired.id and resolved.status == "resolved"
    # Firing, then the SLO is fixed (renamed) and the monitor restarted with the alert
    # restored: nothing watches its id any more, and it resolves.
    rules.no_data_events(settings, book, [(slo, False)], many, [], T0 + 3)
    (gone,) = rules.no_data_events(settings, book, [], many, [], T0 + 4)
    assert gone.id == fired.id and gone.status == "resolved"
