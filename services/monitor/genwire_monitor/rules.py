"""From figures to verdicts: burn-rate rules per SLO and severity, drift per feature, stalled
partitions per (group, topic, partition)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from genwire_monitor import burnrate
from genwire_monitor.alerting import AlertBook, AlertEvent, Draft, Level, Policy
from genwire_monitor.burnrate import SLOState, Verdict
from genwire_monitor.config import (
    CANARY_SEVERITY,
    DRIFT_SEVERITY,
    NO_DATA_SEVERITY,
    OTHER_MODEL,
    STALL_SEVERITY,
    MonitorSettings,
)
from genwire_monitor.drift import SeriesResult
from genwire_monitor.drift_stats import FeatureScore
from genwire_monitor.features import BY_ATTR
from genwire_monitor.stalls import PartitionStatus


@dataclass
class SeverityVerdict:
    """The rules of one severity of one SLO, together: FIRE if any fires (with the draft of
    the first that does), CLEAR only if every one can tell it does not, else HOLD (no data)."""

    level: Level
    draft: Draft | None = None

    @property
    def no_data(self) -> bool:
        """Too few events to tell: the alert keeps its state."""
        return self.level is Level.HOLD


def _fmt_s(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:g}h"
    if seconds >= 60:
        return f"{seconds / 60:g}m"
    return f"{seconds:.3g}s"


def burn_id(slo: SLOState, severity: str) -> str:
    """``latency:<slo>:<severity>`` (all traffic) or ``…:<model>:<version>`` (one version)."""
    prefix = "latency" if slo.threshold_ms is not None else "errors"
    base = f"{prefix}:{slo.name}:{severity}"
    return base if slo.model is None else f"{base}:{slo.model}:{slo.version}"


def burn_verdicts(s: MonitorSettings, slo: SLOState, now: float) -> dict[str, SeverityVerdict]:
    """One verdict per severity of ``slo``'s rules."""
    results = burnrate.evaluate(
        slo.ring, slo.objective, s.burn_rules, now, s.window_scale, s.min_events
    )
    out: dict[str, SeverityVerdict] = {}
    for r in results:
        v = out.setdefault(r.rule.severity, SeverityVerdict(Level.CLEAR))
        if v.level is Level.FIRE:
            continue
        if r.verdict is Verdict.FIRE:
            out[r.rule.severity] = SeverityVerdict(Level.FIRE, burn_draft(s, slo, r, now))
        elif r.verdict is Verdict.NO_DATA:
            v.level = Level.HOLD
    return out


def burn_draft(s: MonitorSettings, slo: SLOState, r: burnrate.BurnResult, now: float) -> Draft:
    """The alert text of a firing burn rule, with the figures of the events it judged."""
    latency = slo.threshold_ms is not None
    what = f"{slo.stage} over {slo.threshold_ms:g} ms" if latency else "requests with an error"
    figures: dict[str, float | int | str] = {
        "burn_rate_long": round(r.long_burn, 3),
        "burn_rate_short": round(r.short_burn, 3),
        "bad_ratio_long": round(r.long.error_ratio, 5),
        "bad_ratio_short": round(r.short.error_ratio, 5),
        "bad_long": r.long.bad,
        "total_long": r.long.total,
        "total_short": r.short.total,
        "objective": slo.objective,
        "burn_factor": r.rule.factor,
    }
    if latency:
        figures["threshold_ms"] = slo.threshold_ms or 0.0
        # The values the rule counted in its short window (the SLO's own sketches, filled with
        # its counts): never empty when the rule fires, whatever the scale.
        sketch = slo.sketch(now, r.short.seconds)
        for q in (0.5, 0.95, 0.99):
            value = sketch.get_quantile_value(q) if sketch.count else None
            figures[f"p{round(q * 100)}_ms"] = round(value, 1) if value is not None else -1.0
    rule = (
        f"burn rate >= {r.rule.factor:g}x over {_fmt_s(r.rule.long_s)} and "
        f"{_fmt_s(r.rule.short_s)} (x{s.window_scale:g}: {_fmt_s(r.long.seconds)} and "
        f"{_fmt_s(r.short.seconds)})"
    )
    whose = "" if slo.model is None else f" of {slo.model} {slo.version}"
    labels = {"slo": slo.name, "stage": slo.stage}
    if slo.model is not None:
        labels |= {"model": slo.model, "version": slo.version or ""}
    return Draft(
        kind="latency_burn" if latency else "error_burn",
        severity=r.rule.severity,
        title=f"SLO {slo.name}{whose}: {what} burning budget {r.long_burn:.1f}x",
        summary=(
            f"{r.long.error_ratio:.1%} of {r.long.total} {what}{whose} in the last "
            f"{_fmt_s(r.long.seconds)} ({r.short.error_ratio:.1%} in the last "
            f"{_fmt_s(r.short.seconds)}); objective {slo.objective:.2%} good."
        ),
        rule=rule,
        figures=figures,
        window={"long_s": r.long.seconds, "short_s": r.short.seconds},
        model=slo.model,
        model_version=slo.version,
        examples=list(reversed(slo.bad_examples)),
        labels=labels,
        rule_id=r.rule_id,
    )


def drift_draft(model: str, version: str, score: FeatureScore, examples: list[str]) -> Draft:
    """The alert text of one drifted feature."""
    label = BY_ATTR[score.feature].label
    test = "KS" if score.kind == "numeric" else "chi-square"
    return Draft(
        rule_id="drift psi+ks" if score.kind == "numeric" else "drift js+chi2",
        kind="drift",
        severity=DRIFT_SEVERITY,
        title=f"Drift in {label} ({score.feature}) of {model} {version}",
        summary=(
            f"{label}: reference {score.ref_summary} (n={score.n_ref}) vs current "
            f"{score.cur_summary} (n={score.n_cur}); PSI {score.psi:.2f} (noise "
            f"{score.psi_bias:.2f}), JS {score.js:.2f}, "
            f"{test} p={score.p_value:.2g}."
        ),
        rule=(
            "PSI - noise >= threshold and KS p < p_value"
            if score.kind == "numeric"
            else "JS distance >= threshold and chi-square p < p_value"
        ),
        figures={
            "psi": round(score.psi, 4),
            "psi_noise": round(score.psi_bias, 4),
            "js_distance": round(score.js, 4),
            "p_value": float(f"{score.p_value:.4g}"),
            "statistic": round(score.statistic, 4),
            "n_reference": score.n_ref,
            "n_current": score.n_cur,
            "reference": score.ref_summary,
            "current": score.cur_summary,
        },
        model=model,
        model_version=version,
        examples=examples,
        labels={"feature": score.feature},
    )


CANARY_PREFIX = "canary:"


@dataclass(frozen=True)
class CanaryResult:
    """A canary version's output compared with its champion's (current windows)."""

    champion: str
    result: SeriesResult


def canary_id(model: str, version: str, feature: str) -> str:
    """``canary:<model>:<version>:<feature>``."""
    return f"{CANARY_PREFIX}{model}:{version}:{feature}"


def canary_draft(c: CanaryResult, score: FeatureScore) -> Draft:
    """The alert text of a canary whose output differs from its champion's."""
    r = c.result
    d = drift_draft(r.model, r.version, score, r.examples.get(score.feature, []))
    label = BY_ATTR[score.feature].label
    d.kind, d.severity = "canary", CANARY_SEVERITY
    d.rule_id = "canary psi+ks" if score.kind == "numeric" else "canary js+chi2"
    d.title = (
        f"Canary {r.model} {r.version} differs from champion {c.champion} in {label} "
        f"({score.feature})"
    )
    d.summary = (
        f"{label}: champion {c.champion} {score.ref_summary} (n={score.n_ref}) vs canary "
        f"{r.version} {score.cur_summary} (n={score.n_cur}) over the same window; "
        + d.summary.split("; ", 1)[1]
    )
    d.labels = {"feature": score.feature, "champion": c.champion}
    return d


def canary_events(
    s: MonitorSettings, book: AlertBook, canaries: Sequence[CanaryResult], now: float
) -> list[AlertEvent]:
    """One ``canary`` alert per compared feature of each canary; a feature no longer compared
    (too few samples now) holds its alert (no data)."""
    events: list[AlertEvent] = []
    policy = Policy(s.hold_s(s.canary_for_s), 2, s.hold_s(s.alert_keep_firing_s))
    seen: set[str] = set()
    for c in canaries:
        for score in c.result.scores:
            aid = canary_id(c.result.model, c.result.version, score.feature)
            seen.add(aid)
            level = Level.FIRE if score.drifted else Level.CLEAR if score.clear else Level.HOLD
            ev = book.observe(aid, level, canary_draft(c, score), policy, now)
            events += [ev] if ev else []
    for aid in book.known():
        if aid.startswith(CANARY_PREFIX) and aid not in seen:
            ev = book.observe(aid, Level.HOLD, None, policy, now, no_data=True)
            events += [ev] if ev else []
    return events


STALL_PREFIX = "stall:"
STALL_POLICY = Policy(for_s=0.0, for_evaluations=1, keep_firing_s=0.0)
"""The tracker already waited ``stall_alert_s``: fire on the first stalled verdict, resolve on
the first clear one (lag gone or the offset moved)."""


def stall_id(group: str, topic: str, partition: int) -> str:
    """The alert id of one partition of one consumer group."""
    return f"{STALL_PREFIX}{group}:{topic}:{partition}"


def stall_draft(p: PartitionStatus, threshold_s: float, interval_s: float) -> Draft:
    """The alert text of one partition (a clear verdict's text goes into the resolution)."""
    committed = "no committed offset" if p.committed is None else f"committed offset {p.committed}"
    where = f"Group {p.group}, {p.topic} partition {p.partition}: {committed}, log end {p.end}"
    if p.stalled:
        state = (
            f"{p.lag} records waiting and no commit progress for {p.stalled_s:.0f}s. Read "
            f"from the broker: the stage is dead, hung or failing on this partition, whatever "
            f"its /readyz says."
        )
    elif p.lag == 0:
        state = "no records waiting."
    else:
        state = f"{p.lag} records waiting, commits moving ({p.stalled_s:.0f}s since the last)."
    return Draft(
        rule_id=f"stall {_fmt_s(threshold_s)}",
        kind="partition_stalled",
        severity=STALL_SEVERITY,
        title=f"{p.group} stalled on {p.topic} partition {p.partition}",
        summary=f"{where}; {state}",
        rule=(
            f"lag > 0 and committed offset unchanged for >= {_fmt_s(threshold_s)} "
            f"(broker offsets read every {_fmt_s(interval_s)})"
        ),
        figures={
            "group": p.group,
            "topic": p.topic,
            "partition": p.partition,
            "committed": -1 if p.committed is None else p.committed,
            "end": p.end,
            "lag": p.lag,
            "stalled_s": round(p.stalled_s, 1),
        },
        window={"stall_s": threshold_s},
        labels={"group": p.group, "topic": p.topic, "partition": str(p.partition)},
    )


def _stall_level(book: AlertBook, aid: str, p: PartitionStatus) -> Level:
    """FIRE when stalled; HOLD while a firing alert's partition still lags at the offset it
    fired on (the tracker's clock restarted, e.g. after a monitor restart, but nothing moved);
    else CLEAR (lag gone or the commit moved)."""
    if p.stalled:
        return Level.FIRE
    fired = book.draft(aid) if book.is_firing(aid) else None
    if fired is not None and p.lag > 0:
        was = fired.figures.get("committed")
        if was == (-1 if p.committed is None else p.committed):
            return Level.HOLD
    return Level.CLEAR


def stall_events(
    s: MonitorSettings,
    book: AlertBook,
    partitions: Iterable[PartitionStatus] | None,
    now: float,
) -> list[AlertEvent]:
    """``partition_stalled`` per watched partition; partitions no longer reported clear.

    ``partitions`` None: the broker has not been read yet (since start): no verdict, every
    stall alert keeps its state (unless no group is watched at all)."""
    events: list[AlertEvent] = []
    if partitions is None and s.watched_groups:
        return events
    seen: set[str] = set()
    for p in partitions or ():
        aid = stall_id(p.group, p.topic, p.partition)
        seen.add(aid)
        level = _stall_level(book, aid, p)
        draft = stall_draft(p, s.stall_alert_s, s.stall_check_interval_s)
        ev = book.observe(aid, level, draft, STALL_POLICY, now)
        events += [ev] if ev else []
    for aid in book.known():  # the topic went away, or the group is no longer watched
        if aid.startswith(STALL_PREFIX) and aid not in seen:
            ev = book.observe(aid, Level.CLEAR, None, STALL_POLICY, now)
            events += [ev] if ev else []
    return events


NO_DATA_PREFIX = "slo-no-data:"
NO_DATA_POLICY = Policy(for_s=0.0, for_evaluations=1, keep_firing_s=0.0)
NO_DATA_REQUESTS = 100
"""Requests generated without a span of an SLO's stage before ``slo_no_data`` fires (at least
``min_events``): a service of the user's own that only some requests pass still shows."""


def no_data_draft(slo: SLOState, requests: int, stages: Sequence[str], needed: int) -> Draft:
    """The alert text of an SLO whose stage no span has had since the monitor started."""
    seen = ", ".join(repr(x) for x in stages) or "none yet"
    return Draft(
        rule_id="no span of its stage",
        kind="slo_no_data",
        severity=NO_DATA_SEVERITY,
        title=f"SLO {slo.name} watches stage {slo.stage!r}, which no span has",
        summary=(
            f"{requests} requests generated since the monitor started and no span of stage "
            f"{slo.stage!r}: the SLO counts nothing and cannot fire. Check its stage in "
            f"GENWIRE_MONITOR_SLOS (a typo, a service reporting under another name). Stages "
            f"seen: {seen}."
        ),
        rule=f"no span of the SLO's stage in >= {needed} requests generated since start",
        figures={"requests": requests},
        labels={"slo": slo.name, "stage": slo.stage},
    )


def no_data_events(
    s: MonitorSettings,
    book: AlertBook,
    watching: Sequence[tuple[SLOState, bool]],
    requests: int,
    stages: Sequence[str],
    now: float,
) -> list[AlertEvent]:
    """``slo_no_data`` per SLO of ``watching`` (a stage genwire does not report, each with
    whether a span of it came since start): it fires once ``NO_DATA_REQUESTS`` requests were
    generated (``requests``) and none had one, and resolves when one comes. One whose SLO is
    gone (renamed, or its stage changed, then the monitor restarted) resolves."""
    events: list[AlertEvent] = []
    needed = max(NO_DATA_REQUESTS, s.min_events)
    current: set[str] = set()
    for slo, seen in watching:
        aid = f"{NO_DATA_PREFIX}{slo.name}"
        current.add(aid)
        level = Level.CLEAR if seen else Level.FIRE if requests >= needed else Level.HOLD
        draft = no_data_draft(slo, requests, stages, needed)
        ev = book.observe(aid, level, draft, NO_DATA_POLICY, now, no_data=level is Level.HOLD)
        events += [ev] if ev else []
    for aid in book.known():
        if aid.startswith(NO_DATA_PREFIX) and aid not in current:
            ev = book.resolve(aid, now, "its SLO no longer watches a stage genwire does not know")
            events += [ev] if ev else []
    return events


BURN_KINDS = ("latency_burn", "error_burn")
"""The kinds of the burn-rate alerts (``burn_event``)."""


def unconfigured_burn_events(
    s: MonitorSettings, book: AlertBook, slos: Sequence[SLOState], now: float
) -> list[AlertEvent]:
    """Resolve each known burn alert whose SLO (by kind and name) or severity is no longer
    configured: rebuilt after a restart with the SLO renamed or a rule removed, nothing would
    ever judge it again, and it would hold every rollback of its model for ever."""
    slo_names = {
        ("latency_burn" if x.threshold_ms is not None else "error_burn", x.name) for x in slos
    }
    severities = {r.severity for r in s.burn_rules}
    events: list[AlertEvent] = []
    for aid in book.known():
        d = book.draft(aid)
        if d is None or d.kind not in BURN_KINDS:
            continue
        name = d.labels.get("slo") or aid.split(":")[1]  # ids: latency|errors:<slo>:<sev>…
        if (d.kind, name) in slo_names and d.severity in severities:
            continue
        ev = book.resolve(aid, now, "its SLO/severity is no longer configured.")
        events += [ev] if ev else []
    return events


def evaluate_all(
    s: MonitorSettings,
    book: AlertBook,
    slos: Sequence[SLOState],
    drift_results: Sequence[SeriesResult],
    partitions: Iterable[PartitionStatus] | None,
    now: float,
    canaries: Sequence[CanaryResult] = (),
) -> list[AlertEvent]:
    """Every rule's verdict through the alert book; returns the transitions.

    ``partitions`` None: the stall watch has not read the broker yet. ``canaries``: each
    canary version compared with its champion."""
    events: list[AlertEvent] = []
    burn_policy = Policy(s.hold_s(s.alert_for_s), 1, s.hold_s(s.alert_keep_firing_s))
    for slo in slos:
        for severity, v in burn_verdicts(s, slo, now).items():
            aid = burn_id(slo, severity)
            ev = book.observe(aid, v.level, v.draft, burn_policy, now, no_data=v.no_data)
            events += [ev] if ev else []
    events += unconfigured_burn_events(s, book, slos, now)
    drift_policy = Policy(
        s.hold_s(s.drift_for_s), s.drift_hold_evaluations, s.hold_s(s.alert_keep_firing_s)
    )
    seen: set[str] = set()
    for series in drift_results:
        if series.model == OTHER_MODEL:  # a mix of whatever did not get its own series
            continue
        for score in series.scores:
            aid = f"drift:{series.model}:{series.version}:{score.feature}"
            seen.add(aid)
            level = Level.FIRE if score.drifted else Level.CLEAR if score.clear else Level.HOLD
            draft = drift_draft(
                series.model, series.version, score, series.examples.get(score.feature, [])
            )
            ev = book.observe(aid, level, draft, drift_policy, now)
            events += [ev] if ev else []
    for aid in book.known():  # too few samples now, no reference (yet), or no traffic
        if aid.startswith("drift:") and aid not in seen:
            ev = book.observe(aid, Level.HOLD, None, drift_policy, now, no_data=True)
            events += [ev] if ev else []
    events += canary_events(s, book, canaries, now)
    events += stall_events(s, book, partitions, now)
    return events
