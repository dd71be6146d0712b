"""Cumulative latency histograms: what ``/metrics`` exposes per stage.

The status page and the alerts read windowed DDSketches (quantiles over the page window);
Prometheus needs counters it can sum across instances and rate over any range, so every
observation that goes into a stage's sketch is also counted here, into fixed buckets, since
the monitor started.
"""

from __future__ import annotations

from bisect import bisect_left

# Upper bounds (seconds) of the buckets: from a sub-millisecond Kafka wait to a long generation.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,  # up to the gateway's longest deadline (max_timeout_s), like genwire.metrics
    600.0,
)
_BOUNDS_MS = tuple(b * 1000 for b in LATENCY_BUCKETS_S)


class Histogram:
    """Counts per bucket (not cumulative; the last one is above every bound) and their sum."""

    __slots__ = ("counts", "sum_s")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.sum_s = 0.0

    def observe_ms(self, ms: float) -> None:
        """Count one latency given in milliseconds (as the spans carry them)."""
        self.counts[bisect_left(_BOUNDS_MS, ms)] += (
            1  # bucket i holds bounds[i-1] < ms <= bounds[i]
        )
        self.sum_s += ms / 1000

    def copy(self) -> Histogram:
        """A snapshot (for the collector, off the engine's thread)."""
        out = Histogram()
        out.counts = list(self.counts)
        out.sum_s = self.sum_s
        return out

    @property
    def count(self) -> int:
        """Observations so far."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound in seconds, observations <= it)``, ending with ``(inf, count)``."""
        out: list[tuple[float, int]] = []
        total = 0
        for bound, n in zip((*LATENCY_BUCKETS_S, float("inf")), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out
