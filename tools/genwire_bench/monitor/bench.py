"""Monitor benchmark: ``genwire monitor-bench [--requests N] [--rounds R] [--quality]``.

Throughput: generates realistic OTLP payloads (synth.py), then measures on this one thread
decode only, and decode + aggregate (stage sketches, trace assembly, SLO counters, drift
windows) + completing the traces; rounds repeat it to show memory staying flat.
``--quality``: simulated traffic on a simulated clock (windows scaled 1/360) for time to
detect a latency incident and a drift, time to resolve, and false alarms over many scaled
hours of steady traffic. ``--detection``: time to page with a full long window of good
traffic first, per objective and bad share, beside the Workbook (``detection.py``). Prints
figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import resource
import time
from collections.abc import Callable
from dataclasses import replace

from genwire_monitor.alerting import AlertEvent
from genwire_monitor.config import MonitorSettings
from genwire_monitor.handlers import MonitorEngine
from genwire_monitor.spans import decode

from genwire.telemetry import semconv
from genwire_bench.monitor.simulate import SCALE, fast_settings, run
from genwire_bench.monitor.synth import (
    LENGTH_STOPS,
    LONG_PROMPTS,
    REFERENCE,
    SPANS_PER_REQUEST,
    Profile,
    payloads,
)

T0 = 1_800_000_000.0
RATE = 100.0


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def run_bench(args: argparse.Namespace) -> None:
    """Run the benchmark (or ``--quality``) and print its figures."""
    if getattr(args, "live", False):
        from genwire_bench.monitor.live import live_detection

        live_detection(
            args.scale,
            tuple(float(x) for x in args.live_objectives.split(",")),
            tuple(float(x) for x in args.live_shares.split(",")),
            args.live_rate,
            args.good_tokens,
            args.bad_tokens,
            args.live_warm_h,
            args.live_threshold_ms,
        )
        return
    if getattr(args, "drift_stats", False):
        from genwire_bench.monitor.stats_cost import drift_stats_cost

        drift_stats_cost()
        return
    if args.detection:
        from genwire_bench.monitor.detection import detection

        detection(args.scale, args.steady_h)
        return
    if args.quality:
        quality(args.seeds, args.steady_s)
        return

    data = list(payloads(REFERENCE, args.requests, args.per_payload, seed=0))
    spans = args.requests * SPANS_PER_REQUEST
    mb = sum(len(p) for p in data) / 2**20
    print(f"payloads: {len(data)} Kafka values, {spans} spans, {mb:.1f} MiB")

    t = time.perf_counter()
    decoded = sum(1 for p in data for _ in decode(p))
    dt = time.perf_counter() - t
    print(f"decode only:            {decoded / dt:10,.0f} spans/s ({dt:.2f} s)")

    settings = MonitorSettings(window_scale=1.0, trace_idle_s=1.0)
    engine = MonitorEngine(settings)
    for round_no in range(1, args.rounds + 1):
        if round_no > 1:  # fresh trace ids (not timed)
            data = list(payloads(REFERENCE, args.requests, args.per_payload, seed=round_no))
        now = time.time()
        t = time.perf_counter()
        engine.ingest(data, now)
        t_ingest = time.perf_counter() - t
        completed = engine.complete(now + 10.0)
        t_all = time.perf_counter() - t
        t = time.perf_counter()
        engine.tick(now + 10.0)
        t_tick = time.perf_counter() - t
        print(
            f"round {round_no}: decode+aggregate {spans / t_ingest:10,.0f} spans/s; with trace "
            f"completion {spans / t_all:10,.0f} spans/s; evaluation {t_tick * 1000:.0f} ms; "
            f"RSS {_rss_mb():.0f} MiB; requests completed {completed}"
        )
    pct = engine.percentiles(time.time() + 10)
    e2e = pct.get("end_to_end", {})
    print(
        f"end_to_end p50/p95/p99 ms: {e2e.get('p50', 0):.1f} / {e2e.get('p95', 0):.1f} / "
        f"{e2e.get('p99', 0):.1f} over {int(e2e.get('count', 0))} requests"
    )


def _first(
    events: list[tuple[float, AlertEvent]], pred: Callable[[AlertEvent], bool]
) -> float | None:
    for t, e in events:
        if pred(e):
            return t
    return None


def quality(seeds: int, steady_s: float) -> None:
    """Time to detect / resolve and false alarms, on the simulated clock (test scale)."""
    per_h = 3600 * SCALE  # one scaled hour in simulated seconds
    print(
        f"windows scaled x{SCALE:.5f}: 1 h = {per_h:.0f} s, 5 min = {300 * SCALE:.2f} s; "
        f"{RATE:.0f} requests/s"
    )
    alarms = evaluations = 0
    for seed in range(seeds):
        engine = MonitorEngine(fast_settings())
        _, events = run(engine, REFERENCE, T0, steady_s, RATE, random.Random(seed))
        alarms += sum(1 for _, e in events if e.status == "firing")
        evaluations += round(steady_s / 0.1)
    hours = seeds * steady_s / per_h
    print(
        f"false alarms: {alarms} in {hours:.0f} scaled hours of steady traffic "
        f"({evaluations} evaluations): {alarms / hours:.3f} per scaled hour"
    )

    for seed in range(seeds):
        engine = MonitorEngine(fast_settings())
        rng = random.Random(100 + seed)
        t, _ = run(engine, REFERENCE, T0, 12.0, RATE, rng)
        start = t
        t, ev = run(engine, replace(REFERENCE, slow_ms=1500), t, 4.0, RATE, rng)
        fired = _first(ev, lambda e: e.id == "latency:e2e:page" and e.status == "firing")
        end = t
        _, ev2 = run(engine, REFERENCE, t, 15.0, RATE, rng)
        resolved = _first(ev2, lambda e: e.id == "latency:e2e:page" and e.status == "resolved")
        print(
            f"latency incident (seed {seed}): page fired "
            f"{_fmt(fired, start)} after it began, resolved {_fmt(resolved, end)} after it ended"
        )

    for name, profile, feature in (
        ("longer prompts", LONG_PROMPTS, semconv.GEN_AI_INPUT_TOKENS),
        ("length stops", LENGTH_STOPS, semconv.GEN_AI_FINISH_REASONS),
    ):
        for seed in range(seeds):
            detect = _drift_detect(profile, feature, seed)
            print(f"drift, {name} (seed {seed}): {feature} alert {_fmt(detect, 0.0)} after switch")


def _drift_detect(profile: Profile, feature: str, seed: int) -> float | None:
    engine = MonitorEngine(fast_settings())
    rng = random.Random(200 + seed)
    t, _ = run(engine, REFERENCE, T0, 14.0, RATE, rng)
    _, ev = run(engine, profile, t, 10.0, RATE, rng)
    hit = _first(ev, lambda e: e.kind == "drift" and e.labels.get("feature") == feature)
    return None if hit is None else hit - t


def _fmt(t: float | None, since: float) -> str:
    if t is None:
        return "never"
    dt = t - since
    return f"{dt:.2f}s (= {dt / SCALE / 60:.1f} production minutes)"
