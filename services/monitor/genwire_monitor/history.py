"""Bounded time series of what the page plots: stage percentiles and drift scores."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from genwire_monitor.drift import SeriesResult


@dataclass(frozen=True)
class LatencyPoint:
    """Percentiles of one stage at one evaluation."""

    t: float
    p50: float
    p95: float
    p99: float


@dataclass(frozen=True)
class DriftPoint:
    """Scores of one feature at one evaluation."""

    t: float
    psi: float
    js: float
    drifted: bool


MAX_SERIES = 256


class History:
    """The last ``points`` evaluations of every series."""

    def __init__(self, points: int) -> None:
        self.points = points
        self.latency: dict[str, deque[LatencyPoint]] = {}
        self.drift: dict[tuple[str, str, str], deque[DriftPoint]] = {}

    def record(
        self, now: float, percentiles: dict[str, dict[str, float]], drift: list[SeriesResult]
    ) -> None:
        """Append this evaluation's figures."""
        for stage, p in percentiles.items():
            self.latency.setdefault(stage, deque(maxlen=self.points)).append(
                LatencyPoint(now, p["p50"], p["p95"], p["p99"])
            )
        for series in drift:
            for s in series.scores:
                key = (series.model, series.version, s.feature)
                self.drift.setdefault(key, deque(maxlen=self.points)).append(
                    DriftPoint(now, s.psi, s.js, s.drifted)
                )
        for series_map in (self.latency, self.drift):
            while len(series_map) > MAX_SERIES:  # model versions come and go: stay bounded
                del series_map[next(iter(series_map))]  # type: ignore[arg-type]
