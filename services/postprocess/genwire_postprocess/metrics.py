"""Prometheus metrics of the postprocess stage (on the app's own registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from genwire.events import GenerationResult
from genwire.labels import BoundedLabel, model_label
from genwire.metrics import LATENCY_BUCKETS
from genwire.telemetry import semconv as sc


class ResultMetrics:
    """Finished requests by outcome, and their time from receipt to result."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            sc.METRIC_REQUESTS,
            "Requests finished, by outcome (a finish reason or an error code).",
            ["model", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            sc.METRIC_REQUEST_SECONDS,
            "From receipt (entry point) to result (postprocess).",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.models = BoundedLabel()  # model names come from callers: bounded
        self.outcomes = BoundedLabel(64)  # finish reasons and error codes: bounded sets anyway

    def observe(self, result: GenerationResult) -> None:
        """Record one result as it is stored and published."""
        outcome = result.error.code if result.error else (result.finish_reason or "")
        model = model_label(self.models, result.model, result.model_version)
        self.requests.labels(model, self.outcomes(outcome)).inc()
        t = result.timings
        if t.received is not None and t.completed is not None:
            self.duration.labels(model).observe(max(0.0, t.completed - t.received) / 1e3)
