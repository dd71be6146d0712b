"""How many requests a closed loop kept at the model, and what that alone costs in throughput.

A closed loop at concurrency c keeps c requests in flight end to end. Direct Triton's are at
the model but for the client's, Triton's frontend's and the hand-offs' share of each request;
through the pipeline each request also spends time in the Kafka hops and the stages, so the
model holds fewer, batches fewer and serves fewer per second — before any CPU the pipeline
takes from the model. By Little's law the mean number of requests at the model is the phase's
throughput times the mean time each spent there, read the same way on both sides: the model's
own queue and compute time, which its final response reports. Direct Triton's throughput with
as many held, interpolated between the run's own direct phases, is what the model serves with
that many; the pipeline's throughput against it is what is left: mostly the CPU the pipeline
took from the model, and batching lost to requests arriving unevenly (the wait for a place in
the batch counts as held).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from genwire_bench.stats import Load, Summary

WIDE = 2.0
"""Direct phases further apart than this (in requests held) give only a rough reading between
them: throughput bends with the batch size, and the line between two points runs under it."""


@dataclass(frozen=True)
class Reading:
    """A value read off a curve between two measured points."""

    value: float
    span: float
    """How far apart the two points were (0: read at a point)."""


@dataclass(frozen=True)
class AtModel:
    """One closed-loop pipeline phase: its requests at the model, and direct Triton with as many."""

    target: str
    load: Load
    baseline: str
    requests_per_s: float
    model_ms_mean: float
    held: float
    """Mean requests at the model over the phase (throughput × mean time at the model)."""
    direct_held: float | None
    """The same for direct Triton at the phase's concurrency, where its responses had it."""
    direct_at_load: float | None
    """Direct Triton's requests/s at the phase's own concurrency."""
    direct_at_held: Reading | None
    """Direct Triton's requests/s with ``held`` at the model; None outside the run's range."""

    @property
    def held_share(self) -> float | None:
        """What the model serves with ``held`` requests, of what it serves at the loop's c."""
        if self.direct_at_held is None or not self.direct_at_load:
            return None
        return self.direct_at_held.value / self.direct_at_load

    @property
    def rest_share(self) -> float | None:
        """The pipeline's throughput of what the model serves with as many requests held."""
        if self.direct_at_held is None or not self.direct_at_held.value:
            return None
        return self.requests_per_s / self.direct_at_held.value

    @property
    def rough(self) -> bool:
        """Read between direct phases more than ``WIDE`` apart."""
        return self.direct_at_held is not None and self.direct_at_held.span > WIDE


def interpolate(curve: Sequence[tuple[float, float]], x: float) -> Reading | None:
    """Linear interpolation of (requests held, req/s) points at ``x``; None outside them.

    A model holding no request serves nothing, and below one held a closed loop at c=1 has its
    request there part of the time, so (0, 0) is a point when a phase held one or less. Beyond
    the points nothing is guessed.
    """
    points = sorted(set(curve) | ({(0.0, 0.0)} if any(h <= 1 for h, _ in curve) else set()))
    for (x0, y0), (x1, y1) in pairwise(points):
        if x0 <= x <= x1:
            value = y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
            return Reading(value, 0.0 if x in (x0, x1) else x1 - x0)
    return None


def held(summary: Summary) -> float | None:
    """Mean requests at the model during the phase, where its answers reported the model's time."""
    if summary.at_model is None:
        return None
    return summary.requests_per_s * summary.at_model.mean / 1000.0


def at_model(summaries: Sequence[Summary], baselines: dict[str, str]) -> list[AtModel]:
    """Each closed-loop phase of a target in ``baselines`` whose answers carried the model's time.

    The baseline's curve is its req/s against the requests it held; where one of its phases did
    not report the model's time, every phase of it counts its concurrency instead (one axis).
    """
    closed = [s for s in summaries if s.load.mode == "closed" and s.requests_per_s > 0]
    curves: dict[str, list[tuple[float, float]]] = {}
    direct: dict[tuple[str, float], tuple[float | None, float]] = {}
    for target in {s.target for s in closed}:
        phases = [s for s in closed if s.target == target]
        helds = [held(s) for s in phases]
        complete = all(h is not None for h in helds)
        for s, h in zip(phases, helds, strict=True):
            x = h if complete and h is not None else s.load.value
            curves.setdefault(target, []).append((x, s.requests_per_s))
            direct[(target, s.load.value)] = (h, s.requests_per_s)
    rows = []
    for s in summaries:
        base = baselines.get(s.target)
        h = held(s)
        if base is None or s.load.mode != "closed" or h is None or s.at_model is None:
            continue
        same = direct.get((base, s.load.value))
        rows.append(
            AtModel(
                target=s.target,
                load=s.load,
                baseline=base,
                requests_per_s=s.requests_per_s,
                model_ms_mean=s.at_model.mean,
                held=h,
                direct_held=None if same is None else same[0],
                direct_at_load=None if same is None else same[1],
                direct_at_held=interpolate(curves.get(base, []), h),
            )
        )
    return rows
