"""The status page: active alerts, stage latency percentiles, SLO burn, drift, with plots.

``snapshot`` copies what the page needs out of the engine (on the engine's thread);
``render`` turns it into one self-contained HTML document (inline CSS and SVG, no scripts,
nothing fetched), refreshed by the browser every few seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from html import escape

from genwire_monitor import burnrate
from genwire_monitor.alerting import AlertEvent
from genwire_monitor.drift import SeriesResult
from genwire_monitor.features import BY_ATTR
from genwire_monitor.handlers import Counts, MonitorEngine
from genwire_monitor.stages import ordered
from genwire_monitor.stalls import PartitionStatus
from genwire_monitor.svgchart import line_chart

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:3px 10px;border-bottom:1px solid #eee;
text-align:right}td:first-child,th:first-child{text-align:left}
.alert{border-left:6px solid #d62728;background:#fff5f5;padding:.5em 1em;margin:.6em 0}
.alert.ticket{border-color:#ff7f0e;background:#fffaf0}.sev{font-weight:bold;text-transform:uppercase}
td.l{text-align:left}.ok{color:#2ca02c}.bad{color:#d62728;font-weight:bold}.muted{color:#777}
.chart-title{font-weight:bold;font-size:13px}.tick,.legend{font-size:11px;fill:#555}
"""


@dataclass
class SLORow:
    """One SLO's burn rates now."""

    name: str
    stage: str
    target: str
    burns: list[tuple[str, float, float, bool]]  # (rule, long burn, short burn, firing)


@dataclass
class PageData:
    """Everything the page shows, copied out of the engine."""

    now: float
    counts: Counts
    percentiles: dict[str, dict[str, float]]
    stages: list[str]
    latency_series: dict[str, list[tuple[float, float]]]
    drift_series: dict[str, dict[str, list[tuple[float, float]]]]
    drift: list[SeriesResult]
    slos: list[SLORow]
    active: list[AlertEvent]
    recent: list[AlertEvent]
    window_s: float
    psi_threshold: float
    open_traces: int = 0
    notes: list[str] = field(default_factory=list)
    partitions: list[PartitionStatus] = field(default_factory=list)
    models: list[dict[str, object]] = field(default_factory=list)
    rollbacks: list[dict[str, object]] = field(default_factory=list)
    rollbacks_held: dict[str, str] = field(default_factory=dict)


def snapshot(engine: MonitorEngine, now: float) -> PageData:
    """Copy the figures out of the engine (call on the engine's thread)."""
    s = engine.settings
    pct = engine.percentiles(now)
    stages = ordered(list(pct))
    slos = []
    for slo in [*engine.slos, engine.error_slo]:
        results = burnrate.evaluate(
            slo.ring, slo.objective, s.burn_rules, now, s.window_scale, s.min_events
        )
        target = (
            f"{slo.objective:.2%} under {slo.threshold_ms:g} ms"
            if slo.threshold_ms is not None
            else f"{slo.objective:.2%} without error"
        )
        burns = [
            (f"{r.rule.severity} {r.rule.factor:g}x", r.long_burn, r.short_burn, r.firing)
            for r in results
        ]
        slos.append(SLORow(slo.name, slo.stage, target, burns))
    drift_series: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for (model, version, feature), points in engine.history.drift.items():
        drift_series.setdefault(f"{model} {version}", {})[BY_ATTR[feature].label] = [
            (p.t, p.psi) for p in points
        ]
    return PageData(
        now=now,
        counts=Counts(**vars(engine.counts)),
        percentiles=pct,
        stages=stages,
        latency_series={
            st: [(p.t, p.p95) for p in engine.history.latency[st]]
            for st in ordered(list(engine.history.latency))
        },
        drift_series=drift_series,
        drift=list(engine.drift_results),
        slos=slos,
        active=engine.book.active(now),
        recent=list(reversed(engine.book.history[-20:])),
        window_s=engine.page_window_s,
        psi_threshold=s.drift.psi_threshold,
        open_traces=len(engine.traces),
        partitions=[engine.partitions[k] for k in sorted(engine.partitions)],
        models=engine.model_figures(now),
        rollbacks=[r.summary() for r in engine.rollback.decisions],
        rollbacks_held=dict(engine.rollback.held),
    )


def _alert(a: AlertEvent) -> str:
    figures = "".join(
        f"<tr><td>{escape(k)}</td><td>{escape(str(v))}</td></tr>" for k, v in a.figures.items()
    )
    links = " ".join(
        f'<a href="{escape(u)}">{escape(t[:16])}…</a>'
        for t, u in zip(a.example_trace_ids, a.trace_links, strict=False)
    )
    model = f" · model {escape(a.model)} {escape(a.model_version or '')}" if a.model else ""
    no_data = (
        ' · <span class="bad no-data">no data</span> (too few events to tell: held, not resolved)'
        if a.no_data
        else ""
    )
    held = f" · held by {escape(a.held_by)}" if a.held_by and a.held_by != a.raised_by else ""
    return (
        f'<div class="alert {escape(a.severity)}" data-alert-id="{escape(a.id)}">'
        f'<span class="sev">{escape(a.severity)}</span> · {escape(a.kind)}{model}'
        f'<h3 class="alert-title">{escape(a.title)}</h3><p>{escape(a.summary)}</p>'
        f'<p class="raised-by">raised by <b>{escape(a.raised_by or a.rule)}</b>{held}{no_data}'
        f"</p>"
        f'<p class="muted">rule: {escape(a.rule)} · since {a.started_at:%H:%M:%S} UTC</p>'
        f"<details><summary>figures</summary><table>{figures}</table></details>"
        f"<p>example traces: {links or '<span class=muted>none</span>'}</p></div>"
    )


def _latency_table(d: PageData) -> str:
    rows = "".join(
        f'<tr class="stage-row"><td>{escape(st)}</td><td>{d.percentiles[st]["p50"]:.1f}</td>'
        f"<td>{d.percentiles[st]['p95']:.1f}</td><td>{d.percentiles[st]['p99']:.1f}</td>"
        f"<td>{int(d.percentiles[st]['count'])}</td></tr>"
        for st in d.stages
    )
    if not rows:
        rows = '<tr><td colspan="5" class="muted">no spans in the window yet</td></tr>'
    return (
        f'<table id="latency"><tr><th>stage</th><th>p50 ms</th><th>p95 ms</th><th>p99 ms</th>'
        f"<th>count</th></tr>{rows}</table>"
    )


def _slo_table(d: PageData) -> str:
    head = "".join(f"<th>{escape(b[0])} (long / short)</th>" for b in d.slos[0].burns)
    rows = ""
    for slo in d.slos:
        cells = "".join(
            f'<td class="{"bad" if firing else "ok"}">{lb:.2f} / {sb:.2f}</td>'
            for _, lb, sb, firing in slo.burns
        )
        rows += f"<tr><td>{escape(slo.name)}</td><td>{escape(slo.target)}</td>{cells}</tr>"
    return f'<table id="slos"><tr><th>SLO</th><th>target</th>{head}</tr>{rows}</table>'


def _drift(d: PageData) -> str:
    out = []
    for series in d.drift:
        name = f"{series.model} {series.version}"
        rows = "".join(
            f'<tr><td>{escape(BY_ATTR[s.feature].label)} <span class="muted">'
            f"{escape(s.feature)}</span></td><td>{s.psi:.3f}</td><td>{s.js:.3f}</td>"
            f"<td>{s.p_value:.2g}</td><td>{escape(s.ref_summary)}</td>"
            f"<td>{escape(s.cur_summary)}</td>"
            f'<td class="{"bad" if s.drifted else "ok"}">{"drift" if s.drifted else "ok"}</td></tr>'
            for s in series.scores
        )
        out.append(
            f"<h3>{escape(name)} <span class=muted>({escape(series.state)})</span></h3>"
            f'<table class="drift"><tr><th>feature</th><th>PSI</th><th>JS</th><th>p</th>'
            f"<th>reference</th><th>current</th><th></th></tr>{rows}</table>"
        )
        if name in d.drift_series:
            out.append(
                line_chart(
                    f"PSI over time, {name}",
                    d.drift_series[name],
                    threshold=d.psi_threshold,
                    chart_id=f"drift-{name}",
                )
            )
    return "".join(out) or '<p class="muted">no model traffic with drift features yet</p>'


def _fmt(value: object, spec: str) -> str:
    return "–" if not isinstance(value, int | float) else format(value, spec)


def _models(d: PageData) -> str:
    if not d.models:
        return '<p class="muted">no model traffic yet</p>'
    names = sorted({n for m in d.models for n in m["slos"]})  # type: ignore[attr-defined]
    head = "".join(f"<th>{escape(n)} good</th><th>{escape(n)} p99 ms</th>" for n in names)
    rows = ""
    for m in d.models:
        slos: dict[str, dict[str, object]] = m["slos"]  # type: ignore[assignment]
        cells = "".join(
            f"<td>{_fmt(slos.get(n, {}).get('good_ratio'), '.2%')}</td>"
            f"<td>{_fmt(slos.get(n, {}).get('p99_ms'), '.1f')}</td>"
            for n in names
        )
        rows += (
            f'<tr class="model-row"><td>{escape(str(m["model"]))}</td>'
            f'<td class="l">{escape(str(m["version"]))}</td>'
            f'<td class="l">{escape(str(m.get("role") or ""))}</td><td>{m["requests"]}</td>'
            f"<td>{_fmt(m['error_ratio'], '.2%')}</td><td>{_fmt(m['mean_logprob'], '.3f')}</td>"
            f"<td>{_feedback(m.get('feedback'))}</td>"
            f"{cells}</tr>"
        )
    return (
        '<table id="models"><tr><th>model</th><th>version</th><th>role</th><th>requests</th>'
        "<th>errors</th>"
        f"<th>mean logprob</th><th>feedback (n, mean rating, labels)</th>{head}</tr>{rows}</table>"
    )


def _feedback(f: object) -> str:
    if not isinstance(f, dict) or not f.get("count"):
        return '<span class="muted">none</span>'
    labels = ", ".join(f"{escape(k)} {v}" for k, v in sorted(f["labels"].items()))
    return (
        f'<span class="feedback">{f["count"]}, {_fmt(f["mean_rating"], ".2f")}'
        f"{'; ' + labels if labels else ''}</span>"
    )


def _rollbacks(d: PageData) -> str:
    held = "".join(
        f'<p class="bad">{escape(m)}: {escape(why)}</p>' for m, why in d.rollbacks_held.items()
    )
    if not d.rollbacks:
        return held + '<p class="muted">none since start</p>'
    rows = "".join(
        f'<tr class="rollback-row"><td>{escape(str(r["published_at"] or r["decided_at"]))}</td>'
        f'<td class="l">{escape(str(r["model"]))}</td><td>{escape(str(r["canary"]))}</td>'
        f"<td>{escape(str(r['champion']))}</td><td>{r['from_revision']} → {r['revision']}</td>"
        f'<td class="l">{escape(str(r["alert_id"]))}</td>'
        f'<td class="l">{escape(str(r["error"] or "published"))}</td></tr>'
        for r in reversed(d.rollbacks)
    )
    return held + (
        '<table id="rollbacks"><tr><th>time</th><th>model</th><th>canary</th><th>to champion</th>'
        f"<th>revision</th><th>alert</th><th></th></tr>{rows}</table>"
    )


def _partitions(d: PageData) -> str:
    if not d.partitions:
        return '<p class="muted">no broker offsets read yet (or no groups watched)</p>'
    rows = "".join(
        f'<tr class="partition-row"><td>{escape(p.group)}</td><td class="l">{escape(p.topic)}</td>'
        f"<td>{p.partition}</td><td>{'none' if p.committed is None else p.committed}</td>"
        f"<td>{p.end}</td><td>{p.lag}</td><td>{p.stalled_s:.0f}</td>"
        f'<td class="{"bad" if p.stalled else "ok"}">{"stalled" if p.stalled else "ok"}</td></tr>'
        for p in d.partitions
    )
    return (
        '<table id="partitions"><tr><th>group</th><th>topic</th><th>partition</th>'
        "<th>committed</th><th>end</th><th>lag</th><th>no progress s</th><th></th></tr>"
        f"{rows}</table>"
    )


def render(d: PageData, refresh_s: int = 5) -> str:
    """The whole page."""
    c = d.counts
    active = "".join(_alert(a) for a in d.active) or '<p class="ok">No active alerts.</p>'
    recent = "".join(
        f"<tr><td>{a.emitted_at:%H:%M:%S}</td><td>{escape(a.status)}</td>"
        f'<td>{escape(a.severity)}</td><td class="l">{escape(a.title)}</td></tr>'
        for a in d.recent
    )
    chart = line_chart(
        "p95 latency per stage (ms, log scale)",
        d.latency_series,
        log_y=True,
        chart_id="latency-chart",
    )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{refresh_s}"><title>genwire monitor</title>'
        f"<style>{CSS}</style></head><body><h1>genwire monitor</h1>"
        f'<p class="muted">updated {time.strftime("%H:%M:%S", time.localtime(d.now))} · '
        f"{c.records} records, {c.spans} spans, {c.requests} requests, {c.errors} failed, "
        f"{c.client_errors} rejected (4xx: bad input, limits, keys), "
        f"{c.malformed} malformed records skipped, {d.open_traces} traces open · "
        f'<a href="/traces">traces</a></p>'
        f'<h2 id="alerts">Active alerts ({len(d.active)})</h2>{active}'
        f"<h2>Latency per stage, last {d.window_s:.0f}s</h2>{_latency_table(d)}{chart}"
        f"<h2>SLO burn rates</h2>{_slo_table(d)}"
        f'<h2 id="model-versions">Per model version, last {d.window_s:.0f}s</h2>{_models(d)}'
        f'<h2 id="rollbacks-section">Automatic rollbacks</h2>{_rollbacks(d)}'
        f'<h2 id="drift">Drift</h2>{_drift(d)}'
        f'<h2 id="consumers">Consumer groups (broker offsets)</h2>{_partitions(d)}'
        f"<h2>Recent alert events</h2><table><tr><th>time</th><th>status</th>"
        f"<th>severity</th><th>title</th></tr>{recent}</table></body></html>"
    )
