"""A tiny, dependency-free line chart rendered as inline SVG (the page loads nothing else)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from html import escape

PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 60, 170, 24, 30

Points = Sequence[tuple[float, float]]


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if hi <= lo:
        return [lo]
    step = (hi - lo) / n
    return [lo + i * step for i in range(n + 1)]


def _label(v: float) -> str:
    return f"{v:.3g}"


def line_chart(
    title: str,
    series: Mapping[str, Points],
    *,
    y_unit: str = "",
    threshold: float | None = None,
    log_y: bool = False,
    chart_id: str = "",
) -> str:
    """One SVG with a line per series, a legend, y ticks and an optional threshold line."""
    pts = [p for s in series.values() for p in s]
    head = (
        f'<svg class="chart" id="{escape(chart_id)}" role="img" width="{WIDTH}" '
        f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title>"
        f'<text x="{LEFT}" y="16" class="chart-title">{escape(title)}</text>'
    )
    if not pts:
        return head + f'<text x="{LEFT}" y="{HEIGHT // 2}">no data yet</text></svg>'

    def fy(v: float) -> float:
        return math.log10(max(v, 1e-3)) if log_y else v

    xs = [p[0] for p in pts]
    ys = [fy(p[1]) for p in pts] + ([fy(threshold)] if threshold is not None else [])
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if not log_y:
        y0 = min(0.0, y0)
    if y1 - y0 < 1e-9:
        y1 = y0 + 1.0
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (pw * (x - x0) / (x1 - x0) if x1 > x0 else pw)

    def py(y: float) -> float:
        return TOP + ph - ph * (y - y0) / (y1 - y0)

    parts = [head]
    parts.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#ccc"/>'
    )
    for tick in _ticks(y0, y1):
        value = 10**tick if log_y else tick
        parts.append(
            f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{py(tick):.1f}" y2="{py(tick):.1f}" '
            f'stroke="#eee"/><text x="{LEFT - 4}" y="{py(tick) + 4:.1f}" text-anchor="end" '
            f'class="tick">{_label(value)}{escape(y_unit)}</text>'
        )
    span = x1 - x0
    parts.append(
        f'<text x="{LEFT}" y="{HEIGHT - 8}" class="tick">'
        f"{time.strftime('%H:%M:%S', time.localtime(x0))}</text>"
        f'<text x="{LEFT + pw}" y="{HEIGHT - 8}" text-anchor="end" class="tick">'
        f"{time.strftime('%H:%M:%S', time.localtime(x1))} ({span:.0f}s shown)</text>"
    )
    if threshold is not None:
        ty = py(fy(threshold))
        parts.append(
            f'<line class="threshold" x1="{LEFT}" x2="{LEFT + pw}" y1="{ty:.1f}" y2="{ty:.1f}" '
            f'stroke="#d62728" stroke-dasharray="4 3"/>'
        )
    for i, (name, points) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{px(x):.1f},{py(fy(y)):.1f}" for x, y in points)
        parts.append(
            f'<polyline class="series" data-series="{escape(name)}" fill="none" '
            f'stroke="{color}" stroke-width="1.5" points="{coords}"/>'
        )
        ly = TOP + 12 + 14 * i
        parts.append(
            f'<rect x="{WIDTH - RIGHT + 10}" y="{ly - 8}" width="10" height="10" '
            f'fill="{color}"/><text x="{WIDTH - RIGHT + 24}" y="{ly + 1}" class="legend">'
            f"{escape(name[:24])}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
