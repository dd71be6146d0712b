"""Alert events and the state machine that keeps them from flapping.

Each alert id goes inactive → pending → firing → (resolved) → inactive. A condition must hold
for ``for_s`` and ``for_evaluations`` before firing; once firing, the alert stays firing until
its *clear* condition (stricter than "not firing": hysteresis) has held for ``keep_firing_s``.
Only the transitions to firing and to resolved produce events.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Literal

from pydantic import BaseModel, Field

Figure = float | int | str
Kind = Literal["latency_burn", "error_burn", "drift", "partition_stalled"]


class Level(Enum):
    """What a rule says now."""

    FIRE = "fire"
    HOLD = "hold"  # between the firing and the clear thresholds: keep the current state
    CLEAR = "clear"


class AlertEvent(BaseModel):
    """One alert transition, published as JSON on ``genwire.alerts``."""

    id: str = Field(description="Stable fingerprint: the same for firing and resolved.")
    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    status: Literal["firing", "resolved"]
    kind: Kind
    severity: str
    title: str
    summary: str
    rule: str = Field(description="What fired, in words (windows, factor, test, threshold).")
    figures: dict[str, Figure] = Field(default_factory=dict)
    window: dict[str, float] = Field(default_factory=dict, description="Window lengths, s.")
    model: str | None = None
    model_version: str | None = None
    example_trace_ids: list[str] = Field(default_factory=list)
    trace_links: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    started_at: datetime
    resolved_at: datetime | None = None
    emitted_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


@dataclass
class Draft:
    """What a rule knows about its alert now (everything but the lifecycle)."""

    kind: Kind
    severity: str
    title: str
    summary: str
    rule: str
    figures: dict[str, Figure] = field(default_factory=dict)
    window: dict[str, float] = field(default_factory=dict)
    model: str | None = None
    model_version: str | None = None
    examples: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    """Debounce settings of one alert."""

    for_s: float = 0.0
    for_evaluations: int = 1
    keep_firing_s: float = 0.0


@dataclass
class _State:
    status: str = "inactive"  # inactive | pending | firing
    pending_since: float = 0.0
    pending_count: int = 0
    fired_at: float = 0.0
    clear_since: float | None = None
    draft: Draft | None = None


def _ts(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


class AlertBook:
    """Every alert's state; ``observe`` turns rule verdicts into transition events."""

    def __init__(self, trace_url: Callable[[str], str], max_examples: int) -> None:
        self._trace_url = trace_url  # trace id -> link (``CommonSettings.trace_url``)
        self._max_examples = max_examples
        self._states: dict[str, _State] = {}
        self.history: list[AlertEvent] = []  # recent transitions, newest last (bounded)

    def observe(
        self, alert_id: str, level: Level, draft: Draft | None, policy: Policy, now: float
    ) -> AlertEvent | None:
        """Feed one verdict; returns an event when the alert fires or resolves."""
        st = self._states.setdefault(alert_id, _State())
        if draft is not None and (level is Level.FIRE or st.draft is None or st.status == "firing"):
            st.draft = draft
        if st.status == "firing":
            if level is Level.CLEAR:
                st.clear_since = now if st.clear_since is None else st.clear_since
                if now - st.clear_since >= policy.keep_firing_s:
                    event = self._event(alert_id, st, "resolved", now)
                    self._states.pop(alert_id)
                    return event
            else:
                st.clear_since = None
            return None
        if level is not Level.FIRE:
            if st.status == "inactive" or (st.status == "pending" and level is Level.CLEAR):
                self._states.pop(alert_id)  # nothing to remember
            return None
        if st.status == "inactive":
            st.status, st.pending_since, st.pending_count = "pending", now, 0
        st.pending_count += 1
        if now - st.pending_since >= policy.for_s and st.pending_count >= policy.for_evaluations:
            st.status, st.fired_at, st.clear_since = "firing", now, None
            return self._event(alert_id, st, "firing", now)
        return None

    def active(self, now: float) -> list[AlertEvent]:
        """Alerts firing now, with their latest figures."""
        return [
            self._event(aid, st, "firing", now, record=False)
            for aid, st in self._states.items()
            if st.status == "firing"
        ]

    def is_firing(self, alert_id: str) -> bool:
        """Whether ``alert_id`` is firing now."""
        st = self._states.get(alert_id)
        return st is not None and st.status == "firing"

    def known(self) -> list[str]:
        """Ids of alerts pending or firing."""
        return [aid for aid, st in self._states.items() if st.status != "inactive"]

    def _event(
        self, alert_id: str, st: _State, status: str, now: float, *, record: bool = True
    ) -> AlertEvent:
        d = st.draft
        assert d is not None  # a FIRE verdict always comes with a draft
        examples = d.examples[: self._max_examples]
        event = AlertEvent(
            id=alert_id,
            status="resolved" if status == "resolved" else "firing",
            kind=d.kind,
            severity=d.severity,
            title=d.title,
            summary=d.summary,
            rule=d.rule,
            figures=d.figures,
            window=d.window,
            model=d.model,
            model_version=d.model_version,
            example_trace_ids=examples,
            trace_links=[self._trace_url(t) for t in examples],
            labels=d.labels,
            started_at=_ts(st.fired_at),
            resolved_at=_ts(now) if status == "resolved" else None,
        )
        if record:
            self.history.append(event)
            del self.history[:-50]
        return event
