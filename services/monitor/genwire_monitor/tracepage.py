"""HTML of the trace view: one trace as a waterfall, the search page, and the problem pages.

Like the status page: server-rendered, inline CSS and SVG, no scripts, nothing fetched.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from urllib.parse import quote, urlencode

from genwire_monitor.page import CSS
from genwire_monitor.svgchart import PALETTE
from genwire_monitor.traceview import Attr, SpanRow, TraceSummary, TraceView

BAR_W, BAR_H = 480, 14

TRACE_CSS = """
.wf td{padding:1px 8px;white-space:nowrap}.wf td.name{text-align:left}
.wf tr.err td.name a{color:#d62728;font-weight:bold}.wf svg{display:block}
.dot{display:inline-block;width:9px;height:9px;border-radius:2px;margin-right:5px}
details.span{border-left:4px solid #ddd;margin:.4em 0;padding:.2em .8em}
details.span.err{border-color:#d62728;background:#fff5f5}details.span summary{cursor:pointer}
td.k{text-align:left;font-family:monospace}td.v{text-align:left;font-family:monospace}
tr.other td{color:#777}form label{margin-right:1em}.warn{color:#b35900}
th.l{text-align:left}.wf th,#traces td{white-space:nowrap}#traces td.svc{white-space:normal}
"""
# Service colours: the chart palette without its red, which marks errors here.
COLORS = tuple(c for c in PALETTE if c != "#d62728")


def _doc(title: str, body: str, *, refresh_s: int | None = None) -> str:
    refresh = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">{refresh}'
        f"<title>{escape(title)}</title><style>{CSS}{TRACE_CSS}</style></head><body>"
        f'<p class="muted"><a href="/">monitor</a> · <a href="/traces">traces</a></p>'
        f"{body}</body></html>"
    )


def _when(epoch_us: int) -> str:
    return datetime.fromtimestamp(epoch_us / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _colors(services: list[str]) -> dict[str, str]:
    return {s: COLORS[i % len(COLORS)] for i, s in enumerate(services)}


def _value(v: Attr) -> str:
    return escape(repr(v) if isinstance(v, bool) else str(v))


def _bar(row: SpanRow, total_ms: float, color: str) -> str:
    scale = BAR_W / total_ms if total_ms > 0 else 0.0
    x = row.start_ms * scale
    w = max(1.0, row.duration_ms * scale)
    stroke = ' stroke="#d62728" stroke-width="2"' if row.error else ""
    return (
        f'<svg class="bar" width="{BAR_W}" height="{BAR_H}" viewBox="0 0 {BAR_W} {BAR_H}" '
        f'xmlns="http://www.w3.org/2000/svg"><rect x="0" y="{BAR_H // 2}" width="{BAR_W}" '
        f'height="1" fill="#eee"/><rect x="{min(x, BAR_W - 1):.1f}" y="1" width="{w:.1f}" '
        f'height="{BAR_H - 2}" fill="{color}"{stroke}><title>{escape(row.name)}: '
        f"{row.duration_ms:.3f} ms at +{row.start_ms:.3f} ms</title></rect></svg>"
    )


def _axis(total_ms: float) -> str:
    ticks = "".join(
        f'<line x1="{BAR_W * i / 4:.1f}" x2="{BAR_W * i / 4:.1f}" y1="10" y2="16" stroke="#999"/>'
        f'<text x="{min(BAR_W * i / 4, BAR_W - 2):.1f}" y="9" class="tick" '
        f'text-anchor="{"start" if i == 0 else "end" if i == 4 else "middle"}">'
        f"{total_ms * i / 4:.3g} ms</text>"
        for i in range(5)
    )
    return (
        f'<svg width="{BAR_W}" height="16" viewBox="0 0 {BAR_W} 16" '
        f'xmlns="http://www.w3.org/2000/svg">{ticks}</svg>'
    )


def _waterfall(t: TraceView, colors: dict[str, str]) -> str:
    rows = "".join(
        f'<tr class="span-row{" err" if r.error else ""}" data-span-id="{escape(r.span_id)}">'
        f'<td class="l"><span class="dot" style="background:{colors[r.service]}"></span>'
        f'{escape(r.service)}</td><td class="name" style="padding-left:{8 + 14 * r.depth}px">'
        f'<a href="#span-{escape(r.span_id)}">{escape(r.name)}</a></td>'
        f"<td>{r.start_ms:.3f}</td><td>{r.duration_ms:.3f}</td>"
        f"<td>{_bar(r, t.duration_ms, colors[r.service])}</td></tr>"
        for r in t.rows
    )
    return (
        f'<table class="wf" id="waterfall"><tr><th>service</th><th class="l">span</th>'
        f"<th>start ms</th><th>duration ms</th><th>{_axis(t.duration_ms)}</th></tr>"
        f"{rows}</table>"
    )


def _hops(t: TraceView) -> str:
    if not t.hops:
        return '<p class="muted">no Kafka hops in this trace</p>'
    rows = "".join(
        f'<tr class="hop"><td>{escape(h.topic)}</td><td class="l">{escape(h.producer)} → '
        f"{escape(h.consumer)}</td>"
        f"<td>{'' if h.published_ms is None else f'{h.published_ms:.3f}'}</td>"
        f"<td>{'–' if h.wait_ms is None else f'{h.wait_ms:.3f}'}</td>"
        f"<td>{h.process_ms:.3f}</td></tr>"
        for h in t.hops
    )
    return (
        f'<table id="hops"><tr><th>topic</th><th class="l">from → to</th><th>published at ms'
        f"</th><th>kafka wait ms</th><th>handling ms</th></tr>{rows}</table>"
    )


def _stages(t: TraceView) -> str:
    rows = "".join(
        f'<tr class="stage-row"><td>{escape(stage)}</td><td>{ms:.3f}</td><td>{n}</td></tr>'
        for stage, ms, n in t.stage_ms
    )
    return (
        f'<table id="stages"><tr><th>stage</th><th>ms</th><th>spans</th></tr>'
        f"<tr><td>end to end (whole trace)</td><td>{t.duration_ms:.3f}</td><td>"
        f"{len(t.rows)}</td></tr>{rows}</table>"
    )


def _attr_rows(items: list[tuple[str, Attr]], cls: str = "") -> str:
    return "".join(
        f'<tr class="{cls}"><td class="k">{escape(k)}</td><td class="v">{_value(v)}</td></tr>'
        for k, v in items
    )


def _details(r: SpanRow) -> str:
    status = escape(r.status) + (f": {escape(r.status_message)}" if r.status_message else "")
    events = "".join(
        f"<li>+{ms:.3f} ms: "
        + ", ".join(f"{escape(k)}={_value(v)}" for k, v in sorted(fields.items()))
        + "</li>"
        for ms, fields in r.events
    )
    orphan = '<p class="warn">its parent span is not in the trace (yet)</p>' if r.orphan else ""
    return (
        f'<details class="span{" err" if r.error else ""}" id="span-{escape(r.span_id)}">'
        f"<summary><b>{escape(r.service)}</b> · {escape(r.name)} · {r.duration_ms:.3f} ms "
        f'· <span class="{"bad" if r.error else "ok"}">{status}</span></summary>'
        f'{orphan}<p class="muted">span {escape(r.span_id)} · kind {escape(r.kind)} · '
        f"parent {escape(r.parent_id or 'none')} · starts at +{r.start_ms:.3f} ms</p>"
        f"<table>{_attr_rows(r.key_attrs())}{_attr_rows(r.other_attrs(), 'other')}</table>"
        f"{f'<p>events</p><ul>{events}</ul>' if events else ''}</details>"
    )


def render_trace(t: TraceView, *, api_url: str) -> str:
    """The waterfall page of one trace; ``api_url`` links the raw JSON in Jaeger."""
    colors = _colors(t.services)
    errors = sum(r.error for r in t.rows)
    warnings = "".join(f'<p class="warn">{escape(w)}</p>' for w in t.warnings)
    body = (
        f"<h1>trace {escape(t.trace_id)}</h1>"
        f'<p class="muted">started {_when(t.start_us)} UTC · {t.duration_ms:.3f} ms · '
        f"{len(t.rows)} spans · {len(t.services)} services: "
        f"{escape(', '.join(t.services))} · "
        f'<span class="{"bad" if errors else "ok"}">{errors} in error</span> · '
        f'<a href="{escape(api_url)}">JSON from Jaeger</a></p>{warnings}'
        f"<h2>Time per stage</h2>{_stages(t)}"
        f'<h2 id="hops-title">Kafka hops</h2>{_hops(t)}'
        f"<h2>Waterfall</h2>{_waterfall(t, colors)}"
        f"<h2>Spans</h2>{''.join(_details(r) for r in t.rows)}"
    )
    return _doc(f"trace {t.trace_id}", body)


def render_search(
    found: list[TraceSummary],
    *,
    services: list[str],
    service: str,
    operation: str,
    limit: int,
    include_health: bool,
) -> str:
    """The search form and its results, each linking to the waterfall."""
    options = "".join(
        f'<option value="{escape(s)}"{" selected" if s == service else ""}>{escape(s)}</option>'
        for s in sorted({*services, service})
    )
    shown = [t for t in found if include_health or not t.health_check]
    hidden = len(found) - len(shown)
    rows = (
        "".join(
            f'<tr class="trace-row"><td class="l"><a href="/traces/{quote(t.trace_id)}">'
            f"{escape(t.trace_id)}</a></td><td>{_when(t.start_us)}</td>"
            f'<td class="l">{escape(t.root)}</td><td>{t.duration_ms:.1f}</td><td>{t.spans}</td>'
            f'<td class="l svc">{escape(", ".join(t.services))}</td>'
            f'<td class="{"bad" if t.errors else "ok"}">{t.errors}</td></tr>'
            for t in shown
        )
        or '<tr><td colspan="7" class="muted">no traces found</td></tr>'
    )
    query = urlencode({"service": service, "operation": operation, "limit": limit, "health": 1})
    note = (
        f'<p class="muted">{hidden} health-check trace(s) hidden '
        f'(<a href="/traces?{escape(query)}">show them</a>)</p>'
        if hidden
        else ""
    )
    body = (
        "<h1>traces</h1>"
        '<form method="get" action="/traces">'
        f'<label>service <select name="service">{options}</select></label>'
        f'<label>operation <input name="operation" value="{escape(operation)}" '
        f'placeholder="any"></label>'
        f'<label>limit <input name="limit" type="number" min="1" max="500" value="{limit}">'
        f"</label><label><input type=checkbox name=health value=1"
        f"{' checked' if include_health else ''}> health checks</label>"
        '<button type="submit">search</button></form>'
        f'<p class="muted">last hour, newest first · or open <code>/traces/&lt;trace id&gt;'
        f"</code></p>{note}"
        '<table id="traces"><tr><th>trace</th><th>started (UTC)</th><th class="l">root span'
        '</th><th>ms</th><th>spans</th><th class="l">services</th><th>errors</th></tr>'
        f"{rows}</table>"
    )
    return _doc("traces", body)


def render_problem(title: str, detail: str, *, refresh_s: int | None = None) -> str:
    """A 400/404/502 page that says what happened and what to do."""
    again = f'<p class="muted">This page reloads every {refresh_s} s.</p>' if refresh_s else ""
    return _doc(
        title, f"<h1>{escape(title)}</h1><p>{escape(detail)}</p>{again}", refresh_s=refresh_s
    )
