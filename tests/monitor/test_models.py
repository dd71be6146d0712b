"""Per model version: SLOs, error ratio, drift and mean token log-probability per version, with
a bounded number of series (made-up names never create new ones)."""

from __future__ import annotations

import random
from dataclasses import replace

from genwire_bench.monitor.synth import REFERENCE, Profile, encode, request_spans
from genwire_monitor import page, promexport
from genwire_monitor.alerting import AlertEvent
from genwire_monitor.config import END_TO_END, TPOT, TTFT
from genwire_monitor.handlers import MonitorEngine
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client import CollectorRegistry, generate_latest

from genwire.telemetry import semconv as sc

from .simulate import fast_settings, run

T0 = 1_800_000_000.0
OTHER = ("other", "other")


def _requests(profiles: list[Profile], t: float, rng: random.Random) -> bytes:
    by_service: dict[str, list[Span]] = {}
    for p in profiles:
        for service, spans in request_spans(p, rng, int(t * 1e9)).items():
            by_service.setdefault(service, []).extend(spans)
    return encode(by_service)


def test_ten_thousand_model_names_make_a_bounded_number_of_series() -> None:
    engine = MonitorEngine(fast_settings(max_models=8, model_idle_s=7200))  # no eviction here
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
        assert len(engine.models) <= 9
    engine.tick(t + 0.5)  # (within model_idle_s: nothing evicted yet)
    assert engine.counts.requests == 10_000
    keys = set(engine.models)
    assert len(keys) == 9 and ("other", "other") in keys  # 8 of their own, then one "other"
    assert sum(m.requests for m in engine.models.values()) == 10_000
    assert engine.models[("other", "other")].requests == 10_000 - 8
    assert len(engine.all_slos()) == 2 * 10  # (e2e + errors) x (all traffic + 9 series)
    assert {(r.model, r.version) for r in engine.drift_results} <= keys
    models = {(m["model"], m["version"]) for m in engine.model_figures(t)}
    assert models == keys
    figures = promexport.figures(engine, t + 0.5)
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
    html = page.render(page.snapshot(engine, t + 0.5))
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


def test_idle_versions_are_evicted_their_alerts_resolve_and_their_slot_is_freed() -> None:
    settings = fast_settings(max_models=2)
    engine = MonitorEngine(settings)
    rng = random.Random(33)
    v1 = REFERENCE
    v2 = replace(REFERENCE, version="2", slow_ms=1500)
    t, _ = run(engine, v1, T0, 12.0, 100, rng)
    events: list[tuple[float, AlertEvent]] = []
    for _ in range(3):
        t, more = run(engine, v2, t, 1.0, 60, rng)
        events += more
        t, more = run(engine, v1, t, 1.0, 60, rng)
        events += more
    v2_page = "latency:e2e:page:genwire-gpt:2"
    assert [e.status for _, e in events if e.id == v2_page] == ["firing"]
    assert set(engine.models) == {("genwire-gpt", "1"), ("genwire-gpt", "2")}
    # v2 is no longer served: only v1 traffic from now on; after model_idle_s (3600 s x SCALE
    # = 10 s) its series is gone and its alerts resolve, saying why.
    idle_s = settings.scaled(settings.model_idle_s)
    t, events = run(engine, v1, t, idle_s + 2, 60, rng)
    resolved = [e for _, e in events if e.id == v2_page]
    assert [e.status for e in resolved] == ["resolved"]
    assert "no longer served" in resolved[0].summary
    assert ("genwire-gpt", "2") not in engine.models and engine.evicted == 1
    assert not [a for a in engine.book.active(t) if a.model_version == "2"]
    # its slot is free: a new version gets its own series (max_models=2), not "other"
    t, _ = run(engine, replace(REFERENCE, version="3"), t, 1.0, 60, rng)
    assert ("genwire-gpt", "3") in engine.models and OTHER not in engine.models


def test_a_rebuilt_alert_of_a_version_that_never_comes_back_resolves() -> None:
    settings = fast_settings()
    engine = MonitorEngine(settings)
    rng = random.Random(34)
    t, _ = run(engine, REFERENCE, T0, 12.0, 100, rng)
    t, events = run(engine, replace(REFERENCE, version="2", slow_ms=1500), t, 3.0, 100, rng)
    (fired,) = [
        e for _, e in events if e.id == "latency:e2e:page:genwire-gpt:2" and e.status == "firing"
    ]
    fresh = MonitorEngine(settings)  # restarted; version 2 was unloaded meanwhile
    assert fresh.restore([fired]) == [fired.id]
    idle_s = settings.scaled(settings.model_idle_s)
    t, events = run(fresh, REFERENCE, t + 5, idle_s / 2, 50, rng)
    assert events == [] and fresh.book.is_firing(fired.id)  # held: it may come back
    t, events = run(fresh, REFERENCE, t, idle_s / 2 + 1, 50, rng)
    assert [(e.id, e.status) for _, e in events] == [(fired.id, "resolved")]
    assert fresh.book.active(t) == []


def test_a_rebuilt_alert_of_a_version_that_comes_back_is_judged_on_its_traffic() -> None:
    settings = fast_settings()
    rng = random.Random(35)
    engine = MonitorEngine(settings)
    t, _ = run(engine, REFERENCE, T0, 12.0, 100, rng)
    t, events = run(engine, replace(REFERENCE, version="2", slow_ms=1500), t, 3.0, 100, rng)
    (fired,) = [
        e for _, e in events if e.id == "latency:e2e:page:genwire-gpt:2" and e.status == "firing"
    ]
    fresh = MonitorEngine(settings)
    fresh.restore([fired])
    t, events = run(fresh, replace(REFERENCE, version="2"), t + 5, 30.0, 100, rng)
    assert [(e.id, e.status) for _, e in events] == [(fired.id, "resolved")]
    assert "no longer served" not in events[0][1].summary  # resolved by healthy traffic


def test_feedback_is_counted_per_served_version_and_unknown_ids_make_no_series() -> None:
    from genwire.feedback import FeedbackEvent

    engine = MonitorEngine(fast_settings())
    t, _ = run(engine, REFERENCE, T0, 2.0, 50, random.Random(36))
    fb = [
        FeedbackEvent(request_id="a", known=True, model="genwire-gpt", model_version="1", rating=1),
        FeedbackEvent(
            request_id="b",
            known=True,
            model="genwire-gpt",
            model_version="1",
            rating=0,
            label="wrong",
            correction="x",
        ),
        FeedbackEvent(request_id="c", known=False, rating=1),  # unknown request id
        *[
            FeedbackEvent(
                request_id=f"d{i}",
                known=True,
                model=f"made-up-{i}",
                model_version="1",
                label=f"l{i}",
            )
            for i in range(100)
        ],
    ]
    engine.add_feedback([e.model_dump_json().encode() for e in fb] + [b"not json"], t)
    assert set(engine.models) == {("genwire-gpt", "1")}
    (m,) = engine.model_figures(t)
    assert m["feedback"] == {
        "count": 2,
        "mean_rating": 0.5,
        "corrections": 1,
        "labels": {"wrong": 1},
    }
    assert (engine.counts.feedback, engine.counts.feedback_unmatched) == (103, 101)
    assert engine.counts.feedback_malformed == 1
    html = page.render(page.snapshot(engine, t))
    assert '<span class="feedback">2, 0.50; wrong 1</span>' in html


def test_spans_of_a_shadow_copy_count_for_nothing() -> None:
    """A shadow copy shares its request's trace: its inference span (another version, here
    failing and late) must not make the request another version's, an error or slower."""
    from genwire_bench.monitor.synth import _attr

    from genwire.policy import SHADOW_ATTRIBUTE

    engine = MonitorEngine(fast_settings())
    rng = random.Random(37)
    by_service = request_spans(REFERENCE, rng, int(T0 * 1e9))
    inference = by_service["genwire-inference"][0]
    shadow = Span()
    shadow.CopyFrom(inference)
    shadow.span_id = b"shadow01"
    shadow.end_time_unix_nano += int(5e9)
    shadow.status.code = shadow.status.STATUS_CODE_ERROR
    del shadow.attributes[:]
    shadow.attributes.extend(
        [
            _attr("genwire.model.version", "3"),
            _attr(SHADOW_ATTRIBUTE, True),
            _attr("genwire.stage", "inference"),
        ]
    )
    by_service["genwire-inference"].append(shadow)
    engine.ingest([encode(by_service)], T0)
    engine.tick(T0 + 1)
    assert engine.counts.shadow_spans == 1 and engine.counts.requests == 1
    assert engine.counts.errors == 0
    assert set(engine.models) == {("genwire-gpt", "1")}


def test_a_non_finite_mean_logprob_is_no_value() -> None:
    """A NaN mean log-probability (a broken model, a stray producer) is left out like a missing
    attribute: the version's mean stays what its finite values say, every request is counted."""
    engine = MonitorEngine(fast_settings())
    rng = random.Random(33)
    t, _ = run(engine, replace(REFERENCE, mean_logprob=-1.0), T0, 4.0, 50, rng)
    before = engine.counts.requests
    t, _ = run(engine, replace(REFERENCE, mean_logprob=float("nan")), t, 4.0, 50, rng)
    (figures,) = engine.model_figures(t)
    assert engine.counts.requests - before >= 190  # (the last few traces are still open)
    assert figures["requests"] == engine.counts.requests
    assert abs(figures["mean_logprob"] + 1.0) < 0.1  # type: ignore[operator]


def test_a_non_finite_latency_attribute_is_no_value() -> None:
    """An infinite TPOT or a NaN TTFT attribute on the inference span: the request is counted
    with its other figures, the evaluation goes on (an infinite value made the sketch raise
    inside tick)."""
    engine = MonitorEngine(fast_settings())
    rng = random.Random(34)
    t = T0
    by_service = request_spans(REFERENCE, rng, int(t * 1e9))
    bad = {sc.TIME_PER_OUTPUT_TOKEN_MS: float("inf"), sc.TIME_TO_FIRST_TOKEN_MS: float("nan")}
    hits = 0
    for spans in by_service.values():
        for span in spans:
            for kv in span.attributes:
                if kv.key in bad:
                    kv.value.double_value = bad[kv.key]
                    hits += 1
    assert hits == 2
    engine.ingest([encode(by_service)], t)
    engine.tick(t + 5)  # the trace is complete (trace_idle_s), its values inside every window
    assert engine.counts.requests == 1 and engine.counts.malformed == 0
    assert engine.counts.too_old == 0
    assert engine.models[("genwire-gpt", "1")].requests == 1
    assert engine.sketch(END_TO_END, t + 5).count == 1  # its other figures are there
    assert engine.sketch(TTFT, t + 5).count == engine.sketch(TPOT, t + 5).count == 0
