"""The drift statistics against known values."""

from __future__ import annotations

import numpy as np
import pytest
from genwire_monitor import drift_stats as ds
from genwire_monitor.features import numeric


def test_quantile_edges_collapse_ties_so_integers_work() -> None:
    edges = ds.quantile_edges([64.0] * 100 + [10.0] * 5, 10)
    assert list(edges) == [64.0]
    assert list(ds.binned([10, 64, 64, 100], edges)) == [1, 3]


def test_psi_of_identical_samples_is_zero_and_grows_with_shift() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, 5000)
    edges = ds.quantile_edges(ref, 10)
    same = ds.psi(ds.binned(ref, edges), ds.binned(rng.normal(0, 1, 5000), edges))
    shifted = ds.psi(ds.binned(ref, edges), ds.binned(rng.normal(1, 1, 5000), edges))
    assert same < 0.02
    assert shifted > 0.5


def test_psi_matches_the_formula() -> None:
    ref = np.array([50.0, 50.0])
    cur = np.array([25.0, 75.0])
    expected = (0.25 - 0.5) * np.log(0.25 / 0.5) + (0.75 - 0.5) * np.log(0.75 / 0.5)
    assert ds.psi(ref, cur) == pytest.approx(expected, rel=1e-3)


def test_js_distance_bounds() -> None:
    assert ds.js_distance(np.array([1.0, 0.0]), np.array([1.0, 0.0])) == pytest.approx(0, abs=1e-6)
    assert ds.js_distance(np.array([1.0, 0.0]), np.array([0.0, 1.0])) > 0.99


def test_ks_and_chi_square() -> None:
    rng = np.random.default_rng(1)
    d, p = ds.ks(rng.normal(0, 1, 500), rng.normal(0, 1, 500))
    assert p > 0.01
    d, p = ds.ks(rng.normal(0, 1, 500), rng.normal(0.5, 1, 500))
    assert p < 1e-6 and d > 0.15
    _, p = ds.chi_square(np.array([80.0, 20.0]), np.array([79.0, 21.0]))
    assert p > 0.5
    _, p = ds.chi_square(np.array([80.0, 20.0]), np.array([10.0, 90.0]))
    assert p < 1e-10
    assert ds.chi_square(np.array([5.0]), np.array([9.0])) == (0.0, 1.0)


def test_numeric_verdict_needs_effect_size_and_significance() -> None:
    rng = np.random.default_rng(2)
    th = ds.Thresholds()
    ref = rng.lognormal(np.log(40), 0.5, 2000)
    steady = ds.numeric_score("x", ref, rng.lognormal(np.log(40), 0.5, 500), 10, th)
    assert not steady.drifted and steady.clear
    longer = ds.numeric_score("x", ref, rng.lognormal(np.log(400), 0.5, 500), 10, th)
    assert longer.drifted and not longer.clear
    assert "median" in longer.cur_summary


def test_categorical_verdict() -> None:
    th = ds.Thresholds()
    ref = {"stop": 800, "length": 200}
    assert not ds.categorical_score("f", ref, {"stop": 160, "length": 40}, th).drifted
    moved = ds.categorical_score("f", ref, {"stop": 20, "length": 180}, th)
    assert moved.drifted
    assert moved.cur_summary.startswith("length 90%")


def test_non_finite_attribute_values_are_not_features() -> None:
    """One NaN (a mean log-probability of no tokens) would make a window's quantiles, PSI and
    KS meaningless: it is no value, like a missing attribute."""
    assert numeric(3) == 3.0
    assert numeric(-2.5) == -2.5
    for bad in (float("nan"), float("inf"), -float("inf"), True, "3", None):
        assert numeric(bad) is None
