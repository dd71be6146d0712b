"""Honest detection figures (``genwire monitor-bench --detection``): time to page with a FULL
long window of good traffic first, beside the SRE Workbook's arithmetic; false alarms over a
long steady run; fire/resolve pairs through an intermittent incident.

The real monitor engine (``MonitorEngine``: decode, trace assembly, SLO counters, burn-rate
rules, alert book with its holds) is fed realistic OTLP payloads (``synth``: six spans per
request from four services) on a simulated clock, its windows scaled by ``scale`` (default
1/60: 1 h -> 60 s), evaluated every ``eval_interval_s`` (scaled), as the service does. Every
time printed is converted back to production time (simulated seconds / scale). Only the status
page's plotted percentile history is skipped (it decides nothing and costs most of a tick).

The Workbook's arithmetic for a rule with burn factor ``f``, long window ``L`` and objective
``o``, after a full long window of good traffic, with a share ``p`` of bad requests from then
on: the long window's bad ratio after ``t`` is ``p t / L``; it fires when that reaches
``f (1 - o)``, i.e. at ``t = f (1 - o) L / p`` -- and never if ``p < f (1 - o)`` (the short
window can never reach the factor). The page fires at the earliest of the page rules.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from genwire_monitor.alerting import AlertEvent
from genwire_monitor.config import BurnRule, LatencySLO, MonitorSettings
from genwire_monitor.handlers import MonitorEngine
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from genwire_bench.monitor.synth import REFERENCE, encode, request_spans

SCALE = 1 / 60
RATE = 20.0  # requests per simulated second: 100 per scaled 5 min, > min_events
THRESHOLD_MS = 1000.0
BAD = replace(REFERENCE, slow_ms=1500.0)  # over the threshold end to end
OBJECTIVES = (0.99, 0.995, 0.999)
BAD_SHARES = (1.0, 0.5, 0.1)
HOUR = 3600.0


@dataclass
class Sim:
    """One engine on a simulated clock (seconds), with what it has emitted so far."""

    engine: MonitorEngine
    scale: float
    rng: random.Random
    t: float = 1_800_000_000.0
    carry: float = 0.0
    backlog: int = 0  # requests held by a paused model, completing (slow) when it resumes
    events: list[tuple[float, AlertEvent]] | None = None
    rate: float = RATE

    @property
    def step(self) -> float:
        return self.engine.settings.eval_interval_s * self.scale

    def run(self, prod_s: float, bad: float = 0.0, paused: bool = False) -> None:
        """``prod_s`` production seconds of traffic with a ``bad`` share of slow requests;
        ``paused``: nothing completes (the model is stalled), the backlog grows."""
        if self.events is None:
            self.events = []
        for _ in range(max(1, round(prod_s * self.scale / self.step))):
            self.t += self.step
            self.carry += self.rate * self.step
            n, self.carry = int(self.carry), self.carry - int(self.carry)
            if paused:
                self.backlog += n
                n = 0
            by_service: dict[str, list[Span]] = {}
            slow, self.backlog = self.backlog, 0
            for i in range(n + slow):
                profile = BAD if i >= n or self.rng.random() < bad else REFERENCE
                end_ns = int((self.t - self.rng.uniform(0, self.step)) * 1e9)
                for service, spans in request_spans(profile, self.rng, end_ns).items():
                    by_service.setdefault(service, []).extend(spans)
            if by_service:
                self.engine.ingest([encode(by_service)], self.t)
            self.events += [(self.t, e) for e in self.engine.tick(self.t)]

    def fork(self, seed: int) -> Sim:
        """A copy of this engine and clock (after the warm-up), with its own random stream."""
        engine = copy.deepcopy(self.engine)
        setattr(engine, "percentiles", lambda now: {})  # noqa: B010 -- the page's plot only
        return Sim(engine, self.scale, random.Random(seed), self.t, self.carry, rate=self.rate)


def settings(objective: float, scale: float, **overrides: object) -> MonitorSettings:
    """The monitor's defaults, windows scaled, one latency SLO (e2e under 1 s at ``objective``)."""
    base: dict[str, object] = {
        "window_scale": scale,
        "trace_idle_s": 3.0 * scale,  # production's 3 s, scaled like the windows
        "slos": [
            LatencySLO(
                name="e2e", stage="end_to_end", threshold_ms=THRESHOLD_MS, objective=objective
            )
        ],
        "watched_groups": {},
    }
    base.update(overrides)
    return MonitorSettings.model_validate(base)


def workbook_s(rules: list[BurnRule], objective: float, bad: float) -> float | None:
    """Production seconds to page by the Workbook's arithmetic (None: no page rule can fire)."""
    times = [
        r.factor * (1 - objective) * r.long_s / bad
        for r in rules
        if r.severity == "page" and bad >= r.factor * (1 - objective)
    ]
    return min(times) if times else None


def _is_page(e: AlertEvent) -> bool:
    return e.kind == "latency_burn" and e.severity == "page"


def _first(
    events: list[tuple[float, AlertEvent]], pred: Callable[[AlertEvent], bool]
) -> float | None:
    return next((t for t, e in events if pred(e)), None)


def _pairs(events: list[tuple[float, AlertEvent]]) -> dict[str, tuple[int, int]]:
    """Per page alert id: how many times it fired and resolved."""
    out: dict[str, tuple[int, int]] = {}
    for _, e in events:
        if _is_page(e):
            fired, resolved = out.get(e.id, (0, 0))
            out[e.id] = (fired + (e.status == "firing"), resolved + (e.status == "resolved"))
    return out


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return f"{seconds / 60:.1f} min" if seconds < 2 * HOUR else f"{seconds / HOUR:.2f} h"


def warmed(
    objective: float, scale: float, seed: int = 1, rate: float = RATE, **overrides: object
) -> Sim:
    """An engine after a FULL long window (the longest page rule's) of good traffic."""
    cfg = settings(objective, scale, **overrides)
    engine = MonitorEngine(cfg)
    setattr(engine, "percentiles", lambda now: {})  # noqa: B010 -- the page's plot only
    sim = Sim(engine, scale, random.Random(seed), rate=rate)
    longest = max(r.long_s for r in cfg.burn_rules if r.severity == "page")
    sim.run(longest)
    assert not sim.events, f"alerts during the good warm-up: {sim.events}"
    return sim


def time_to_page(base: Sim, bad: float, seed: int) -> tuple[float | None, float | None, str]:
    """Production seconds to the first page after ``bad`` traffic begins (None: none within
    1.5x the Workbook's time + 30 min, or 6 h), the Workbook's time, and the rule that fired."""
    settings = base.engine.settings
    objective = settings.slos[0].objective
    expected = workbook_s(settings.burn_rules, objective, bad)
    cap = 1.5 * expected + 1800 if expected is not None else 6 * HOUR
    sim = base.fork(seed)
    start = sim.t
    fired_at: float | None = None
    while sim.t - start < cap * sim.scale and fired_at is None:
        sim.run(600, bad)  # ten production minutes at a time
        fired_at = _first(sim.events or [], lambda e: _is_page(e) and e.status == "firing")
    measured = None if fired_at is None else (fired_at - start) / sim.scale
    rule = next(
        (getattr(e, "raised_by", "") or e.rule for _, e in sim.events or [] if _is_page(e)), "-"
    )
    return measured, expected, rule


def time_to_page_table(warm: dict[float, Sim]) -> None:
    """Time to page per objective and bad share, measured and by the Workbook."""
    print("| objective | bad share | time to page (measured) | Workbook | page rule that fired |")
    print("|---|---|---|---|---|")
    for objective in OBJECTIVES:
        for k, bad in enumerate(BAD_SHARES):
            measured, expected, rule = time_to_page(warm[objective], bad, 10 + k)
            print(
                f"| {objective} | {bad:.0%} | {_fmt(measured)} | {_fmt(expected)} | {rule} |",
                flush=True,
            )


def false_alarms(scale: float, hours: float, warm: dict[float, Sim]) -> None:
    """Steady traffic with a background of bad requests at half the budget: no alert at all."""
    for objective in OBJECTIVES:
        sim = warm[objective].fork(2)
        sim.run(hours * HOUR, bad=0.5 * (1 - objective))
        firing = [e for _, e in sim.events or [] if e.status == "firing"]
        print(
            f"steady {hours:.0f} h at objective {objective}, {0.5 * (1 - objective):.2%} bad "
            f"(half the budget), {math.ceil(hours * HOUR / sim.engine.settings.eval_interval_s)} "
            f"evaluations: {len(firing)} alerts fired {[e.id for e in firing]}",
            flush=True,
        )


def intermittent(warm: dict[float, Sim]) -> None:
    """A model stalled 10 of every 12 minutes for an hour: requests complete (slow) in bursts
    and the short window is empty of events through each stall. One page, one resolve."""
    sim = warm[0.99].fork(3)
    scale = sim.scale
    start = sim.t
    for _ in range(5):
        sim.run(600, paused=True)
        sim.run(120)
    end = sim.t
    sim.run(2 * HOUR)
    pairs = _pairs(sim.events or [])
    first = _first(sim.events or [], lambda e: _is_page(e) and e.status == "firing")
    last = _first(sim.events or [], lambda e: _is_page(e) and e.status == "resolved")
    since = None if first is None else (first - start) / scale
    after = None if last is None else (last - end) / scale
    counts = ", ".join(f"{aid}: fired {f}x, resolved {r}x" for aid, (f, r) in pairs.items())
    print(
        f"intermittent stall (10 min of every 12 for 1 h, objective 0.99): {counts or 'no page'}; "
        f"first fire {_fmt(since)} after it began, resolved {_fmt(after)} after it ended",
        flush=True,
    )


def detection(scale: float = SCALE, steady_h: float = 12.0) -> None:
    """The whole scenario; prints a Markdown table and the steady and intermittent runs."""
    began = time.monotonic()
    print(
        f"windows scaled x{scale:.4f} (1 h = {HOUR * scale:.0f} s simulated), "
        f"{RATE:.0f} requests per simulated s, evaluations every 10 production s; "
        f"SLO: e2e under {THRESHOLD_MS:.0f} ms; each case after a full 6 h of good traffic"
    )
    warm = {o: warmed(o, scale) for o in OBJECTIVES}
    print(f"(warm-ups: {time.monotonic() - began:.0f} s)", flush=True)
    time_to_page_table(warm)
    false_alarms(scale, steady_h, warm)
    intermittent(warm)
    print(f"(ran {time.monotonic() - began:.0f} s)")
