"""Multi-window, multi-burn-rate SLO rules (Google SRE Workbook, "Alerting on SLOs").

Burn rate = error ratio / error budget, the budget being ``1 - objective``. A rule fires only
when BOTH its long and its short window burn faster than its factor: the long window makes it
significant, the short one makes it reset soon after the problem stops.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from genwire_monitor.config import BurnRule
from genwire_monitor.windows import CounterRing


@dataclass
class SLOState:
    """One SLO's counts and its latest bad requests (example trace ids)."""

    name: str
    stage: str
    objective: float
    threshold_ms: float | None  # None: the error SLO
    ring: CounterRing
    bad_examples: deque[str] = field(default_factory=lambda: deque(maxlen=10))


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
    firing: bool

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
) -> list[BurnResult]:
    """Every rule against the ring's counts; windows multiplied by ``scale``."""
    results = []
    for rule in rules:
        long = WindowFigures(rule.long_s * scale, *ring.window(now, rule.long_s * scale))
        short = WindowFigures(rule.short_s * scale, *ring.window(now, rule.short_s * scale))
        firing = (
            short.total >= min_events
            and long.burn(objective) >= rule.factor
            and short.burn(objective) >= rule.factor
        )
        results.append(BurnResult(rule, long, short, objective, firing))
    return results


def ring_for(rules: list[BurnRule], scale: float) -> CounterRing:
    """A ring long enough for the longest window, fine enough for the shortest (1/10)."""
    longest = max(r.long_s for r in rules) * scale
    shortest = min(r.short_s for r in rules) * scale
    return CounterRing(width_s=shortest / 10, span_s=longest)
