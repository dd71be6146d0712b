"""Simulated traffic through the engine on a simulated clock (pure: no Kafka, no sleeping).

Used by the unit tests and by ``genwire monitor-bench --quality``, which measures
time to detect and false alarms over many simulated hours.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from genwire_monitor.alerting import AlertEvent
from genwire_monitor.config import LatencySLO, MonitorSettings
from genwire_monitor.handlers import MonitorEngine
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from genwire_bench.monitor.synth import Profile, encode, request_spans

SCALE = 1 / 360  # 1 h -> 10 s, 5 min -> 0.83 s, 6 h -> 60 s, 30 min -> 5 s
STEP_S = 0.1


def fast_settings(**overrides: object) -> MonitorSettings:
    """Windows scaled to seconds, as the Kafka tests also use."""
    base: dict[str, object] = {
        "window_scale": SCALE,
        "trace_idle_s": 0.2,
        "min_events": 10,
        "page_window_s": 3600,
        "slos": [LatencySLO(name="e2e", stage="end_to_end", threshold_ms=1000, objective=0.99)],
        "drift": {"reference_window_s": 3600, "current_window_s": 1440, "min_samples": 200},
        "drift_for_s": 360,
        # Test monitors must not watch (and page about) the shared stack's groups: opt in.
        "watched_groups": {},
    }
    base.update(overrides)
    return MonitorSettings.model_validate(base)


def traffic(
    profile: Profile, start: float, seconds: float, rate: float, rng: random.Random
) -> Iterator[tuple[float, bytes]]:
    """``(time, payload)`` every STEP_S: the requests that ended in that step."""
    steps = round(seconds / STEP_S)
    carry = 0.0
    for i in range(steps):
        t = start + (i + 1) * STEP_S
        carry += rate * STEP_S
        n, carry = int(carry), carry - int(carry)
        by_service: dict[str, list[Span]] = {}
        for _ in range(n):
            end_ns = int((t - rng.uniform(0, STEP_S)) * 1e9)
            for service, spans in request_spans(profile, rng, end_ns).items():
                by_service.setdefault(service, []).extend(spans)
        yield t, encode(by_service)


def run(
    engine: MonitorEngine,
    profile: Profile,
    start: float,
    seconds: float,
    rate: float,
    rng: random.Random,
) -> tuple[float, list[tuple[float, AlertEvent]]]:
    """Feed traffic, ticking every step; returns the end time and the alert events."""
    events: list[tuple[float, AlertEvent]] = []
    t = start
    for t, payload in traffic(profile, start, seconds, rate, rng):
        engine.ingest([payload], t)
        events += [(t, e) for e in engine.tick(t)]
    return t, events
