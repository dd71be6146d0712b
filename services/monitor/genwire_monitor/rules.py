"""From figures to verdicts: burn-rate rules per SLO and severity, drift per feature, stalled
partitions per (group, topic, partition)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from ddsketch import DDSketch

from genwire_monitor import burnrate
from genwire_monitor.alerting import AlertBook, AlertEvent, Draft, Level, Policy
from genwire_monitor.burnrate import SLOState
from genwire_monitor.config import MonitorSettings
from genwire_monitor.drift import SeriesResult
from genwire_monitor.drift_stats import FeatureScore
from genwire_monitor.features import BY_ATTR
from genwire_monitor.stalls import PartitionStatus

SketchOf = Callable[[str, float, float], DDSketch]
"""A stage's merged sketch: ``(stage, now, window_s)`` (the engine's ``sketch``)."""


def _fmt_s(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:g}h"
    if seconds >= 60:
        return f"{seconds / 60:g}m"
    return f"{seconds:.3g}s"


def burn_drafts(
    s: MonitorSettings, slo: SLOState, sketch_of: SketchOf, now: float
) -> dict[str, Draft | None]:
    """One verdict per severity: a draft if any rule of that severity fires, else None."""
    results = burnrate.evaluate(
        slo.ring, slo.objective, s.burn_rules, now, s.window_scale, s.min_events
    )
    out: dict[str, Draft | None] = {r.rule.severity: None for r in results}
    for r in results:
        if not r.firing or out[r.rule.severity] is not None:
            continue
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
            sketch = sketch_of(slo.stage, now, r.rule.short_s * s.window_scale)
            for q in (0.5, 0.95, 0.99):
                value = sketch.get_quantile_value(q) if sketch.count else None
                if value is not None:
                    figures[f"p{round(q * 100)}_ms"] = round(value, 1)
        rule = (
            f"burn rate >= {r.rule.factor:g}x over {_fmt_s(r.rule.long_s)} and "
            f"{_fmt_s(r.rule.short_s)} (x{s.window_scale:g}: {_fmt_s(r.long.seconds)} and "
            f"{_fmt_s(r.short.seconds)})"
        )
        out[r.rule.severity] = Draft(
            kind="latency_burn" if latency else "error_burn",
            severity=r.rule.severity,
            title=f"SLO {slo.name}: {what} burning budget {r.long_burn:.1f}x",
            summary=(
                f"{r.long.error_ratio:.1%} of {r.long.total} {what} in the last "
                f"{_fmt_s(r.long.seconds)} ({r.short.error_ratio:.1%} in the last "
                f"{_fmt_s(r.short.seconds)}); objective {slo.objective:.2%} good."
            ),
            rule=rule,
            figures=figures,
            window={"long_s": r.long.seconds, "short_s": r.short.seconds},
            examples=list(reversed(slo.bad_examples)),
            labels={"slo": slo.name, "stage": slo.stage},
        )
    return out


def drift_draft(model: str, version: str, score: FeatureScore, examples: list[str]) -> Draft:
    """The alert text of one drifted feature."""
    label = BY_ATTR[score.feature].label
    test = "KS" if score.kind == "numeric" else "chi-square"
    return Draft(
        kind="drift",
        severity="ticket",
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
        kind="partition_stalled",
        severity="page",
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


def stall_events(
    s: MonitorSettings, book: AlertBook, partitions: Iterable[PartitionStatus], now: float
) -> list[AlertEvent]:
    """``partition_stalled`` per watched partition; partitions no longer reported clear."""
    events: list[AlertEvent] = []
    seen: set[str] = set()
    for p in partitions:
        aid = stall_id(p.group, p.topic, p.partition)
        seen.add(aid)
        level = Level.FIRE if p.stalled else Level.CLEAR
        draft = stall_draft(p, s.stall_alert_s, s.stall_check_interval_s)
        ev = book.observe(aid, level, draft, STALL_POLICY, now)
        events += [ev] if ev else []
    for aid in book.known():  # the topic went away, or the group is no longer watched
        if aid.startswith(STALL_PREFIX) and aid not in seen:
            ev = book.observe(aid, Level.CLEAR, None, STALL_POLICY, now)
            events += [ev] if ev else []
    return events


def evaluate_all(
    s: MonitorSettings,
    book: AlertBook,
    slos: Sequence[SLOState],
    drift_results: Sequence[SeriesResult],
    partitions: Iterable[PartitionStatus],
    sketch_of: SketchOf,
    now: float,
) -> list[AlertEvent]:
    """Every rule's verdict through the alert book; returns the transitions."""
    events: list[AlertEvent] = []
    burn_policy = Policy(s.scaled(s.alert_for_s), 1, s.scaled(s.alert_keep_firing_s))
    for slo in slos:
        prefix = "latency" if slo.threshold_ms is not None else "errors"
        for severity, draft in burn_drafts(s, slo, sketch_of, now).items():
            level = Level.FIRE if draft else Level.CLEAR
            ev = book.observe(f"{prefix}:{slo.name}:{severity}", level, draft, burn_policy, now)
            events += [ev] if ev else []
    drift_policy = Policy(
        s.scaled(s.drift_for_s), s.drift_hold_evaluations, s.scaled(s.alert_keep_firing_s)
    )
    seen: set[str] = set()
    for series in drift_results:
        for score in series.scores:
            aid = f"drift:{series.model}:{series.version}:{score.feature}"
            seen.add(aid)
            level = Level.FIRE if score.drifted else Level.CLEAR if score.clear else Level.HOLD
            draft = drift_draft(
                series.model, series.version, score, series.examples.get(score.feature, [])
            )
            ev = book.observe(aid, level, draft, drift_policy, now)
            events += [ev] if ev else []
    for aid in book.known():  # too few samples now, or the version went away: not drifted
        if aid.startswith("drift:") and aid not in seen:
            ev = book.observe(aid, Level.CLEAR, None, drift_policy, now)
            events += [ev] if ev else []
    events += stall_events(s, book, partitions, now)
    return events
