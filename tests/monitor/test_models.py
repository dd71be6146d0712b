"""Per model version: SLOs, error ratio, drift and mean token log-probability per version, with
a bounded number of series (made-up names never create new ones)."""

from __future__ import annotations

import random
from dataclasses import replace

from genwire_bench.monitor.synth import REFERENCE, Profile, encode, request_spans
from genwire_monitor import page, promexport
from genwire_monitor.handlers import MonitorEngine
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client import CollectorRegistry, generate_latest

from .simulate import fast_settings, run

T0 = 1_800_000_000.0


def _requests(profiles: list[Profile], t: float, rng: random.Random) -> bytes:
    by_service: dict[str, list[Span]] = {}
    for p in profiles:
        for service, spans in request_spans(p, rng, int(t * 1e9)).items():
            by_service.setdefault(service, []).extend(spans)
    return encode(by_service)


def test_ten_thousand_model_names_make_a_bounded_number_of_series() -> None:
    engine = MonitorEngine(fast_settings(max_models=8))
    rng = random.Random(31)
    t = T0
    for batch in range(100):  # 10,000 distinct names, served (a version) or rejected (none)
        t += 0.1
        names = [f"made-up-{batch}-{i}" for i in range(100)]
        profiles = [
            replace(REFERENCE, model=n, version="" if i % 2 else "1") for i, n in enumerate(names)
        ]
        engine.ingest([_requests(profiles, t, rng)], t)
        engine.tick(t)
    engine.tick(t + 1)
    assert engine.counts.requests == 10_000
    keys = set(engine.models)
    assert len(keys) == 9 and ("other", "other") in keys  # 8 of their own, then one "other"
    assert sum(m.requests for m in engine.models.values()) == 10_000
    assert engine.models[("other", "other")].requests == 10_000 - 8
    assert len(engine.all_slos()) == 2 * 10  # (e2e + errors) x (all traffic + 9 series)
    assert {(r.model, r.version) for r in engine.drift_results} <= keys
    models = {(m["model"], m["version"]) for m in engine.model_figures(t)}
    assert models == keys
    figures = promexport.figures(engine, t + 1)
    assert {(m, v) for m, v, *_ in figures.drift} <= keys
    registry = CollectorRegistry()
    promexport.register(registry).latest = figures
    scraped = generate_latest(registry).decode()
    assert "made-up-99" not in scraped
    series = {
        line.split("{", 1)[1].split("}")[0].replace(',outcome="ok"', "")
        for line in scraped.splitlines()
        if line.startswith(promexport.METRIC_MODEL_REQUESTS + '{model="')
        and ',outcome="ok"' in line
    }
    assert len(series) == 9 and 'model="other",version="other"' in series
    html = page.render(page.snapshot(engine, t + 1))
    assert html.count('class="model-row"') == 9 and "made-up-99" not in html


def test_each_version_has_its_own_slos_error_ratio_and_logprob() -> None:
    engine = MonitorEngine(fast_settings())
    rng = random.Random(32)
    v1 = replace(REFERENCE, mean_logprob=-1.0)
    v2 = replace(REFERENCE, version="2", mean_logprob=-4.0, slow_ms=1500, error_share=0.3)
    t, events = run(engine, v1, T0, 12.0, 100, rng)
    assert events == []
    t, _ = run(engine, v1, t, 2.0, 50, rng)
    for _ in range(3):  # both versions at once: v2 slow and failing, v1 healthy
        t, more = run(engine, v1, t, 1.0, 50, rng)
        events += more
        t, more = run(engine, v2, t, 1.0, 50, rng)
        events += more
    fired = {e.id for _, e in events if e.status == "firing"}
    assert "latency:e2e:page:genwire-gpt:2" in fired and "errors:errors:page:genwire-gpt:2" in fired
    assert not [i for i in fired if i.endswith(":genwire-gpt:1")]
    (alert,) = [e for _, e in events if e.id == "latency:e2e:page:genwire-gpt:2"]
    assert alert.model == "genwire-gpt" and alert.model_version == "2"
    assert alert.labels["version"] == "2" and float(alert.figures["p99_ms"]) > 1000
    figures = {(m["model"], m["version"]): m for m in engine.model_figures(t)}
    one, two = figures[("genwire-gpt", "1")], figures[("genwire-gpt", "2")]
    assert one["error_ratio"] == 0.0 and 0.1 < two["error_ratio"] < 0.5  # type: ignore[operator]
    assert abs(one["mean_logprob"] + 1.0) < 0.1 and abs(two["mean_logprob"] + 4.0) < 0.1  # type: ignore[operator]
    e2e_one, e2e_two = one["slos"]["e2e"], two["slos"]["e2e"]  # type: ignore[index]
    assert e2e_one["p99_ms"] < 1000 < e2e_two["p99_ms"]
    assert e2e_one["good_ratio"] == 1.0 and e2e_two["good_ratio"] < 0.1
