"""The monitor's own exact KS test, chi-square and JS distance against scipy's and exact counts.

The monitor does not import scipy.stats (RSS); these tests do, to hold the replacements to it.
"""

from __future__ import annotations

import math
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from genwire_bench.monitor.stats_cost import import_rss_mb, ks_rows
from genwire_monitor import drift_stats as ds
from genwire_monitor import kstest
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency, ks_2samp

PATHS = ["extended", "logs"]
TOLERANCE = 1e-12 if kstest._EXTENDED else 1e-9  # the log path's absolute accuracy


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test through each way of summing the path counts."""
    if request.param == "logs":
        monkeypatch.setattr(kstest, "_EXTENDED", False)
    elif not kstest._EXTENDED:
        pytest.skip("this platform's long double has no extended exponent range")
    return str(request.param)


def brute_pvalue(m: int, n: int, d: float) -> float:
    """P(D >= d) by counting every lattice path exactly, with no band tricks."""
    h = Fraction(d).limit_denominator(math.lcm(m, n))
    inside = [[0] * (n + 1) for _ in range(m + 1)]
    for i in range(m + 1):
        for j in range(n + 1):
            if abs(Fraction(i, m) - Fraction(j, n)) >= h:
                continue
            if i == 0 and j == 0:
                inside[i][j] = 1
            else:
                left = inside[i - 1][j] if i else 0
                below = inside[i][j - 1] if j else 0
                inside[i][j] = left + below
    return float(1 - Fraction(inside[m][n], math.comb(m + n, m)))


@pytest.mark.parametrize(("m", "n"), [(1, 1), (1, 6), (4, 6), (7, 7), (9, 15), (20, 13)])
def test_pvalue_equals_the_exact_path_count(path: str, m: int, n: int) -> None:
    lcm = math.lcm(m, n)
    for k in range(1, lcm + 1):  # D is always a multiple of 1/lcm
        d = k / lcm
        assert kstest.exact_pvalue(m, n, d) == pytest.approx(brute_pvalue(m, n, d), abs=1e-12)


CASES = [(50, 37), (200, 200), (200, 5000), (512, 2048), (2048, 5000), (3000, 5000)]


@pytest.mark.parametrize(("m", "n"), CASES)
@pytest.mark.parametrize("shift", [0.0, 0.1, 0.3, 1.0])
def test_statistic_and_pvalue_match_scipy_exact(m: int, n: int, shift: float) -> None:
    """The monitor's window sizes, from no drift to a clear one: a wide band (large D) at a few
    thousand values is where float64 counts fail."""
    rng = np.random.default_rng(m + n)
    for ties in (False, True):
        ref, cur = rng.normal(0, 1, m), rng.normal(shift, 1, n)
        if ties:  # token counts are integers
            ref, cur = np.round(ref * 3), np.round(cur * 3)
        want = ks_2samp(ref, cur, method="exact")
        d, p = kstest.ks_2samp(ref, cur)
        assert d == pytest.approx(want.statistic, abs=1e-12)
        assert p == pytest.approx(want.pvalue, abs=TOLERANCE, rel=1e-7)


@pytest.mark.parametrize(("m", "n", "shift"), [(512, 2048, 0.3), (2048, 5000, 0.0), (7, 9, 0.5)])
def test_the_log_path_agrees_with_scipy(
    monkeypatch: pytest.MonkeyPatch, m: int, n: int, shift: float
) -> None:
    """Platforms whose long double is a double sum logarithms."""
    monkeypatch.setattr(kstest, "_EXTENDED", False)
    rng = np.random.default_rng(m * n)
    ref, cur = rng.normal(0, 1, m), rng.normal(shift, 1, n)
    want = ks_2samp(ref, cur, method="exact")
    assert kstest.ks_2samp(ref, cur)[1] == pytest.approx(want.pvalue, abs=1e-9, rel=1e-7)


def test_stays_exact_above_scipys_auto_limit() -> None:
    """A rolling reference holds up to 24 buckets of 512: scipy's auto mode would switch to
    the asymptotic distribution above 10,000; this stays exact."""
    rng = np.random.default_rng(3)
    ref, cur = rng.normal(0, 1, 12_288), rng.normal(0.05, 1, 2_048)
    want = ks_2samp(ref, cur, method="exact")
    assert kstest.ks_2samp(ref, cur)[1] == pytest.approx(want.pvalue, abs=1e-12, rel=1e-7)


def test_tiny_pvalues_keep_their_digits(path: str) -> None:
    """p is computed as the share outside, not 1 - a float64 share (which gives 0 below 1e-16):
    the extended path keeps relative accuracy down to ~1e-17, the log path its own ~1e-11."""
    m, n = 30, 40
    tiny = 1e-17 if path == "extended" else 1e-9
    for k in range(1, 121):  # lcm 120
        want = brute_pvalue(m, n, k / 120)
        if want > tiny:
            assert kstest.exact_pvalue(m, n, k / 120) == pytest.approx(want, rel=1e-6)


def test_above_the_exact_limit_the_asymptotic_distribution_is_close() -> None:
    """Beyond EXACT_MAX_VALUES in all the exact count's cost (m * n * D) is not paid: the
    corrected limit distribution is within ~1 % of the exact value at p > 0.01 and 2 % down to
    1e-3 here (Kolmogorov's limit without Stephens' correction is 2.0 % and 2.2 % off in the
    last two cases)."""
    cases = [
        (14_000, 2_048, 0.0),
        (16_384, 2_048, 0.0),
        (16_384, 2_048, 0.06),
        (30_000, 3_000, 0.1),
    ]
    for m, n, shift in cases:
        rng = np.random.default_rng(1)
        ref, cur = rng.normal(0, 1, m), rng.normal(shift, 1, n)
        d, p = kstest.ks_2samp(ref, cur)
        assert p == kstest.asymptotic_pvalue(m, n, d)
        want = ks_2samp(ref, cur, method="exact").pvalue
        assert want > 1e-3
        assert p == pytest.approx(want, rel=0.01 if want > 0.01 else 0.02)
    assert kstest.pvalue(8_000, 8_000, 0.02) == kstest.exact_pvalue(8_000, 8_000, 0.02)


def test_non_finite_values_are_refused() -> None:
    """scipy returns NaN for both; here a caller that let a NaN through hears of it."""
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="finite values only"):
            kstest.ks_2samp([1.0, 2.0, bad], [1.0, 2.0])
        with pytest.raises(ValueError, match="finite values only"):
            kstest.ks_2samp([1.0, 2.0], [bad, 3.0])


def test_identical_and_disjoint_samples() -> None:
    assert kstest.ks_2samp([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == (0.0, 1.0)
    d, p = kstest.ks_2samp([1.0, 2.0, 3.0], [4.0, 5.0])
    assert d == 1.0
    assert p == pytest.approx(2 / math.comb(5, 2))  # only the two all-one-side orders


def test_an_empty_side_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one value"):
        kstest.ks_2samp([], [1.0])


def test_chi_square_and_js_match_scipy() -> None:
    rng = np.random.default_rng(4)
    for k in (2, 3, 7):
        for _ in range(20):
            ref = rng.integers(1, 400, k).astype(np.float64)
            cur = rng.integers(0, 400, k).astype(np.float64)
            cur[0] += 1  # no empty row
            stat, p, _, _ = chi2_contingency(np.vstack([ref, cur]), correction=False)
            got = ds.chi_square(ref, cur)
            assert got[0] == pytest.approx(stat, rel=1e-12)
            assert got[1] == pytest.approx(p, rel=1e-9, abs=1e-300)
            shares = ds._shares(ref), ds._shares(cur)
            want = jensenshannon(*shares, base=2)
            assert ds.js_distance(ref, cur) == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_chi_square_drops_categories_neither_window_saw() -> None:
    """A category with no count on either side has no expected count: it is left out (scipy
    refuses a zero expected frequency), so the degrees of freedom are the categories seen."""
    ref, cur = np.array([80.0, 0.0, 20.0, 0.0]), np.array([60.0, 0.0, 40.0, 0.0])
    stat, p, dof, _ = chi2_contingency(np.array([[80.0, 20.0], [60.0, 40.0]]), correction=False)
    assert dof == 1
    assert ds.chi_square(ref, cur) == pytest.approx((stat, p), rel=1e-12)


def test_the_monitor_does_not_import_scipy_stats() -> None:
    """~48 MB of RSS (docs/monitor.md): the service imports scipy.special only."""
    code = (
        "import sys, genwire_monitor.app, genwire_monitor.__main__; "
        "print(sorted(m for m in sys.modules if m.startswith(('scipy.stats', 'scipy.spatial'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    )
    assert out.stdout.strip() == "[]"


def test_the_cost_bench_times_the_same_pvalues_and_measures_the_saving() -> None:
    """``genwire monitor-bench --drift-stats``: its rows compare equal p-values, and what the
    monitor imports is lighter than scipy.stats (the reason for kstest.py)."""
    rows = ks_rows(sizes=((30, 20), (7, 9)), shifts=(0.0, 1.0), repeats=1)
    assert [(m, n, s) for m, n, s, *_ in rows] == [
        (30, 20, 0.0),
        (30, 20, 1.0),
        (7, 9, 0.0),
        (7, 9, 1.0),
    ]
    for *_, ms_ours, ms_theirs, dp in rows:
        assert ms_ours > 0 and ms_theirs > 0
        assert dp < 1e-12
    assert import_rss_mb("numpy, scipy.special") + 20 < import_rss_mb("numpy, scipy.stats")
