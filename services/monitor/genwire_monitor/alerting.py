"""Alert events and the state machine that keeps them from flapping.

Each alert id goes inactive → pending → firing → (resolved) → inactive. A condition must hold
for ``for_s`` and ``for_evaluations`` before firing; once firing, the alert stays firing until
its *clear* condition (stricter than "not firing": hysteresis) has held for ``keep_firing_s``.
Only the transitions to firing and to resolved produce events.

A firing alert remembers the rule that raised it (``raised_by``) and the rule whose verdict
holds it now (``held_by``: the latest to fire). ``Level.HOLD`` keeps whatever state the alert
is in; a rule says it when its data cannot tell (``no_data``: too few events), so sparse data
never resolves an alert. ``restore`` puts back alerts that were firing before a restart.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import Enum
from typing import Literal

from pydantic import BaseModel, Field

Figure = float | int | str
Kind = Literal["latency_burn", "error_burn", "drift", "canary", "partition_stalled", "slo_no_data"]


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
    raised_by: str = Field("", description="The rule that raised the alert (fired first).")
    held_by: str = Field(
        "", description="The rule whose verdict holds the alert now (the latest to fire)."
    )
    no_data: bool = Field(
        False, description="Its rules see too few events to tell: state kept, not resolved."
    )
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
    rule_id: str = ""  # the rule's short name (raised_by, held_by); "" : the rule text


def draft_of(event: AlertEvent) -> Draft:
    """The draft an event was made from (to restore a firing alert after a restart)."""
    return Draft(
        kind=event.kind,
        severity=event.severity,
        title=event.title,
        summary=event.summary,
        rule=event.rule,
        figures=dict(event.figures),
        window=dict(event.window),
        model=event.model,
        model_version=event.model_version,
        examples=list(event.example_trace_ids),
        labels=dict(event.labels),
        rule_id=event.held_by or event.raised_by,
    )


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
    raised_by: str = ""
    held_by: str = ""
    no_data: bool = False


def _rule_name(draft: Draft) -> str:
    return draft.rule_id or draft.rule


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
        self,
        alert_id: str,
        level: Level,
        draft: Draft | None,
        policy: Policy,
        now: float,
        *,
        no_data: bool = False,
    ) -> AlertEvent | None:
        """Feed one verdict; returns an event when the alert fires or resolves.

        ``no_data`` (with ``Level.HOLD``): the rule has too few events to tell; shown on the
        alert while it lasts."""
        st = self._states.setdefault(alert_id, _State())
        if draft is not None and (level is Level.FIRE or st.draft is None or st.status == "firing"):
            st.draft = draft
        if level is Level.FIRE and st.draft is not None:
            st.held_by = _rule_name(st.draft)
        st.no_data = no_data
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
            st.raised_by = st.held_by
            return self._event(alert_id, st, "firing", now)
        return None

    def restore(self, event: AlertEvent) -> bool:
        """Put back an alert that was firing before a restart (its last ``firing`` event).

        It keeps its id, start, ``raised_by`` and figures and is not published again; the
        rules then hold it (no data yet) or resolve it (with a ``resolved`` event) as usual.
        Returns False (and changes nothing) if the alert is already known."""
        if event.status != "firing" or event.id in self._states:
            return False
        draft = draft_of(event)
        self._states[event.id] = _State(
            status="firing",
            fired_at=event.started_at.timestamp(),
            draft=draft,
            raised_by=event.raised_by or _rule_name(draft),
            held_by=event.held_by or event.raised_by or _rule_name(draft),
            no_data=True,  # nothing seen since the restart yet
        )
        return True

    def resolve(self, alert_id: str, now: float, why: str) -> AlertEvent | None:
        """End an alert whose series is gone (evicted, or rebuilt after a restart for a model
        version that never came back): a firing one resolves now with ``why`` appended to its
        summary, a pending one is forgotten. No hold: nothing can prove it clear any more."""
        st = self._states.get(alert_id)
        if st is None:
            return None
        self._states.pop(alert_id)
        if st.status != "firing" or st.draft is None:
            return None
        st.draft = replace(st.draft, summary=f"{st.draft.summary} Resolved: {why}")
        st.no_data = False
        return self._event(alert_id, st, "resolved", now)

    def draft(self, alert_id: str) -> Draft | None:
        """The latest draft of a pending or firing alert."""
        st = self._states.get(alert_id)
        return None if st is None else st.draft

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
            raised_by=st.raised_by,
            held_by=st.held_by,
            no_data=st.no_data and status == "firing",
            started_at=_ts(st.fired_at),
            resolved_at=_ts(now) if status == "resolved" else None,
        )
        if record:
            self.history.append(event)
            del self.history[:-50]
        return event
