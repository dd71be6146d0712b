"""Multi-window, multi-burn-rate SLO rules (Google SRE Workbook, "Alerting on SLOs").

Burn rate = error ratio / error budget, the budget being ``1 - objective``. A rule fires only
when BOTH its long and its short window burn faster than its factor: the long window makes it
significant, the short one makes it reset soon after the problem stops.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from ddsketch import DDSketch

from genwire_monitor.config import BurnRule
from genwire_monitor.windows import CounterRing, TimeRing, merged, new_sketch


class Verdict(Enum):
    """What one rule can say about its windows now."""

    FIRE = "fire"  # enough events in the short window, both windows burn >= the factor
    CLEAR = "clear"  # a window with enough events burns below the factor: cannot fire now
    NO_DATA = "no data"  # too few events to tell: keeps the alert's state


@dataclass
class SLOState:
    """One SLO's counts and its latest bad requests (example trace ids)."""

    name: str
    stage: str
    objective: float
    threshold_ms: float | None  # None: the error SLO
    ring: CounterRing
    sketches: TimeRing[DDSketch] | None = None  # the counted values (latency SLOs), for figures
    model: str | None = None  # None: all traffic; else this model version's requests only
    version: str | None = None
    bad_examples: deque[str] = field(default_factory=lambda: deque(maxlen=10))

    def count(self, t: float, now: float, good: bool, trace: str, ms: float | None) -> None:
        """Count one event at ``t`` (and keep its value for the alert's percentiles)."""
        if not self.ring.add(t, now, good):
            return
        if not good:
            self.bad_examples.append(trace)
        if ms is not None and self.sketches is not None:
            sketch = self.sketches.at(t, now)
            if sketch is not None:
                sketch.add(ms)

    def sketch(self, now: float, window_s: float) -> DDSketch:
        """The values counted inside ``(now - window_s, now]``: the events a rule judged."""
        if self.sketches is None:
            return new_sketch()
        return merged(self.sketches.window(now, window_s))


@dataclass(frozen=True)
class WindowFigures:
    """Counts and burn rate of one window."""

    seconds: float
    good: int
    total: int

    @property
    def bad(self) -> int:
        """Events that missed the objective."""
        return self.total - self.good

    @property
    def error_ratio(self) -> float:
        """Share of bad events (0 when there were none)."""
        return self.bad / self.total if self.total else 0.0

    def burn(self, objective: float) -> float:
        """How many times faster than sustainable the budget is being spent."""
        return self.error_ratio / (1.0 - objective)


@dataclass(frozen=True)
class BurnResult:
    """One rule evaluated now."""

    rule: BurnRule
    long: WindowFigures
    short: WindowFigures
    objective: float
    verdict: Verdict

    @property
    def firing(self) -> bool:
        """Whether the rule fires now."""
        return self.verdict is Verdict.FIRE

    @property
    def rule_id(self) -> str:
        """The rule, named by its production windows: ``page 1h/5m 14.4x``."""
        return self.rule.rule_id

    @property
    def long_burn(self) -> float:
        """Burn rate over the long window."""
        return self.long.burn(self.objective)

    @property
    def short_burn(self) -> float:
        """Burn rate over the short window."""
        return self.short.burn(self.objective)


def evaluate(
    ring: CounterRing,
    objective: float,
    rules: list[BurnRule],
    now: float,
    scale: float,
    min_events: int,
    since: float | None = None,
) -> list[BurnResult]:
    """Every rule against the ring's counts; windows multiplied by ``scale``. With ``since``,
    on the events at or after it alone: each window's buckets cut there (``CounterRing.since``:
    none from before it; a window that lies after it is whole)."""

    def figures(length: float) -> WindowFigures:
        if since is None:
            return WindowFigures(length, *ring.window(now, length))
        return WindowFigures(length, *ring.since(since, now, length))

    results = []
    for rule in rules:
        long, short = figures(rule.long_s * scale), figures(rule.short_s * scale)
        results.append(
            BurnResult(
                rule, long, short, objective, verdict(rule, long, short, objective, min_events)
            )
        )
    return results


def verdict(
    rule: BurnRule, long: WindowFigures, short: WindowFigures, objective: float, min_events: int
) -> Verdict:
    """FIRE needs ``min_events`` in the short window and both windows burning; CLEAR needs a
    window with ``min_events`` that burns below the factor (a rule needs both windows to fire,
    so either one proves it cannot); anything else is NO_DATA, never good news."""
    if short.total >= min_events and short.burn(objective) < rule.factor:
        return Verdict.CLEAR
    if long.total >= min_events and long.burn(objective) < rule.factor:
        return Verdict.CLEAR
    if short.total >= min_events:
        return Verdict.FIRE  # both burn at or above the factor
    return Verdict.NO_DATA


def ring_for(rules: list[BurnRule], scale: float) -> CounterRing:
    """A ring long enough for the longest window, fine enough for the shortest (1/10)."""
    longest = max(r.long_s for r in rules) * scale
    shortest = min(r.short_s for r in rules) * scale
    return CounterRing(width_s=shortest / 10, span_s=longest)


def sketch_ring_for(rules: list[BurnRule], scale: float) -> TimeRing[DDSketch]:
    """Sketches of the counted values over the longest *short* window (the alert's percentiles
    are over the short window of the rule that fired), in buckets of half the shortest one."""
    longest = max(r.short_s for r in rules) * scale
    shortest = min(r.short_s for r in rules) * scale
    return TimeRing(shortest / 2, longest + shortest, new_sketch)
