"""Automatic rollback: a canary whose alerts fire while its champion's do not goes back to the
champion, by a new revision of the model's policy on ``genwire.config``.

Pure: the engine thread calls :meth:`RollbackController.decide` after each evaluation with the
policies in force (followed live from ``genwire.config``) and the active alerts; the worker
publishes each decision's policy and reports back (:meth:`published` / :meth:`failed`).

A version is a *canary* when the policy gives it traffic and it is not the champion
(``ModelPolicy.canaries``). Its alerts are the per-version alerts that name it
(``model``/``model_version``) of the kinds and severities configured (``rollback_kinds``,
``rollback_severities``): burn-rate pages of its latency and error SLOs, and ``canary``
alerts (its output compared with the champion's). When the champion has such an alert too the
problem is not the canary's (a shared dependency, the load): nothing is rolled back, and the
decision is recorded as *held* on the page.

A canary is judged on what it served under the policy in force. An alert acts only when its
verdict is current (not held on no data: ``AlertEvent.no_data``, its rules see too few events)
and the version has served, since the policy's revision came into force (its ``updated_ms``, or
when this monitor first saw it, whichever is earlier), requests that bear on it (``Evidence``:
the engine asks that a rule of the alert's severity fire on its SLO's requests with each window
cut at the revision). Any alert of the champion still holds the rollback back, and so does the
champion judged on the same evidence (``Shared``: its requests of the same SLO since the same
cut burn as fast, or are not clearly better, or the all-traffic alert of that SLO fires and the
champion's requests cannot clear it): a shared outage fires the canary's nearly empty windows
minutes before the champion's full ones, and must not roll it back. An alert about
requests from before — the same version rolled back an hour ago and tried again under a new
revision, or an alert rebuilt after a restart from ``genwire.alerts`` — holds the canary (with
the reason on the page) until its requests under this policy fire it again or clear it.

A rollback is decided once per (model, policy revision): until the new revision comes back
through the feed, the same policy is never rolled back twice; a failed publish is retried at
the next evaluation, but one sent and not acknowledged in time is not decided again until the
producer settles it (``Decision.settling``: it may still be delivered). It is decided
only while the policies are current (the feed has read ``genwire.config`` to its end:
:meth:`pause` otherwise), and the worker publishes it only if the
revision it was decided on is still the newest known: a rollback never undoes a later change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from genwire.policy import ModelPolicy, PolicyError, rollback
from genwire_monitor.alerting import AlertEvent
from genwire_monitor.config import MonitorSettings

log = logging.getLogger(__name__)

BY = "monitor"

Evidence = Callable[[AlertEvent, float], bool]
"""Whether the alert's version served, since the time given, requests that bear on the alert."""

Shared = Callable[[AlertEvent, str, float], str]
"""Why the champion (the ``str``) shares the canary alert's problem over the same requests
since the time given ("": it is clearly healthy there, or nothing tells)."""


@dataclass
class Decision:
    """One rollback: the policy to publish and why."""

    model: str
    canary: str
    champion: str
    from_revision: int
    policy: ModelPolicy
    alert: AlertEvent
    decided_at: float
    published_at: float | None = None
    error: str = ""
    settling: bool = False  # sent, not acknowledged in time, still queued in the producer

    def summary(self) -> dict[str, object]:
        """JSON-ready, for ``/api/status`` and the page."""
        return {
            "model": self.model,
            "canary": self.canary,
            "champion": self.champion,
            "from_revision": self.from_revision,
            "revision": self.policy.revision,
            "reason": self.policy.reason,
            "alert_id": self.alert.id,
            "decided_at": _iso(self.decided_at),
            "published_at": None if self.published_at is None else _iso(self.published_at),
            "error": self.error,
        }


def _acting(
    alerts: Sequence[AlertEvent], since: float, evidence: Evidence | None
) -> list[AlertEvent]:
    """The alerts that may act: a current verdict on requests served since ``since``."""
    return [a for a in alerts if not a.no_data and (evidence is None or evidence(a, since))]


def _unshared(
    firing: dict[str, list[AlertEvent]], champion: str, since: float, shared: Shared | None
) -> tuple[dict[str, list[AlertEvent]], str]:
    """The canaries' alerts the champion does not share over the same requests, and why the
    others are shared (``"; "``-joined)."""
    if shared is None:
        return firing, ""
    kept: dict[str, list[AlertEvent]] = {}
    why: list[str] = []
    for version, alerts in firing.items():
        for alert in alerts:
            reason = shared(alert, champion, since)
            if reason:
                why.append(f"{alert.id}: {reason}")
            else:
                kept.setdefault(version, []).append(alert)
    return kept, "; ".join(why)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def alert_payload(alert: AlertEvent) -> dict[str, object]:
    """What the policy record keeps of the alert: id, kind, severity, title, summary, the
    rules, figures, window, example traces (``ModelPolicy.alert``)."""
    return alert.model_dump(
        mode="json",
        include={
            "id",
            "kind",
            "severity",
            "title",
            "summary",
            "rule",
            "raised_by",
            "held_by",
            "figures",
            "window",
            "model",
            "model_version",
            "example_trace_ids",
            "trace_links",
            "started_at",
        },
    )


@dataclass
class RollbackController:
    """Decides rollbacks; remembers what it decided (bounded)."""

    settings: MonitorSettings
    decisions: list[Decision] = field(default_factory=list)  # newest last, bounded
    held: dict[str, str] = field(default_factory=dict)  # model -> why nothing was done now
    published_total: dict[str, int] = field(default_factory=dict)  # model -> rollbacks
    _pending: dict[tuple[str, int], Decision] = field(default_factory=dict)
    _since: dict[tuple[str, int], float] = field(default_factory=dict)  # revision first seen

    def _triggers(self, alert: AlertEvent) -> bool:
        s = self.settings
        return alert.kind in s.rollback_kinds and alert.severity in s.rollback_severities

    def decide(
        self,
        policies: Mapping[str, ModelPolicy],
        active: Sequence[AlertEvent],
        now: float,
        evidence: Evidence | None = None,
        shared: Shared | None = None,
    ) -> list[Decision]:
        """The rollbacks to publish now (each model at most one; each revision once).

        ``evidence`` (None: every current alert counts) says whether an alert rests on
        requests served since its policy's revision came into force; ``shared`` (None: never)
        whether the champion, judged on the same evidence, has the same problem."""
        if not self.settings.auto_rollback:
            return []
        alerts: dict[tuple[str, str], list[AlertEvent]] = {}
        for alert in active:
            if alert.model is not None and alert.model_version and self._triggers(alert):
                alerts.setdefault((alert.model, alert.model_version), []).append(alert)
        self.held = {}
        out: list[Decision] = []
        for model, policy in policies.items():
            since = self._since.setdefault((model, policy.revision), now)
            if policy.updated_ms > 0:
                since = min(since, policy.updated_ms / 1000.0)

            champion = policy.champion
            if not champion:
                continue
            firing = {
                v: found
                for v in policy.canaries()
                if (found := _acting(alerts.get((model, v), ()), since, evidence))
            }
            if not firing:
                old = [a.id for v in sorted(policy.canaries()) for a in alerts.get((model, v), ())]
                if old:
                    self.held[model] = (
                        f"alerts of its canary ({', '.join(old)}) are held on no data or not "
                        f"borne out by its requests since revision {policy.revision}: not acted "
                        f"on; judged on those requests alone"
                    )
                continue
            bad = sorted(firing)
            # Cautious: any alert of the champion holds (restored, no data, or older than
            # this revision: its traffic is the larger share and clears it soon enough).
            champion_alerts = alerts.get((model, champion), [])
            if champion_alerts:
                ids = ", ".join(a.id for a in champion_alerts)
                self.held[model] = (
                    f"canary {', '.join(bad)} and champion {champion} both alerting ({ids}): "
                    f"not the canary's doing, nothing rolled back"
                )
                continue
            firing, why = _unshared(firing, champion, since, shared)
            if not firing:
                # A shared dependency failing fires the canary first (its windows start at
                # the revision, the champion's are full of good traffic): judged alike, both fail.
                self.held[model] = (
                    f"canary {', '.join(bad)} and champion {champion} both alerting on the "
                    f"requests since revision {policy.revision} ({why}): not the canary's "
                    f"doing, nothing rolled back"
                )
                continue
            bad = sorted(firing)
            pending = self._pending.get((model, policy.revision))
            if pending is not None and pending.published_at is not None:
                continue  # published; the new revision has not come back through the feed yet
            if pending is not None and pending.settling:
                self.held[model] = (
                    f"the rollback of revision {policy.revision} is not settled by the broker "
                    f"yet ({pending.error}): not decided again until it is"
                )
                continue
            canary = bad[0]
            alert = min(firing[canary], key=lambda a: a.started_at)
            reason = (
                f"automatic rollback of {model} version {canary} to champion {champion}: "
                f"{alert.title} ({alert.id}, raised by {alert.raised_by or alert.rule}); "
                f"champion {champion} has no such alert"
            )
            try:
                new = rollback(policy, reason, alert_payload(alert), by=BY)
            except PolicyError as exc:
                self.held[model] = f"rollback of {model} refused: {exc}"
                continue
            decision = Decision(model, canary, champion, policy.revision, new, alert, now)
            self._pending[(model, policy.revision)] = decision
            out.append(decision)
        live = {(m, p.revision) for m, p in policies.items()}
        for key in [k for k in self._pending if k not in live]:
            del self._pending[key]  # the policy moved on: bounded by the models
        for key in [k for k in self._since if k not in live]:
            del self._since[key]
        return out

    def pause(self, policies: Mapping[str, ModelPolicy], why: str) -> list[Decision]:
        """Decide nothing now (``why``, shown as held for every model with a canary)."""
        self.held = {
            model: f"no rollback decided: {why}"
            for model, policy in policies.items()
            if policy.canaries()
        }
        return []

    def published(self, decision: Decision, now: float) -> None:
        """The broker acknowledged the decision's policy."""
        decision.published_at = now
        decision.error = ""
        decision.settling = False
        self.decisions = [*self.decisions, decision][-50:]
        self.published_total[decision.model] = self.published_total.get(decision.model, 0) + 1
        log.warning(
            "rolled back %s: version %s -> champion %s (revision %d -> %d): %s",
            decision.model,
            decision.canary,
            decision.champion,
            decision.from_revision,
            decision.policy.revision,
            decision.alert.id,
        )

    def failed(self, decision: Decision, error: str) -> None:
        """Publishing failed: decided again (and retried) at the next evaluation."""
        decision.error = error
        decision.settling = False
        self._pending.pop((decision.model, decision.from_revision), None)

    def unsettled(self, decision: Decision, error: str) -> None:
        """Sent but not acknowledged in time: the record may still be delivered, so the
        revision is not decided again until :meth:`published` or :meth:`failed` settles it
        (a second rollback could land after a newer operator record)."""
        decision.error = error
        decision.settling = True
