"""Prometheus metrics of the inference stage (on the app's own registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from genwire.events import GenerationChunk
from genwire.labels import BoundedLabel
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
        # Preprocess lets only served model names through; bounded all the same (a record
        # produced to genwire.prepared directly names whatever it likes).
        self.models = BoundedLabel()
        self.reasons = BoundedLabel(16)

    def observe(self, final: GenerationChunk) -> None:
        """Record one finished generation (its final chunk); a shadow copy's is not (its
        figures would count under the served model's label, and the monitor evaluates
        shadows from their own spans and results)."""
        if final.shadow:
            return
        t = final.timings
        model = self.models(final.model)
        if t.first_token is not None and t.inference_start is not None:
            self.ttft.labels(model).observe(max(0.0, t.first_token - t.inference_start) / 1e3)
            tokens = per_choice_tokens(final)
            if t.inference_end is not None and tokens > 1:
                per = (t.inference_end - t.first_token) / (tokens - 1)
                self.tpot.labels(model).observe(max(0.0, per) / 1e3)
        reason = self.reasons(final.finish_reason or "")
        self.tokens.labels(model, reason).inc(final.completion_tokens)


def per_choice_tokens(final: GenerationChunk) -> int:
    """The tokens of the longest choice: a request's ``n`` choices are generated together,
    one token each per step, so its time after the first token is the longest choice's, and
    ``completion_tokens`` (every choice's, summed) would make the time per token n times too
    small."""
    if final.choices:
        return max(
            c.completion_tokens if c.completion_tokens is not None else len(c.output_ids)
            for c in final.choices
        )
    return final.completion_tokens
