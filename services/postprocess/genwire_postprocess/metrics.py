"""Prometheus metrics of the postprocess stage (on the app's own registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from genwire.events import GenerationResult
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

    def observe(self, result: GenerationResult) -> None:
        """Record one result as it is stored and published."""
        outcome = result.error.code if result.error else (result.finish_reason or "")
        self.requests.labels(result.model, outcome).inc()
        t = result.timings
        if t.received is not None and t.completed is not None:
            self.duration.labels(result.model).observe(max(0.0, t.completed - t.received) / 1e3)
