"""Two-sample drift statistics: PSI, Kolmogorov-Smirnov, chi-square, Jensen-Shannon.

Pure functions over numbers and counts, so each is unit-tested against known values. PSI and
JS use bins calibrated on the reference (its quantiles), which keeps every bin populated in the
reference and makes the scores comparable across features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.special import chdtrc, rel_entr

from genwire_monitor.kstest import ks_2samp

# Only numpy and scipy.special here: scipy.stats (and scipy.spatial) would cost the monitor ~48 MB
# of RSS to import (docs/monitor.md); each replacement is tested against scipy's own function.

EPSILON = 1e-4  # floor of a bin's share, so an empty bin gives a large but finite PSI

Floats = NDArray[np.float64]


def quantile_edges(reference: Sequence[float] | Floats, bins: int) -> Floats:
    """Interior bin edges at the reference's quantiles (ties collapse, so integers work)."""
    ref = np.asarray(reference, dtype=np.float64)
    if ref.size == 0:
        return np.empty(0)
    qs = np.quantile(ref, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    edges: Floats = np.unique(qs)
    return edges


def binned(values: Sequence[float] | Floats, edges: Floats) -> Floats:
    """Counts per bin; bin ``i`` is ``[edges[i-1], edges[i])`` with open ends."""
    idx = np.searchsorted(edges, np.asarray(values, dtype=np.float64), side="right")
    counts: Floats = np.bincount(idx, minlength=edges.size + 1).astype(np.float64)
    return counts


def _shares(counts: Floats) -> Floats:
    total = counts.sum()
    shares = counts / total if total else np.full(counts.shape, 1.0 / max(1, counts.size))
    floored: Floats = np.maximum(shares, EPSILON)
    out: Floats = floored / floored.sum()
    return out


def psi_bias(bins: int, n_ref: int, n_cur: int) -> float:
    """PSI's expected value when nothing changed: sampling noise alone, (bins-1)(1/n+1/m).

    PSI is a symmetrised chi-square divided by the sample size, so small windows score well
    above zero by chance; the verdict subtracts this, keeping false alarms rare at any size.
    """
    return (bins - 1) * (1.0 / max(1, n_ref) + 1.0 / max(1, n_cur))


def psi(ref_counts: Floats, cur_counts: Floats) -> float:
    """Population stability index: sum of (cur - ref) * ln(cur / ref) over bins."""
    r, c = _shares(ref_counts), _shares(cur_counts)
    return float(np.sum((c - r) * np.log(c / r)))


def js_distance(ref_counts: Floats, cur_counts: Floats) -> float:
    """Jensen-Shannon distance, base 2: 0 identical, 1 disjoint."""
    r, c = _shares(ref_counts), _shares(cur_counts)
    mid = (r + c) / 2
    divergence = (rel_entr(r, mid).sum() + rel_entr(c, mid).sum()) / 2
    return float(np.sqrt(max(divergence, 0.0) / np.log(2)))


def ks(
    reference: Sequence[float] | Floats, current: Sequence[float] | Floats
) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov: ``(statistic, p-value)``, exact up to 16,000 values in
    all (:mod:`genwire_monitor.kstest`)."""
    return ks_2samp(reference, current)


def chi_square(ref_counts: Floats, cur_counts: Floats) -> tuple[float, float]:
    """Chi-square test of homogeneity of two count vectors: ``(statistic, p-value)``, no
    continuity correction; degrees of freedom: the categories seen, less one."""
    table = np.vstack([ref_counts, cur_counts])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 0.0, 1.0  # one category only: nothing can differ
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    stat = float(((table - expected) ** 2 / expected).sum())
    return stat, float(chdtrc(table.shape[1] - 1, stat))


def category_counts(
    ref: Mapping[str, int], cur: Mapping[str, int]
) -> tuple[list[str], Floats, Floats]:
    """Aligned count vectors over the union of categories."""
    names = sorted(set(ref) | set(cur))
    r = np.array([ref.get(n, 0) for n in names], dtype=np.float64)
    c = np.array([cur.get(n, 0) for n in names], dtype=np.float64)
    return names, r, c


@dataclass(frozen=True)
class Thresholds:
    """When a feature counts as drifted, and when as clear again (hysteresis)."""

    psi: float = 0.2
    psi_clear: float = 0.1
    js: float = 0.1
    js_clear: float = 0.05
    p_value: float = 0.01


@dataclass(frozen=True)
class FeatureScore:
    """The tests of one feature, reference vs current, and the verdict."""

    feature: str
    kind: str  # "numeric" or "categorical"
    n_ref: int
    n_cur: int
    psi: float  # as computed; the verdict uses psi - psi_bias
    psi_bias: float
    js: float
    p_value: float
    statistic: float  # KS D (numeric) or chi-square (categorical)
    ref_summary: str
    cur_summary: str
    drifted: bool
    clear: bool


def numeric_score(
    feature: str, ref: Floats, cur: Floats, bins: int, th: Thresholds
) -> FeatureScore:
    """PSI and JS on reference-quantile bins plus KS; drift needs effect size AND significance."""
    edges = quantile_edges(ref, bins)
    rc, cc = binned(ref, edges), binned(cur, edges)
    p_psi, p_js = psi(rc, cc), js_distance(rc, cc)
    d, p = ks(ref, cur)
    bias = psi_bias(edges.size + 1, int(ref.size), int(cur.size))
    return FeatureScore(
        feature,
        "numeric",
        int(ref.size),
        int(cur.size),
        p_psi,
        bias,
        p_js,
        p,
        d,
        _describe(ref),
        _describe(cur),
        drifted=p_psi - bias >= th.psi and p < th.p_value,
        clear=p_psi - bias < th.psi_clear,
    )


def categorical_score(
    feature: str, ref: Mapping[str, int], cur: Mapping[str, int], th: Thresholds
) -> FeatureScore:
    """Chi-square plus JS (and PSI for reference) over category counts."""
    names, rc, cc = category_counts(ref, cur)
    p_js, p_psi = js_distance(rc, cc), psi(rc, cc)
    stat, p = chi_square(rc, cc)
    return FeatureScore(
        feature,
        "categorical",
        int(rc.sum()),
        int(cc.sum()),
        p_psi,
        psi_bias(len(names), int(rc.sum()), int(cc.sum())),
        p_js,
        p,
        stat,
        _mix(names, rc),
        _mix(names, cc),
        drifted=p_js >= th.js and p < th.p_value,
        clear=p_js < th.js_clear,
    )


def _describe(values: Floats) -> str:
    if values.size == 0:
        return "no data"
    p50, p95 = np.quantile(values, [0.5, 0.95])
    return f"median {p50:.3g}, p95 {p95:.3g}"


def _mix(names: list[str], counts: Floats) -> str:
    total = counts.sum() or 1.0
    parts = sorted(zip(names, counts, strict=True), key=lambda nc: -nc[1])
    return ", ".join(f"{n} {c / total:.0%}" for n, c in parts[:4] if c)
