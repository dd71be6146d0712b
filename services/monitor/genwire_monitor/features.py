"""Drift features of a request, read from span attributes (never from prompt or output text).

A time bucket keeps, per feature, a bounded reservoir of values (numeric) or category counts,
each with a few example trace ids, so windows merge cheaply and memory stays bounded.
"""

from __future__ import annotations

import math
import random
from collections import Counter, deque
from dataclasses import dataclass, field
from fractions import Fraction

from genwire.telemetry import semconv as sc
from genwire_monitor.spans import AttrValue


@dataclass(frozen=True)
class Feature:
    """One monitored feature: the span attribute it comes from and how it is tested."""

    attr: str
    kind: str  # "numeric" or "categorical"
    label: str


FEATURES: tuple[Feature, ...] = (
    Feature(sc.GEN_AI_INPUT_TOKENS, "numeric", "prompt tokens"),
    Feature(sc.GEN_AI_OUTPUT_TOKENS, "numeric", "completion tokens"),
    Feature(sc.GEN_AI_FINISH_REASONS, "categorical", "finish reason"),
    Feature(sc.MEAN_LOGPROB, "numeric", "mean token log-probability"),
    Feature(sc.FILTER_HITS, "numeric", "filter hits"),
)
BY_ATTR = {f.attr: f for f in FEATURES}
EXAMPLES_PER_CATEGORY = 3
MAX_CATEGORIES = 32  # beyond this, new values count as "other": bounded memory


def numeric(value: AttrValue | None) -> float | None:
    """A finite number, or None for a missing, non-numeric, NaN or infinite attribute (one
    NaN would make a window's quantiles, PSI and KS meaningless)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def category(value: AttrValue | None) -> str | None:
    """The finish reason: the first of the list (one choice per request here)."""
    if isinstance(value, tuple):
        value = value[0] if value else None
    return None if value is None else str(value)


class Reservoir:
    """Uniform sample (algorithm R) of at most ``size`` values, each with its trace id."""

    def __init__(self, size: int, rng: random.Random) -> None:
        self.size = size
        self.seen = 0
        self.values: list[float] = []
        self.traces: list[str] = []
        self._rng = rng

    def add(self, value: float, trace: str) -> None:
        """Offer one value."""
        self.seen += 1
        if len(self.values) < self.size:
            self.values.append(value)
            self.traces.append(trace)
            return
        j = self._rng.randrange(self.seen)
        if j < self.size:
            self.values[j] = value
            self.traces[j] = trace

    @property
    def rate(self) -> Fraction:
        """The share of the values seen that it holds (exact, so equal rates compare equal)."""
        return Fraction(len(self.values), self.seen) if self.seen else Fraction(1)

    def thinned(self, rate: Fraction, rng: random.Random) -> tuple[list[float], list[str]]:
        """A uniform subsample of ``rate`` x the values seen (at most those held): values and
        trace ids. The fraction of a value left over is kept with that probability, so each
        bucket's expected share of a merge is exactly its share of the traffic."""
        want = rate * self.seen
        k = min(len(self.values), math.floor(want) + (rng.random() < want - math.floor(want)))
        if k == len(self.values):
            return list(self.values), list(self.traces)
        keep = sorted(rng.sample(range(len(self.values)), k))
        return [self.values[i] for i in keep], [self.traces[i] for i in keep]


@dataclass
class FeatureBucket:
    """Every feature's data for one time bucket."""

    size: int
    rng: random.Random
    numeric: dict[str, Reservoir] = field(default_factory=dict)
    counts: dict[str, Counter[str]] = field(default_factory=dict)
    examples: dict[str, dict[str, deque[str]]] = field(default_factory=dict)

    def add(self, attrs: dict[str, AttrValue], trace: str) -> None:
        """Record one request's features."""
        for feature in FEATURES:
            raw = attrs.get(feature.attr)
            if feature.kind == "numeric":
                value = numeric(raw)
                if value is not None:
                    res = self.numeric.get(feature.attr)
                    if res is None:
                        res = self.numeric[feature.attr] = Reservoir(self.size, self.rng)
                    res.add(value, trace)
            else:
                cat = category(raw)
                if cat is not None:
                    counts = self.counts.setdefault(feature.attr, Counter())
                    if cat not in counts and len(counts) >= MAX_CATEGORIES:
                        cat = "other"
                    counts[cat] += 1
                    per = self.examples.setdefault(feature.attr, {})
                    per.setdefault(cat, deque(maxlen=EXAMPLES_PER_CATEGORY)).append(trace)
