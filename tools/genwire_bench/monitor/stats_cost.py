"""``genwire monitor-bench --drift-stats``: what the drift tests cost, in time and in memory.

Times the monitor's exact two-sample KS (``genwire_monitor.kstest``) beside scipy's exact mode
at the window sizes the monitor holds, with no drift and with a large one, and prints the peak
RSS of a bare interpreter importing what the monitor imports against what scipy.stats would add.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np

# (reference, current): a small window, the frozen reference's cap against a full current
# window, and a full rolling reference (24 buckets of 512) against one.
SIZES: tuple[tuple[int, int], ...] = ((2048, 512), (5000, 2048), (12288, 2048))
SHIFTS: tuple[float, ...] = (0.0, 0.3, 1.0)
IMPORTS: tuple[tuple[str, str], ...] = (
    ("numpy", "numpy"),
    ("numpy + scipy.special (the monitor's)", "numpy, scipy.special"),
    ("numpy + scipy.stats", "numpy, scipy.stats"),
    ("genwire_monitor.app", "genwire_monitor.app"),
)


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def import_rss_mb(modules: str) -> float:
    """Peak RSS of a fresh interpreter after importing ``modules`` (comma-separated)."""
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent (this process,
    # scipy.stats and all), VmHWM belongs to the new image.
    code = (
        f"import {modules}; "
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    )
    return int(out.stdout.strip()) / 1024  # kB


def ks_rows(
    sizes: Sequence[tuple[int, int]] = SIZES,
    shifts: Sequence[float] = SHIFTS,
    repeats: int = 5,
) -> list[tuple[int, int, float, float, float, float]]:
    """Per size and shift: (m, n, shift, ours ms, scipy ms, |p difference|)."""
    from genwire_monitor.kstest import ks_2samp as ours
    from scipy.stats import ks_2samp as theirs

    rows = []
    rng = np.random.default_rng(0)
    for m, n in sizes:
        for shift in shifts:
            ref, cur = rng.normal(0, 1, m), rng.normal(shift, 1, n)
            p_ours = ours(ref, cur)[1]
            p_theirs = float(theirs(ref, cur, method="exact").pvalue)
            rows.append(
                (
                    m,
                    n,
                    shift,
                    _median_ms(partial(ours, ref, cur), repeats),
                    _median_ms(partial(theirs, ref, cur, method="exact"), repeats),
                    abs(p_ours - p_theirs),
                )
            )
    return rows


def drift_stats_cost(repeats: int = 5) -> None:
    """Print both tables."""
    print("import peak RSS (fresh interpreter, VmHWM):")
    for label, modules in IMPORTS:
        print(f"  {label:40} {import_rss_mb(modules):7.1f} MB")
    print("two-sample KS, exact p-value, median of", repeats, "runs:")
    print(f"  {'reference':>9} {'current':>7} {'shift':>5} {'monitor ms':>10} {'scipy ms':>8} |dp|")
    for m, n, shift, ms_ours, ms_theirs, dp in ks_rows(repeats=repeats):
        print(f"  {m:9} {n:7} {shift:5.1f} {ms_ours:10.1f} {ms_theirs:8.1f} {dp:.1e}")
