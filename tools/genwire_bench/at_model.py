"""How many requests a closed loop kept at the model, and what that alone costs in throughput.

A closed loop at concurrency c keeps c requests in flight end to end. Direct Triton holds
all c; through the pipeline each request also spends time in the Kafka hops and the stages,
so Triton holds fewer, batches fewer and serves fewer per second — before any CPU the
pipeline takes from the model. By Little's law the mean number of requests at the model is
the phase's throughput times the mean time each spent there (the inference service's
``inference_start`` → ``inference_end``, which includes its own call to Triton, so the figure
is a little high). Direct Triton's throughput at that concurrency, interpolated from the
run's own direct phases, is what the model serves with that many; the pipeline's throughput
against it is what is left: the CPU the pipeline took from the model and its own overhead
inside the call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from genwire_bench.stats import Load, Summary


@dataclass(frozen=True)
class AtModel:
    """One closed-loop pipeline phase: its requests at the model, and direct Triton with as many."""

    target: str
    load: Load
    baseline: str
    requests_per_s: float
    model_ms_mean: float
    in_flight: float
    """Mean requests at the model over the phase (throughput × mean time at the model)."""
    direct_at_load: float | None
    """Direct Triton's requests/s at the phase's own concurrency."""
    direct_in_flight: float | None
    """Direct Triton's requests/s at ``in_flight``, interpolated; None outside the run's range."""

    @property
    def held_share(self) -> float | None:
        """What the model serves with ``in_flight`` requests, of what it serves with c."""
        if self.direct_in_flight is None or not self.direct_at_load:
            return None
        return self.direct_in_flight / self.direct_at_load

    @property
    def rest_share(self) -> float | None:
        """The pipeline's throughput of what the model serves with as many requests held."""
        if not self.direct_in_flight:
            return None
        return self.requests_per_s / self.direct_in_flight


def interpolate(curve: Sequence[tuple[float, float]], x: float) -> float | None:
    """Linear interpolation of (concurrency, req/s) points at ``x``; None outside them.

    Below concurrency 1 a closed loop has its one request in flight part of the time, so its
    throughput falls linearly to zero: with c=1 measured, (0, 0) is a point too. Above 1 the
    curve bends (bigger batches, shared cores), so nothing is guessed beyond the points.
    """
    points = sorted(set(curve) | ({(0.0, 0.0)} if any(c == 1 for c, _ in curve) else set()))
    for (x0, y0), (x1, y1) in pairwise(points):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def at_model(summaries: Sequence[Summary], baselines: dict[str, str]) -> list[AtModel]:
    """Each closed-loop phase of a target in ``baselines`` whose answers carried timings."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for s in summaries:
        if s.load.mode == "closed" and s.requests_per_s > 0:
            curves.setdefault(s.target, []).append((s.load.value, s.requests_per_s))
    rows = []
    for s in summaries:
        base = baselines.get(s.target)
        if base is None or s.load.mode != "closed" or s.at_model is None:
            continue
        in_flight = s.requests_per_s * s.at_model.mean / 1000.0
        curve = curves.get(base, [])
        direct = dict(curve)
        rows.append(
            AtModel(
                target=s.target,
                load=s.load,
                baseline=base,
                requests_per_s=s.requests_per_s,
                model_ms_mean=s.at_model.mean,
                in_flight=in_flight,
                direct_at_load=direct.get(s.load.value),
                direct_in_flight=interpolate(curve, in_flight) if curve else None,
            )
        )
    return rows
