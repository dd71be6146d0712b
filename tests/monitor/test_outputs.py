"""What leaves the monitor: the alert record, the Alertmanager body, the /metrics text."""

from __future__ import annotations

import random
from dataclasses import replace

from genwire_bench.monitor.synth import REFERENCE
from genwire_monitor import promexport
from genwire_monitor.handlers import MonitorEngine, alert_record, parse_alert
from genwire_monitor.histogram import LATENCY_BUCKETS_S
from genwire_monitor.webhook import to_alertmanager
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from genwire.telemetry import semconv as sc

from .simulate import fast_settings, run

T0 = 1_800_000_000.0


def _incident() -> tuple[MonitorEngine, float, list]:
    engine = MonitorEngine(fast_settings())
    rng = random.Random(12)
    t, _ = run(engine, REFERENCE, T0, 12.0, 100, rng)
    t, fired = run(engine, replace(REFERENCE, slow_ms=1500), t, 2.0, 100, rng)
    t, resolved = run(engine, REFERENCE, t, 12.0, 100, rng)
    return engine, t, [e for _, e in fired + resolved]


def test_alert_record_round_trips_and_is_keyed_by_id() -> None:
    _, _, events = _incident()
    page = [e for e in events if e.id == "latency:e2e:page"]
    assert [e.status for e in page] == ["firing", "resolved"]
    key, value = alert_record(page[0])
    assert key == b"latency:e2e:page"
    assert parse_alert(value) == page[0]
    assert b"prompt" not in value  # figures and ids only, never text


def test_alertmanager_body_has_the_v2_shape() -> None:
    _, _, events = _incident()
    firing, resolved = [e for e in events if e.id == "latency:e2e:page"]
    body = to_alertmanager(firing, "http://127.0.0.1:8090/")
    assert body["labels"]["alertname"] == "latency:e2e:page"
    assert body["labels"]["severity"] == "page"
    assert body["annotations"]["summary"] == firing.title
    link = fast_settings().trace_url(firing.example_trace_ids[0])  # the configured template
    assert body["annotations"]["example_trace"] == link
    assert body["annotations"]["raised_by"] == firing.raised_by != ""
    assert "endsAt" not in body
    assert to_alertmanager(resolved, "g")["endsAt"] == resolved.resolved_at.isoformat()  # type: ignore[union-attr]


def test_metrics_expose_the_same_figures() -> None:
    engine = MonitorEngine(fast_settings())
    rng = random.Random(13)
    t, _ = run(engine, REFERENCE, T0, 12.0, 100, rng)
    t, _ = run(engine, replace(REFERENCE, slow_ms=1500), t, 2.0, 100, rng)
    registry = CollectorRegistry()
    collector = promexport.register(registry)
    collector.latest = promexport.figures(engine, t)
    text = generate_latest(registry).decode()
    assert (
        sc.METRIC_MONITOR_ALERTS + '{id="latency:e2e:page",kind="latency_burn",severity="page"} 1.0'
        in text
    )
    assert f'{sc.METRIC_MONITOR_STAGE_LATENCY}_bucket{{le="+Inf",stage="triton_queue"}}' in text
    assert (
        f'{sc.METRIC_MONITOR_BURN_RATE}{{rule="page:3600s/300s",slo="e2e",window="short"}}' in text
    )
    assert f'{sc.METRIC_MONITOR_DRIFT}{{feature="gen_ai.usage.input_tokens"' in text


def test_metrics_are_histograms_in_seconds_with_labels_prometheus_can_aggregate() -> None:
    """Latency as cumulative ``_seconds`` histograms (no quantile gauges in ms), no spaces."""
    engine = MonitorEngine(fast_settings())
    t, _ = run(engine, REFERENCE, T0, 12.0, 100, random.Random(14))
    registry = CollectorRegistry()
    promexport.register(registry).latest = promexport.figures(engine, t)
    text = generate_latest(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}

    for family in families.values():
        for sample in family.samples:
            assert "quantile" not in sample.labels, sample
            for value in sample.labels.values():
                assert " " not in value, f"label value with a space: {sample}"
        assert not family.name.endswith("_ms"), family.name

    latency = families[sc.METRIC_MONITOR_STAGE_LATENCY]
    assert latency.type == "histogram" and latency.name.endswith("_seconds")
    by_stage: dict[str, dict[str, float]] = {}
    for s in latency.samples:
        if s.name.endswith("_bucket"):
            by_stage.setdefault(s.labels["stage"], {})[s.labels["le"]] = s.value
    assert {"end_to_end", "triton_queue", "kafka_genwire.requests"} <= set(by_stage)
    e2e = by_stage["end_to_end"]
    assert list(e2e) == [*(floatToGoString(b) for b in LATENCY_BUCKETS_S), "+Inf"]
    assert list(e2e.values()) == sorted(e2e.values()), "cumulative"
    assert e2e["+Inf"] == engine.counts.requests  # one end_to_end observation per request
    assert 0 < e2e["0.25"] < e2e["+Inf"]  # REFERENCE requests: p50 ~0.18 s, p95 ~0.31 s
    (e2e_sum,) = [
        s.value
        for s in latency.samples
        if s.name.endswith("_sum") and s.labels["stage"] == "end_to_end"
    ]
    assert 0.1 < e2e_sum / e2e["+Inf"] < 1.0  # seconds, not milliseconds
