"""The trace view's layout and HTML, on a Jaeger ``/api/traces/<id>`` answer built by hand.

``data/jaeger_trace.json`` has the shape of Jaeger's query API (spans in no particular order,
``references`` to parents, µs times, typed tags, ``processes``): one HTTP request through the
four stages, as the pipeline records it.
"""

from __future__ import annotations

import copy
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from genwire_monitor.config import MonitorSettings
from genwire_monitor.tracepage import render_problem, render_search, render_trace
from genwire_monitor.traceview import TraceNotFound, layout, summaries
from pydantic import ValidationError

from genwire.settings import CommonSettings

FIXTURE = Path(__file__).parent / "data" / "jaeger_trace.json"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SERVICES = ["genwire-gateway", "genwire-preprocess", "genwire-inference", "genwire-postprocess"]


@pytest.fixture
def payload() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(FIXTURE.read_text())
    return data


def _span(payload: dict[str, Any], span_id: str) -> dict[str, Any]:
    (span,) = [s for s in payload["data"][0]["spans"] if s["spanID"] == span_id]
    found: dict[str, Any] = span
    return found


def test_rows_follow_the_span_tree_with_offsets_from_the_trace_start(
    payload: dict[str, Any],
) -> None:
    view = layout(payload)
    assert view.trace_id == TRACE_ID
    assert view.duration_ms == pytest.approx(28.0)
    assert [(r.name, r.depth) for r in view.rows] == [
        ("POST /v1/completions", 0),
        ("genwire.requests publish", 1),
        ("genwire.requests process", 2),
        ("genwire.prepared publish", 3),
        ("genwire.prepared process", 4),
        ("triton.generate", 5),  # starts before the sibling publish: listed first
        ("genwire.generations publish", 5),
        ("genwire.generations process", 6),
        ("genwire.results publish", 7),
        ("genwire.results process", 8),
    ]
    preprocess = view.rows[2]
    assert preprocess.service == "genwire-preprocess"
    assert (preprocess.start_ms, preprocess.duration_ms) == (2.5, 1.6)
    assert preprocess.parent_id == "00000000000000a2"
    assert view.services == SERVICES
    assert view.warnings == []
    assert all(r.status == "UNSET" and not r.orphan for r in view.rows)


def test_hops_give_the_kafka_wait_and_handling_time_per_topic(payload: dict[str, Any]) -> None:
    hops = layout(payload).hops
    assert [(h.topic, h.producer, h.consumer) for h in hops] == [
        ("genwire.requests", "genwire-gateway", "genwire-preprocess"),
        ("genwire.prepared", "genwire-preprocess", "genwire-inference"),
        ("genwire.generations", "genwire-inference", "genwire-postprocess"),
        ("genwire.results", "genwire-postprocess", "genwire-gateway"),
    ]
    assert [h.wait_ms for h in hops] == [2.0, 2.5, 2.2, 1.8]
    assert [h.process_ms for h in hops] == [1.6, 20.0, 2.3, 0.1]
    assert [h.published_ms for h in hops] == [0.5, 2.8, 23.5, 25.0]


def test_time_per_stage_uses_the_status_page_rules(payload: dict[str, Any]) -> None:
    stages = {name: (ms, n) for name, ms, n in layout(payload).stage_ms}
    assert [name for name, _, _ in layout(payload).stage_ms][:4] == [
        "gateway",
        "kafka genwire.requests",
        "preprocess",
        "kafka genwire.prepared",
    ]
    assert stages["gateway"][0] == pytest.approx(28.1)  # SERVER span + results process
    assert stages["gateway"][1] == 2
    assert stages["inference"] == (20.0, 1)
    assert stages["triton"] == (18.0, 1)
    assert stages["triton queue"] == (0.75, 1)
    assert stages["triton compute"] == (11.77, 1)
    assert stages["kafka genwire.results"] == (1.8, 1)
    assert "publish" not in " ".join(stages)  # PRODUCER spans are no stage


def test_span_details_split_key_attributes_from_the_rest(payload: dict[str, Any]) -> None:
    rows = {r.name: r for r in layout(payload).rows}
    model = rows["triton.generate"]
    keys = dict(model.key_attrs())
    assert keys["gen_ai.usage.output_tokens"] == 8
    assert keys["genwire.triton.compute_ms"] == 11.77
    assert model.kind == "client"
    assert model.events == [(6.0, {"event": "first_token"})]
    root = rows["POST /v1/completions"]
    assert dict(root.other_attrs()) == {
        "http.request.method": "POST",
        "http.response.status_code": 200,
        "otel.scope.name": "fastapi",
    }
    assert dict(root.key_attrs())["genwire.entrypoint"] == "http"


def test_error_status_comes_from_the_otel_status_tags(payload: dict[str, Any]) -> None:
    tags = _span(payload, "00000000000000a9")["tags"]
    tags.append({"key": "otel.status_code", "type": "string", "value": "ERROR"})
    tags.append({"key": "otel.status_description", "type": "string", "value": "bad token"})
    tags.append({"key": "error", "type": "bool", "value": True})
    rows = {r.name: r for r in layout(payload).rows}
    failed = rows["genwire.generations process"]
    assert failed.error and failed.status_message == "bad token"
    assert "error" not in dict(failed.other_attrs())  # shown as the status instead
    assert not rows["triton.generate"].error
    assert summaries(payload)[0].errors == 1


def test_a_span_whose_parent_has_not_arrived_is_shown_at_the_top(
    payload: dict[str, Any],
) -> None:
    spans = payload["data"][0]["spans"]
    spans.remove(_span(payload, "00000000000000a2"))  # the gateway's publish span is late
    view = layout(payload)
    assert len(view.rows) == 9
    orphan = next(r for r in view.rows if r.name == "genwire.requests process")
    assert orphan.orphan and orphan.depth == 0
    assert any("parent is not in the trace" in w for w in view.warnings)
    assert view.hops[0].producer == "?" and view.hops[0].published_ms is None


def test_a_reference_cycle_cannot_hang_the_layout(payload: dict[str, Any]) -> None:
    root = _span(payload, "00000000000000a1")
    root["references"] = [{"refType": "CHILD_OF", "spanID": "00000000000000ab"}]
    view = layout(payload)
    assert sorted(r.span_id for r in view.rows) == sorted(
        s["spanID"] for s in payload["data"][0]["spans"]
    )


@pytest.mark.parametrize(
    "answer",
    [
        {"data": None, "errors": [{"code": 404, "msg": "trace not found"}]},
        {"data": []},
        {"data": [{"traceID": TRACE_ID, "spans": [], "processes": {}}]},
    ],
)
def test_no_trace_or_no_spans_is_not_found(answer: dict[str, Any]) -> None:
    with pytest.raises(TraceNotFound):
        layout(answer)


def test_search_summaries_are_newest_first_and_flag_health_checks(
    payload: dict[str, Any],
) -> None:
    probe = copy.deepcopy(payload["data"][0])
    probe["traceID"] = "ab" * 16
    probe["spans"] = [copy.deepcopy(_span(payload, "00000000000000a1"))]
    probe["spans"][0].update(operationName="GET /readyz", startTime=1795316300000000)
    payload["data"].append(probe)
    found = summaries(payload)
    assert [t.trace_id for t in found] == ["ab" * 16, TRACE_ID]
    request = found[1]
    assert request.root == "genwire-gateway: POST /v1/completions"
    assert (request.spans, request.duration_ms, request.errors) == (10, 28.0, 0)
    assert request.services == sorted(SERVICES)
    assert found[0].health_check and not request.health_check


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_trace_page_has_a_row_a_bar_and_details_per_span(payload: dict[str, Any]) -> None:
    html = render_trace(layout(payload), api_url=f"http://127.0.0.1:16686/api/traces/{TRACE_ID}")
    parsed = _Collect()
    parsed.feed(html)
    text = " ".join(parsed.text)
    rows = [a for t, a in parsed.tags if t == "tr" and "span-row" in (a.get("class") or "")]
    assert len(rows) == 10
    assert sum(1 for t, _ in parsed.tags if t == "svg") >= 10  # one bar per row, and the axis
    details = [a["id"] for t, a in parsed.tags if t == "details"]
    assert details == [f"span-{r.span_id}" for r in layout(payload).rows]
    links = {a.get("href") for t, a in parsed.tags if t == "a"}
    assert {f"#{d}" for d in details} <= links  # each row links to its details
    for name in [*SERVICES, "triton.generate", "gen_ai.usage.output_tokens", "genwire.results"]:
        assert name in text
    hops = [a for t, a in parsed.tags if t == "tr" and a.get("class") == "hop"]
    assert len(hops) == 4
    assert "<script" not in html and not any(a.get("src") for _, a in parsed.tags)


def test_markup_in_span_data_is_escaped(payload: dict[str, Any]) -> None:
    _span(payload, "00000000000000a7")["operationName"] = "<img src=x onerror=alert(1)>"
    html = render_trace(layout(payload), api_url="http://j/api/traces/x")
    assert "<img" not in html and "&lt;img" in html


def test_search_page_hides_health_checks_unless_asked(payload: dict[str, Any]) -> None:
    probe = copy.deepcopy(payload["data"][0])
    probe["traceID"] = "ab" * 16
    probe["spans"] = [copy.deepcopy(_span(payload, "00000000000000a1"))]
    probe["spans"][0]["operationName"] = "GET /healthz"
    payload["data"].append(probe)
    found = summaries(payload)
    args: dict[str, Any] = {"services": SERVICES, "service": "genwire-gateway", "operation": ""}
    hidden = render_search(found, limit=20, include_health=False, **args)
    assert f'href="/traces/{TRACE_ID}"' in hidden and f"/traces/{'ab' * 16}" not in hidden
    assert "1 health-check trace(s) hidden" in hidden
    shown = render_search(found, limit=20, include_health=True, **args)
    assert f"/traces/{'ab' * 16}" in shown
    assert '<option value="genwire-gateway" selected>' in shown


def test_problem_page_says_what_happened() -> None:
    html = render_problem("Trace not found (yet)", "Jaeger has no trace 12.", refresh_s=3)
    assert "Jaeger has no trace 12." in html and 'content="3"' in html


def test_trace_links_follow_the_one_template(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GENWIRE_TRACE_URL_TEMPLATE", raising=False)
    monkeypatch.delenv("GENWIRE_MONITOR_TRACE_URL_TEMPLATE", raising=False)
    assert CommonSettings().trace_url("ab") == "http://127.0.0.1:8090/traces/ab"
    monkeypatch.setenv("GENWIRE_MONITOR_TRACE_URL_TEMPLATE", "http://j:16686/trace/{trace_id}")
    cfg = MonitorSettings()
    assert cfg.trace_url("ab") == "http://j:16686/trace/ab"
    with pytest.raises(ValidationError, match="trace_id"):
        CommonSettings(trace_url_template="http://j:16686/trace/")
