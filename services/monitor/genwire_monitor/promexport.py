"""The monitor's figures on Prometheus ``/metrics``: the same numbers the alerts and page use.

The engine thread builds a ``Figures`` snapshot after every evaluation and swaps it in; the
collector only reads the latest snapshot, so a scrape never touches live engine state.

Latency is a histogram per stage in seconds (cumulative buckets, fed by the observations that
feed the page's sketches), so Prometheus can sum instances and take quantiles over any range;
the page window's quantiles stay on the status page and in the alerts. Label values never
contain whitespace (stage names such as ``triton queue`` become ``triton_queue``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from genwire.telemetry import semconv as sc
from genwire_monitor import burnrate
from genwire_monitor.handlers import MonitorEngine
from genwire_monitor.histogram import Histogram

# Per model version (bounded: ``max_models`` series plus ``other``).
METRIC_MODEL_REQUESTS = "genwire_monitor_model_requests_total"
METRIC_MODEL_ERROR_RATIO = "genwire_monitor_model_error_ratio"
METRIC_MODEL_LOGPROB = "genwire_monitor_model_mean_logprob"
METRIC_MODEL_BURN_RATE = "genwire_monitor_model_slo_burn_rate"
METRIC_ROLLBACKS = "genwire_monitor_rollbacks_total"
METRIC_FEEDBACK = "genwire_monitor_model_feedback_total"
# The worker's own health (its /readyz checks, as numbers).
METRIC_UNPUBLISHED_AGE = "genwire_monitor_unpublished_age_seconds"
METRIC_EVALUATION_AGE = "genwire_monitor_last_evaluation_age_seconds"


def label(value: str) -> str:
    """A label value Prometheus tooling handles well: whitespace runs become ``_``."""
    return "_".join(value.split())


def _le(bound: float) -> str:
    """A bucket's ``le`` as the Prometheus client writes it (``0.25``, ``1.0``, ``+Inf``)."""
    return "+Inf" if math.isinf(bound) else repr(bound)


@dataclass
class Figures:
    """Plain numbers copied out of the engine."""

    records: int = 0
    malformed: int = 0
    spans: int = 0
    requests: int = 0
    errors: int = 0
    open_traces: int = 0
    latency: dict[str, Histogram] = field(default_factory=dict)
    burn: list[tuple[str, str, str, float]] = field(default_factory=list)
    drift: list[tuple[str, str, str, str, float]] = field(default_factory=list)
    alerts: list[tuple[str, str, str]] = field(default_factory=list)
    partitions: list[tuple[str, str, str, int, float]] = field(default_factory=list)
    models: list[tuple[str, str, int, int, float | None, float | None]] = field(
        default_factory=list
    )  # model, version, requests, errors (since start), error ratio, mean logprob (window)
    model_burn: list[tuple[str, str, str, str, str, float]] = field(default_factory=list)
    rollbacks: dict[str, int] = field(default_factory=dict)  # model -> rollbacks published


def figures(engine: MonitorEngine, now: float) -> Figures:
    """Snapshot the engine's figures (call on the engine's thread)."""
    s = engine.settings
    c = engine.counts
    out = Figures(c.records, c.malformed, c.spans, c.requests, c.errors, len(engine.traces))
    out.latency = engine.histograms()
    for slo in engine.all_slos():
        for r in burnrate.evaluate(
            slo.ring, slo.objective, s.burn_rules, now, s.window_scale, s.min_events
        ):
            rule = f"{r.rule.severity}:{r.rule.long_s:g}s/{r.rule.short_s:g}s"
            for window, burn in (("long", r.long_burn), ("short", r.short_burn)):
                if slo.model is None:
                    out.burn.append((slo.name, rule, window, burn))
                else:
                    where = (slo.model, slo.version or "")
                    out.model_burn.append((*where, slo.name, rule, window, burn))
    for m in engine.model_figures(now):
        ratio, logprob = m["error_ratio"], m["mean_logprob"]
        out.models.append(
            (
                str(m["model"]),
                str(m["version"]),
                int(m["requests_total"]),  # type: ignore[call-overload]
                int(m["errors_total"]),  # type: ignore[call-overload]
                ratio if isinstance(ratio, float) else None,
                logprob if isinstance(logprob, float) else None,
            )
        )
    for series in engine.drift_results:
        for score in series.scores:
            for test, value in (("psi", score.psi), ("js", score.js), ("p_value", score.p_value)):
                out.drift.append((series.model, series.version, score.feature, test, value))
    out.alerts = [(a.id, a.kind, a.severity) for a in engine.book.active(now)]
    out.rollbacks = dict(engine.rollback.published_total)
    out.partitions = [
        (p.group, p.topic, str(p.partition), p.lag, p.stalled_s) for p in engine.partitions.values()
    ]
    return out


class MonitorCollector(Collector):
    """Exposes the latest ``Figures``."""

    def __init__(self) -> None:
        self.latest = Figures()
        # Read live at each scrape (not from the snapshot: an evaluation that keeps failing
        # never refreshes it): (oldest unpublished record's age, last evaluation's age).
        self.health: Callable[[], tuple[float, float]] | None = None

    def collect(self) -> Iterator[Metric]:
        """Called by the Prometheus client on every scrape."""
        f = self.latest
        records = CounterMetricFamily(
            sc.METRIC_MONITOR_RECORDS,
            "Kafka records read from the spans topic.",
            labels=["outcome"],
        )
        records.add_metric(["ok"], f.records - f.malformed)
        records.add_metric(["malformed"], f.malformed)
        yield records
        yield CounterMetricFamily(sc.METRIC_MONITOR_SPANS, "Spans decoded.", value=f.spans)
        requests = CounterMetricFamily(
            sc.METRIC_MONITOR_REQUESTS, "Requests (traces) completed.", labels=["outcome"]
        )
        requests.add_metric(["ok"], f.requests - f.errors)
        requests.add_metric(["error"], f.errors)
        yield requests
        yield GaugeMetricFamily(
            sc.METRIC_MONITOR_OPEN_TRACES, "Traces being assembled.", value=f.open_traces
        )
        latency = HistogramMetricFamily(
            sc.METRIC_MONITOR_STAGE_LATENCY,
            "Latency per stage since the monitor started, from the spans (the status page's "
            "percentiles come from the same observations).",
            labels=["stage"],
        )
        for stage, hist in f.latency.items():
            buckets = [(_le(bound), n) for bound, n in hist.cumulative()]
            latency.add_metric([label(stage)], buckets, hist.sum_s)
        yield latency
        yield from _health_metrics(self.health)
        burn = GaugeMetricFamily(
            sc.METRIC_MONITOR_BURN_RATE,
            "SLO error-budget burn rate per rule and window.",
            labels=["slo", "rule", "window"],
        )
        for slo, rule, window, value in f.burn:
            burn.add_metric([label(slo), label(rule), window], value)
        yield burn
        drift = GaugeMetricFamily(
            sc.METRIC_MONITOR_DRIFT,
            "Drift test results, reference vs current window.",
            labels=["model", "version", "feature", "test"],
        )
        for model, version, feature, test, value in f.drift:
            drift.add_metric([label(model), label(version), label(feature), test], value)
        yield drift
        alerts = GaugeMetricFamily(
            sc.METRIC_MONITOR_ALERTS,
            "1 for each alert firing now.",
            labels=["id", "kind", "severity"],
        )
        for aid, kind, severity in f.alerts:
            alerts.add_metric([label(aid), kind, severity], 1)
        yield alerts
        labels = ["group", "topic", "partition"]
        lag = GaugeMetricFamily(
            sc.METRIC_MONITOR_PARTITION_LAG,
            "Records waiting for a watched consumer group (log end - committed), from the broker.",
            labels=labels,
        )
        stalled = GaugeMetricFamily(
            sc.METRIC_MONITOR_PARTITION_STALLED_S,
            "Seconds a watched partition has had records waiting with its committed offset "
            "unchanged (0: no lag).",
            labels=labels,
        )
        for group, topic, partition, waiting, stalled_s in f.partitions:
            where = [label(group), label(topic), partition]
            lag.add_metric(where, waiting)
            stalled.add_metric(where, stalled_s)
        yield lag
        yield stalled
        yield from _model_metrics(f)


def _model_metrics(f: Figures) -> Iterator[Metric]:
    where = ["model", "version"]
    requests = CounterMetricFamily(
        METRIC_MODEL_REQUESTS, "Requests per model version since start.", labels=[*where, "outcome"]
    )
    ratio = GaugeMetricFamily(
        METRIC_MODEL_ERROR_RATIO, "Failed share of requests over the page window.", labels=where
    )
    logprob = GaugeMetricFamily(
        METRIC_MODEL_LOGPROB,
        "Mean of genwire.mean_logprob over the page window.",
        labels=where,
    )
    for model, version, total, errors, error_ratio, mean in f.models:
        at = [label(model), label(version)]
        requests.add_metric([*at, "ok"], total - errors)
        requests.add_metric([*at, "error"], errors)
        if error_ratio is not None:
            ratio.add_metric(at, error_ratio)
        if mean is not None:
            logprob.add_metric(at, mean)
    burn = GaugeMetricFamily(
        METRIC_MODEL_BURN_RATE,
        "SLO error-budget burn rate per model version, rule and window.",
        labels=[*where, "slo", "rule", "window"],
    )
    for model, version, slo, rule, window, value in f.model_burn:
        burn.add_metric([label(model), label(version), label(slo), label(rule), window], value)
    yield requests
    yield ratio
    yield logprob
    yield burn
    rollbacks = CounterMetricFamily(
        METRIC_ROLLBACKS,
        "Automatic rollbacks published on genwire.config, per model (models with a policy).",
        labels=["model"],
    )
    for model, n in f.rollbacks.items():
        rollbacks.add_metric([label(model)], n)
    yield rollbacks


def _health_metrics(health: Callable[[], tuple[float, float]] | None) -> Iterator[Metric]:
    """The worker's readiness figures (none without a worker)."""
    if health is None:
        return
    unpublished, evaluated = health()
    yield GaugeMetricFamily(
        METRIC_UNPUBLISHED_AGE,
        "Seconds the oldest alert, alert-state record or rollback the monitor could not "
        "publish has waited (0: none); /readyz fails at stall_timeout_s.",
        value=unpublished,
    )
    yield GaugeMetricFamily(
        METRIC_EVALUATION_AGE,
        "Seconds since the last successful evaluation of the rules.",
        value=evaluated,
    )


def register(registry: CollectorRegistry) -> MonitorCollector:
    """Add a collector to ``registry`` and return it (to swap figures into)."""
    collector = MonitorCollector()
    registry.register(collector)
    return collector
