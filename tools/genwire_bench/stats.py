"""Percentiles, per-target summaries and the pipeline's overhead over its baseline."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from genwire_bench.records import MODEL_MS, RequestRecord


@dataclass(frozen=True)
class Dist:
    """Distribution of one latency, in milliseconds."""

    count: int
    mean: float
    p50: float
    p95: float
    p99: float
    min: float
    max: float


def distribution(values: Iterable[float | None]) -> Dist | None:
    """Percentiles (linear interpolation) of the values that are set; None when there are none."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return None
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return Dist(
        count=int(arr.size),
        mean=float(arr.mean()),
        p50=float(p50),
        p95=float(p95),
        p99=float(p99),
        min=float(arr.min()),
        max=float(arr.max()),
    )


@dataclass(frozen=True)
class Load:
    """How a phase was driven: closed loop at a concurrency, or open loop at a rate."""

    mode: str  # "closed" | "open"
    value: float

    @property
    def label(self) -> str:
        """``c=4`` or ``r=5.0/s``."""
        return f"c={int(self.value)}" if self.mode == "closed" else f"r={self.value:g}/s"


@dataclass(frozen=True)
class Summary:
    """What the report says about one target under one load."""

    target: str
    load: Load
    requests: int
    errors: int
    duration_s: float
    requests_per_s: float
    output_tokens_per_s: float
    e2e: Dist | None
    ttft: Dist | None
    tpot: Dist | None
    error_kinds: dict[str, int] = field(default_factory=dict)
    at_model: Dist | None = None
    """The model's own time per request (``MODEL_MS``), over the answers that carry it: how
    many requests the model held (``genwire_bench.at_model``)."""


def wall_duration(records: Sequence[RequestRecord]) -> float:
    """Seconds from the first request's origin to the last one's end."""
    if not records:
        return 0.0
    return max(r.end for r in records) - min(r.origin for r in records)


def summarize(target: str, load: Load, records: Sequence[RequestRecord]) -> Summary:
    """Throughput over the phase's wall time and latency percentiles of the successful requests.

    Records from several rounds are summed: their wall times add up (rounds don't overlap).
    """
    ok = [r for r in records if r.ok]
    by_round: dict[int, list[RequestRecord]] = {}
    for r in records:
        by_round.setdefault(int(r.extra.get("round", 0)), []).append(r)
    duration = sum(wall_duration(rs) for rs in by_round.values())
    kinds = Counter((r.error or "").split(":", 1)[0] for r in records if not r.ok)
    return Summary(
        target=target,
        load=load,
        requests=len(records),
        errors=len(records) - len(ok),
        duration_s=duration,
        requests_per_s=len(ok) / duration if duration > 0 else 0.0,
        output_tokens_per_s=sum(r.output_tokens for r in ok) / duration if duration > 0 else 0.0,
        e2e=distribution(r.e2e_ms for r in ok),
        ttft=distribution(r.ttft_ms for r in ok),
        tpot=distribution(r.tpot_ms for r in ok),
        error_kinds=dict(kinds),
        at_model=distribution(r.extra.get(MODEL_MS) for r in ok),
    )


@dataclass(frozen=True)
class Overhead:
    """How much a pipeline target adds to its direct-Triton baseline under the same load."""

    target: str
    baseline: str
    load: Load
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    ratio_p50: float | None
    paired_p50_ms: float | None
    """Median over requests of (pipeline − baseline) for the same prompt: robust to mix."""
    ttft_p50_ms: float | None
    throughput_ratio: float | None
    token_mismatches: int
    """Requests whose output length differs from the baseline's (the comparison is unfair then)."""


def _diff(a: Dist | None, b: Dist | None, attr: str) -> float | None:
    if a is None or b is None:
        return None
    return float(getattr(a, attr) - getattr(b, attr))


def compare(
    pipeline: Summary,
    baseline: Summary,
    pipeline_records: Sequence[RequestRecord] = (),
    baseline_records: Sequence[RequestRecord] = (),
) -> Overhead:
    """The pipeline's added latency (ms) and ratios over the baseline's."""
    pairs = _pairs(pipeline_records, baseline_records)
    paired = distribution(p.e2e_ms - b.e2e_ms for p, b in pairs)
    mismatches = sum(1 for p, b in pairs if p.output_tokens != b.output_tokens)
    ratio = (
        pipeline.e2e.p50 / baseline.e2e.p50
        if pipeline.e2e is not None and baseline.e2e is not None and baseline.e2e.p50 > 0
        else None
    )
    tput = (
        pipeline.requests_per_s / baseline.requests_per_s if baseline.requests_per_s > 0 else None
    )
    return Overhead(
        target=pipeline.target,
        baseline=baseline.target,
        load=pipeline.load,
        p50_ms=_diff(pipeline.e2e, baseline.e2e, "p50"),
        p95_ms=_diff(pipeline.e2e, baseline.e2e, "p95"),
        p99_ms=_diff(pipeline.e2e, baseline.e2e, "p99"),
        ratio_p50=ratio,
        paired_p50_ms=paired.p50 if paired else None,
        ttft_p50_ms=_diff(pipeline.ttft, baseline.ttft, "p50"),
        throughput_ratio=tput,
        token_mismatches=mismatches,
    )


def _pairs(
    a: Sequence[RequestRecord], b: Sequence[RequestRecord]
) -> list[tuple[RequestRecord, RequestRecord]]:
    """Successful requests of both targets with the same prompt index (and round)."""
    keyed = {(r.index, r.extra.get("round", 0)): r for r in b if r.ok}
    return [
        (r, keyed[(r.index, r.extra.get("round", 0))])
        for r in a
        if r.ok and (r.index, r.extra.get("round", 0)) in keyed
    ]


class Laps:
    """Milliseconds per named piece of a path, over many passes (the critical-path probes)."""

    def __init__(self) -> None:
        self.ms: dict[str, list[float]] = {}
        self._t = time.perf_counter()

    def start(self) -> None:
        """A pass begins: the next lap counts from now."""
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        """The piece ``name`` ended now."""
        now = time.perf_counter()
        self.ms.setdefault(name, []).append((now - self._t) * 1000)
        self._t = now

    def report(self, title: str) -> str:
        """A table of each piece's p50, p95 and mean, with the load average now."""
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        lines = [
            f"{title}  (load average {load})",
            f"{'piece':38s} {'p50 ms':>8s} {'p95 ms':>8s} {'mean ms':>8s}",
        ]
        for name, laps in self.ms.items():
            d = distribution(laps)
            assert d is not None  # a piece has at least one lap
            lines.append(f"{name:38s} {d.p50:8.3f} {d.p95:8.3f} {d.mean:8.3f}")
        return "\n".join(lines)
