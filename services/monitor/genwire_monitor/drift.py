"""Drift per model version: reference window vs current window, every feature, every test.

The reference is either *frozen* (the first ``reference_window`` of a model version's traffic,
kept until restart) or *rolling* (the window just before the current one). Windows are rings
of time buckets, so memory is bounded by the bucket count times the reservoir size.
"""

from __future__ import annotations

import random
from collections import Counter, OrderedDict
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np

from genwire_monitor.config import DriftSettings
from genwire_monitor.drift_stats import (
    FeatureScore,
    Floats,
    Thresholds,
    categorical_score,
    numeric_score,
)
from genwire_monitor.features import FEATURES, FeatureBucket, Reservoir
from genwire_monitor.traces import RequestRecord
from genwire_monitor.windows import TimeRing

MAX_SERIES = 32  # model versions tracked at once; the least recently seen is dropped
REFERENCE_CAP = 5000  # values per feature kept in a frozen reference

ModelKey = tuple[str, str]


@dataclass
class Window:
    """One window's merged data: values with trace ids, category counts and examples."""

    values: dict[str, tuple[Floats, list[str]]] = field(default_factory=dict)
    counts: dict[str, Counter[str]] = field(default_factory=dict)
    examples: dict[str, dict[str, list[str]]] = field(default_factory=dict)


def merge(buckets: list[FeatureBucket], cap: int | None, rng: random.Random) -> Window:
    """Merge buckets: each numeric feature's values in proportion to the values each bucket
    saw (``proportional``), then optionally subsampled to ``cap`` values."""
    out = Window()
    for feature in FEATURES:
        if feature.kind == "numeric":
            held = [b.numeric[feature.attr] for b in buckets if feature.attr in b.numeric]
            vals, traces = proportional(held, rng)
            if cap is not None and len(vals) > cap:
                keep = sorted(rng.sample(range(len(vals)), cap))
                vals = [vals[i] for i in keep]
                traces = [traces[i] for i in keep]
            if vals:
                out.values[feature.attr] = (np.asarray(vals, dtype=np.float64), traces)
        else:
            counts: Counter[str] = Counter()
            examples: dict[str, list[str]] = {}
            for b in buckets:
                counts.update(b.counts.get(feature.attr, {}))
                for cat, ids in b.examples.get(feature.attr, {}).items():
                    examples.setdefault(cat, []).extend(ids)
            if counts:
                out.counts[feature.attr] = counts
                out.examples[feature.attr] = examples
    return out


def proportional(reservoirs: list[Reservoir], rng: random.Random) -> tuple[list[float], list[str]]:
    """The reservoirs' values and trace ids, each thinned to the lowest sampling rate among them.

    A bucket's reservoir holds at most ``samples_per_bucket`` values however busy the bucket
    was, so joining them as they are over-weights quiet buckets (a burst in one busy bucket
    shrank to a fraction of its real share, and the same traffic read as drift). Thinned to one
    rate, the merge is a proportional stratified sample of the window: unweighted, of its real
    size, so the statistics' formulas (PSI's noise term, KS's exact p, chi-square, JS) hold as
    they are. Weights would need an effective sample size in each and make KS's exact p an
    approximation. It keeps at least the slowest-sampled bucket's whole reservoir.
    """
    if not reservoirs:
        return [], []
    rate = min(r.rate for r in reservoirs)
    vals: list[float] = []
    traces: list[str] = []
    for r in reservoirs:
        v, t = r.thinned(rate, rng)
        vals += v
        traces += t
    return vals, traces


@dataclass
class SeriesResult:
    """Drift of one model version now: a score per testable feature, with examples."""

    model: str
    version: str
    state: str  # "ok", "warming up" (no reference yet) or "too few samples"
    scores: list[FeatureScore] = field(default_factory=list)
    examples: dict[str, list[str]] = field(default_factory=dict)


class _Series:
    def __init__(self, ring: TimeRing[FeatureBucket], first_seen: float) -> None:
        self.ring = ring
        self.first_seen = first_seen
        self.reference: Window | None = None


class DriftMonitor:
    """Feature windows per (model, version) and their evaluation."""

    def __init__(self, cfg: DriftSettings, scale: float, seed: int = 0) -> None:
        self.cfg = cfg
        self.reference_s = cfg.reference_window_s * scale
        self.current_s = cfg.current_window_s * scale
        self.th = Thresholds(
            cfg.psi_threshold, cfg.psi_clear, cfg.js_threshold, cfg.js_clear, cfg.p_value
        )
        self._rng = random.Random(seed)
        self._series: OrderedDict[ModelKey, _Series] = OrderedDict()

    def _new_bucket(self) -> FeatureBucket:
        return FeatureBucket(self.cfg.samples_per_bucket, self._rng)

    def add(self, record: RequestRecord, now: float, key: ModelKey | None = None) -> None:
        """Record a completed request's features under its model version (or ``key``: the
        engine's bounded series, ``other`` for everything beyond ``max_models``)."""
        key = key or (record.model, record.version)
        series = self._series.get(key)
        if series is None:
            width = self.current_s / 4
            ring = TimeRing(width, self.reference_s + self.current_s + width, self._new_bucket)
            series = self._series[key] = _Series(ring, now)
            while len(self._series) > MAX_SERIES:
                self._series.popitem(last=False)
        else:
            self._series.move_to_end(key)
        bucket = series.ring.at(record.end_ns / 1e9, now)
        if bucket is not None:
            bucket.add(record.attrs, record.trace_hex)

    def drop(self, key: ModelKey) -> None:
        """Forget a model version's windows and reference (its series was evicted)."""
        self._series.pop(key, None)

    def compare(
        self,
        baseline: ModelKey,
        key: ModelKey,
        now: float,
        min_samples: int,
        attrs: Collection[str],
    ) -> SeriesResult | None:
        """A canary against its champion: ``key``'s current window tested against
        ``baseline``'s current window (the same time span, the same traffic mix), for each
        feature in ``attrs`` with at least ``min_samples`` on both sides. None: a series is
        not tracked."""
        base, cur_series = self._series.get(baseline), self._series.get(key)
        if base is None or cur_series is None:
            return None
        ref = merge(base.ring.window(now, self.current_s), None, self._rng)
        cur = merge(cur_series.ring.window(now, self.current_s), None, self._rng)
        return self._score(SeriesResult(key[0], key[1], "ok"), ref, cur, min_samples, attrs)

    def evaluate(self, now: float) -> list[SeriesResult]:
        """Every tracked model version's drift now."""
        return [self._evaluate(key, s, now) for key, s in self._series.items()]

    def _reference(self, series: _Series, now: float) -> Window | None:
        if self.cfg.reference == "rolling":
            if now - series.first_seen < self.reference_s + self.current_s:
                return None
            return merge(
                series.ring.window(now - self.current_s, self.reference_s), None, self._rng
            )
        if series.reference is None and now - series.first_seen >= self.reference_s:
            window = merge(series.ring.window(now, self.reference_s), REFERENCE_CAP, self._rng)
            if _size(window) >= self.cfg.min_samples:
                series.reference = window
        return series.reference

    def _evaluate(self, key: ModelKey, series: _Series, now: float) -> SeriesResult:
        result = SeriesResult(key[0], key[1], "ok")
        ref = self._reference(series, now)
        if ref is None:
            result.state = "warming up"
            return result
        cur = merge(series.ring.window(now, self.current_s), None, self._rng)
        return self._score(result, ref, cur, self.cfg.min_samples)

    def _score(
        self,
        result: SeriesResult,
        ref: Window,
        cur: Window,
        n: int,
        attrs: Collection[str] | None = None,
    ) -> SeriesResult:
        """Every feature (of ``attrs``) with at least ``n`` values on both sides, scored into
        ``result``."""
        for feature in FEATURES:
            if attrs is not None and feature.attr not in attrs:
                continue
            if feature.kind == "numeric":
                r, c = ref.values.get(feature.attr), cur.values.get(feature.attr)
                if r is None or c is None or r[0].size < n or c[0].size < n:
                    continue
                score = numeric_score(feature.attr, r[0], c[0], self.cfg.psi_bins, self.th)
                result.examples[feature.attr] = _numeric_examples(r[0], c[0], c[1])
            else:
                rc, cc = ref.counts.get(feature.attr), cur.counts.get(feature.attr)
                if rc is None or cc is None or rc.total() < n or cc.total() < n:
                    continue
                score = categorical_score(feature.attr, rc, cc, self.th)
                result.examples[feature.attr] = _category_examples(
                    rc, cc, cur.examples.get(feature.attr, {})
                )
            result.scores.append(score)
        if not result.scores:
            result.state = "too few samples"
        return result


def _size(window: Window) -> int:
    sizes = [v[0].size for v in window.values.values()]
    sizes += [c.total() for c in window.counts.values()]
    return max(sizes, default=0)


def _numeric_examples(ref: Floats, cur: Floats, traces: list[str], k: int = 5) -> list[str]:
    """Current-window traces furthest from the reference median, in the direction it moved."""
    order = np.argsort(cur)
    picks = order[:k] if np.median(cur) < np.median(ref) else order[::-1][:k]
    return [traces[i] for i in picks]


def _category_examples(
    ref: Counter[str], cur: Counter[str], examples: dict[str, list[str]], k: int = 5
) -> list[str]:
    """Traces of the category whose share grew the most."""
    rt, ct = ref.total() or 1, cur.total() or 1
    grown = max(cur, key=lambda c: cur[c] / ct - ref.get(c, 0) / rt)
    return examples.get(grown, [])[-k:]
