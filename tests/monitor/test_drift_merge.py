"""Windows merged from per-bucket reservoirs weigh each bucket by the traffic it saw."""

from __future__ import annotations

import random
from fractions import Fraction

from genwire_monitor.config import DriftSettings
from genwire_monitor.drift import DriftMonitor, merge, proportional
from genwire_monitor.drift_stats import Floats
from genwire_monitor.features import FeatureBucket, Reservoir
from genwire_monitor.traces import RequestRecord

from genwire.telemetry import semconv as sc

OUT = sc.GEN_AI_OUTPUT_TOKENS
T0 = 1_800_000_000.0  # a bucket boundary: buckets of 100 s start at T0 - 300, T0 - 200, …
LONG, SHORT = (200.0, 20.0), (30.0, 3.0)  # output tokens of a long and a short answer
BURST = [(4500, 0), (0, 900), (0, 900), (0, 900)]  # (long, short) per bucket: 62.5 % long


def _values(rng: random.Random, longs: int, shorts: int) -> list[float]:
    vals = [rng.gauss(*LONG) for _ in range(longs)] + [rng.gauss(*SHORT) for _ in range(shorts)]
    rng.shuffle(vals)
    return vals


def _bucket(rng: random.Random, longs: int, shorts: int) -> FeatureBucket:
    b = FeatureBucket(512, rng)
    for v in _values(rng, longs, shorts):
        b.add({OUT: v}, "t")
    return b


def _long_share(values: Floats) -> float:
    return float((values > 100).mean())


def test_thinning_keeps_the_slowest_sampled_bucket_whole_and_the_others_in_proportion() -> None:
    rng = random.Random(0)
    held = []
    for seen in (4000, 1000, 100):
        r = Reservoir(512, rng)
        for i in range(seen):
            r.add(float(i), f"t{i}")
        held.append(r)
    assert [r.rate for r in held] == [Fraction(512, 4000), Fraction(512, 1000), Fraction(1)]
    sizes = [len(r.thinned(Fraction(512, 4000), rng)[0]) for r in held]
    assert sizes[:2] == [512, 128]  # exact rates: no rounding where none is needed
    assert sizes[2] in (12, 13)  # 12.8 values: the fraction kept with its probability
    vals, traces = proportional(held, rng)
    assert len(vals) == len(traces) and 652 <= len(vals) <= 653
    assert proportional([], rng) == ([], [])


def test_a_burst_in_one_busy_bucket_keeps_its_share_of_the_merged_window() -> None:
    """4,500 long answers in one bucket and 2,700 short ones in three: 62.5 % long. Joined as
    they were, the reservoirs (512 + 3 x 512) said 25 %."""
    rng = random.Random(1)
    window = merge([_bucket(rng, *b) for b in BURST], None, rng)
    values = window.values[OUT][0]
    assert abs(_long_share(values) - 0.625) < 0.04
    assert values.size >= 512  # at least the busy bucket's whole reservoir
    counts = merge([_bucket(rng, *b) for b in BURST], 300, rng).values[OUT][0].size
    assert counts == 300  # the cap still applies, after the thinning


def _record(t: float, tokens: float, n: int) -> RequestRecord:
    ns = int(t * 1e9)
    return RequestRecord(n.to_bytes(16, "big"), ns, ns, False, 1, {OUT: tokens})


def _feed(
    drift: DriftMonitor, key: tuple[str, str], plan: list[tuple[int, int]], start: float
) -> None:
    """Each (long, short) of ``plan`` in one 100 s bucket from ``start`` on."""
    rng = random.Random(" ".join(key))
    for k, (longs, shorts) in enumerate(plan):
        t = start + 100 * k + 1
        for n, v in enumerate(_values(rng, longs, shorts)):
            drift.add(_record(t + n * 1e-3, v, n), t + 98, key)


def _monitor(reference: str = "frozen") -> DriftMonitor:
    cfg = DriftSettings(reference=reference, reference_window_s=1600, current_window_s=400)
    return DriftMonitor(cfg, 1.0, seed=2)  # buckets of a quarter of the current window: 100 s


def test_a_canary_with_its_champions_mix_is_not_drifted_by_a_burst() -> None:
    """The same traffic split 90/10 (as a hash would split it), a burst of long answers in one
    bucket: both sides have 62.5 % long answers. Unweighted, the champion's sample said 25 %
    and the canary's 62 %: a canary page, and by default a rollback."""
    drift = _monitor()
    champion, canary = ("m", "1"), ("m", "2")
    _feed(drift, champion, [(lg * 9 // 10, sh * 9 // 10) for lg, sh in BURST], T0 - 300)
    _feed(drift, canary, [(lg // 10, sh // 10) for lg, sh in BURST], T0 - 300)
    result = drift.compare(champion, canary, T0 + 99, 50, [OUT])
    assert result is not None and [s.feature for s in result.scores] == [OUT]
    (score,) = result.scores
    assert not score.drifted, score
    assert score.psi - score.psi_bias < 0.05 and score.p_value > 0.01


def test_a_canary_that_really_differs_is_still_caught() -> None:
    drift = _monitor()
    champion, canary = ("m", "1"), ("m", "2")
    _feed(drift, champion, [(lg * 9 // 10, sh * 9 // 10) for lg, sh in BURST], T0 - 300)
    _feed(drift, canary, [(450, 0), (0, 20), (0, 20), (0, 20)], T0 - 300)  # 88 % long
    result = drift.compare(champion, canary, T0 + 99, 50, [OUT])
    assert result is not None and result.scores[0].drifted


def test_the_same_mix_in_the_reference_and_current_windows_is_not_drift() -> None:
    """A rolling reference of evenly mixed buckets, a current window with the same requests in
    a burst: unweighted, PSI 0.25 and a drift ticket."""
    drift = _monitor("rolling")
    key = ("m", "1")
    drift.add(_record(T0 - 2050, 25.0, 0), T0 - 2050, key)  # first seen a full span ago
    _feed(drift, key, [(1500, 1500)] * 16, T0 - 1900)  # the reference: 50 % long
    _feed(drift, key, [(3000, 0), (0, 1000), (0, 1000), (0, 1000)], T0 - 300)  # 50 % too
    (result,) = drift.evaluate(T0 + 99)
    scores = {s.feature: s for s in result.scores}
    assert result.state == "ok" and not scores[OUT].drifted, scores[OUT]
    assert scores[OUT].psi - scores[OUT].psi_bias < 0.05
