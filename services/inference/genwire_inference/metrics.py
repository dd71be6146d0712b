"""Prometheus metrics of the inference stage (on the app's own registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from genwire.events import GenerationChunk
from genwire.metrics import LATENCY_BUCKETS
from genwire.telemetry import semconv as sc


class InferenceMetrics:
    """Time to first token, time per output token and tokens generated, by model."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.ttft = Histogram(
            sc.METRIC_TTFT_SECONDS,
            "From the start of inference to the first generated token.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.tpot = Histogram(
            sc.METRIC_TPOT_SECONDS,
            "Mean time per output token after the first.",
            ["model"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
            registry=registry,
        )
        self.tokens = Counter(
            sc.METRIC_TOKENS, "Tokens generated.", ["model", "finish_reason"], registry=registry
        )

    def observe(self, final: GenerationChunk) -> None:
        """Record one finished generation (its final chunk)."""
        t = final.timings
        if t.first_token is not None and t.inference_start is not None:
            self.ttft.labels(final.model).observe(max(0.0, t.first_token - t.inference_start) / 1e3)
            if t.inference_end is not None and final.completion_tokens > 1:
                per = (t.inference_end - t.first_token) / (final.completion_tokens - 1)
                self.tpot.labels(final.model).observe(max(0.0, per) / 1e3)
        self.tokens.labels(final.model, final.finish_reason or "").inc(final.completion_tokens)
