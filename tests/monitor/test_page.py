"""The status page: what a person sees, checked in the HTML and in headless Chromium."""

from __future__ import annotations

import random
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest
from genwire_bench.monitor.synth import REFERENCE
from genwire_monitor.handlers import MonitorEngine
from genwire_monitor.page import render, snapshot

from .chromium import dump_dom, screenshot
from .simulate import fast_settings, run

T0 = 1_800_000_000.0


@pytest.fixture(scope="module")
def page_html() -> str:
    """A page after steady traffic and then a latency incident (an alert is firing)."""
    engine = MonitorEngine(fast_settings())
    rng = random.Random(7)
    t, _ = run(engine, REFERENCE, T0, 12.0, 100, rng)
    t, events = run(engine, replace(REFERENCE, slow_ms=1500), t, 2.0, 100, rng)
    assert any(e.status == "firing" for _, e in events)
    return render(snapshot(engine, t))


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_page_shows_stages_alerts_and_plots(page_html: str) -> None:
    parsed = _Collect()
    parsed.feed(page_html)
    text = " ".join(parsed.text)
    for stage in (
        "gateway",
        "preprocess",
        "inference",
        "postprocess",
        "triton queue",
        "kafka genwire.prepared",
        "end_to_end",
    ):
        assert stage in text
    assert "SLO e2e: end_to_end over 1000 ms burning budget" in text
    assert any(t == "polyline" for t, _ in parsed.tags)  # a plotted series
    links = [a.get("href") or "" for t, a in parsed.tags if t == "a"]
    prefix = fast_settings().trace_url("")  # GENWIRE_MONITOR_TRACE_URL_TEMPLATE, or the default
    assert any(h.startswith(prefix) and len(h) == len(prefix) + 32 for h in links)
    assert "/traces" in links  # the trace view's search page
    assert not any(a.get("src") for _, a in parsed.tags)  # nothing fetched: no CDN, no scripts
    assert "<script" not in page_html


def test_chromium_renders_the_page(page_html: str, tmp_path: Path) -> None:
    page = tmp_path / "status.html"
    page.write_text(page_html)
    dom = dump_dom(page.as_uri())
    assert 'class="alert page"' in dom
    assert "burning budget" in dom
    assert "<polyline" in dom and "latency-chart" in dom
    assert "postprocess" in dom
    png = tmp_path / "status.png"
    screenshot(page.as_uri(), str(png))
    assert png.stat().st_size > 10_000  # something was drawn
