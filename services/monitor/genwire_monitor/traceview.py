"""A trace from Jaeger's query API, laid out for the monitor's trace view.

The native Jaeger is built from the Go module, which has no UI assets, so the monitor shows
traces itself. ``layout`` turns one ``GET /api/traces/<id>`` answer into waterfall rows (span
tree order, offsets from the trace start), a per-hop summary (Kafka wait and handling time per
topic) and the time per stage, using the same stage rules as the status page
(``genwire_monitor.stages``). ``summaries`` reads a search answer. Both are pure: the HTTP
calls to Jaeger are in ``genwire_monitor.jaeger``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from genwire.telemetry import semconv as sc
from genwire_monitor.spans import SpanView
from genwire_monitor.stages import observations, ordered

TRACE_ID = re.compile(r"^[0-9a-fA-F]{1,32}$")
# Attributes listed first in a span's details; the others (http.*, otel.scope.*) follow.
KEY_PREFIXES = ("messaging.", "gen_ai.", "genwire.")
HEALTH_OPERATIONS = frozenset({"GET /readyz", "GET /healthz", "GET /metrics"})
# OTLP SpanKind numbers, as the stage rules read them, from Jaeger's span.kind tag.
KINDS = {"internal": 1, "server": 2, "client": 3, "producer": 4, "consumer": 5}
STATUS_CODE, STATUS_MESSAGE, ERROR_TAG, KIND_TAG = (
    "otel.status_code",
    "otel.status_description",
    "error",
    "span.kind",
)

Attr = str | int | float | bool


class TraceNotFound(LookupError):
    """Jaeger does not have the trace (yet: spans reach it through Kafka within seconds)."""


class JaegerUnavailable(RuntimeError):
    """Jaeger could not be reached, or answered something that is not its query API."""


@dataclass(frozen=True)
class SpanRow:
    """One waterfall row: a span, its place in the tree and its timing (ms from trace start)."""

    span_id: str
    parent_id: str | None
    service: str
    name: str
    kind: str
    start_ms: float
    duration_ms: float
    depth: int
    attrs: dict[str, Attr]
    status: str  # ERROR, OK or UNSET
    status_message: str = ""
    events: list[tuple[float, dict[str, Attr]]] = field(default_factory=list)
    orphan: bool = False  # its parent is not (yet) in the trace

    @property
    def error(self) -> bool:
        """Whether the span ended in status ERROR."""
        return self.status == "ERROR"

    def key_attrs(self) -> list[tuple[str, Attr]]:
        """messaging.*, gen_ai.* and genwire.* attributes, sorted by name."""
        return sorted((k, v) for k, v in self.attrs.items() if k.startswith(KEY_PREFIXES))

    def other_attrs(self) -> list[tuple[str, Attr]]:
        """Every other attribute except the status ones (shown as the status)."""
        skip = {STATUS_CODE, STATUS_MESSAGE, ERROR_TAG, KIND_TAG}
        return sorted(
            (k, v)
            for k, v in self.attrs.items()
            if not k.startswith(KEY_PREFIXES) and k not in skip
        )


@dataclass(frozen=True)
class Hop:
    """One Kafka hop: a record published by one service and processed by the next."""

    topic: str
    producer: str
    consumer: str
    published_ms: float | None  # offset of the publish span; None when it is missing
    wait_ms: float | None  # genwire.kafka.wait_ms: time in the topic before pickup
    process_ms: float  # the consumer's handling time (the process span's duration)


@dataclass(frozen=True)
class TraceView:
    """Everything the trace page shows."""

    trace_id: str
    start_us: int  # epoch microseconds of the earliest span
    duration_ms: float
    rows: list[SpanRow]
    services: list[str]  # in order of first appearance
    hops: list[Hop]
    stage_ms: list[tuple[str, float, int]]  # (stage, total ms, spans), request-path order
    warnings: list[str]


@dataclass(frozen=True)
class TraceSummary:
    """One line of the search results."""

    trace_id: str
    start_us: int
    duration_ms: float
    spans: int
    services: list[str]
    root: str  # "<service>: <operation>" of the earliest parentless span
    errors: int

    @property
    def health_check(self) -> bool:
        """A trace of a health or metrics probe (noise in a list of requests)."""
        return self.root.split(": ", 1)[-1] in HEALTH_OPERATIONS


def _tags(items: Any) -> dict[str, Attr]:
    out: dict[str, Attr] = {}
    for tag in items or ():
        if isinstance(tag, Mapping) and isinstance(tag.get("key"), str):
            value = tag.get("value")
            out[tag["key"]] = value if isinstance(value, str | int | float | bool) else str(value)
    return out


def _parent(span: Mapping[str, Any]) -> str | None:
    for ref in span.get("references") or ():
        if isinstance(ref, Mapping) and ref.get("refType") in ("CHILD_OF", "FOLLOWS_FROM"):
            parent = ref.get("spanID")
            if isinstance(parent, str):
                return parent
    return None


def _status(attrs: Mapping[str, Attr]) -> str:
    code = str(attrs.get(STATUS_CODE, "")).upper()
    if code == "ERROR" or attrs.get(ERROR_TAG) is True:
        return "ERROR"
    return code or "UNSET"


def _first_trace(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    data = payload.get("data") if isinstance(payload, Mapping) else None
    if not data:
        raise TraceNotFound("Jaeger has no such trace")
    if not isinstance(data, list) or not isinstance(data[0], Mapping):
        raise JaegerUnavailable("Jaeger's answer has no trace list under 'data'")
    return data[0]


def _services(trace: Mapping[str, Any]) -> dict[str, str]:
    processes = trace.get("processes") or {}
    return {
        pid: str(p.get("serviceName", "unknown"))
        for pid, p in processes.items()
        if isinstance(p, Mapping)
    }


def _spans(trace: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    spans = [s for s in trace.get("spans") or () if isinstance(s, Mapping) and "spanID" in s]
    if not spans:
        raise TraceNotFound("the trace has no spans yet")
    return spans


def _tree_order(
    spans: Sequence[Mapping[str, Any]],
) -> list[tuple[Mapping[str, Any], int, bool]]:
    """(span, depth, orphan) depth-first, children by start time; cycles cannot loop."""
    by_id = {str(s["spanID"]): s for s in spans}
    children: dict[str, list[Mapping[str, Any]]] = {}
    roots: list[tuple[Mapping[str, Any], bool]] = []
    for span in spans:
        parent = _parent(span)
        if parent is not None and parent in by_id and parent != span["spanID"]:
            children.setdefault(parent, []).append(span)
        else:
            roots.append((span, parent is not None))

    def start(s: Mapping[str, Any]) -> tuple[int, str]:
        return int(s.get("startTime", 0)), str(s.get("operationName", ""))

    roots.sort(key=lambda r: start(r[0]))
    out: list[tuple[Mapping[str, Any], int, bool]] = []
    seen: set[str] = set()
    stack = [(s, 0, orphan) for s, orphan in reversed(roots)]
    while stack:
        span, depth, orphan = stack.pop()
        sid = str(span["spanID"])
        if sid in seen:
            continue
        seen.add(sid)
        out.append((span, depth, orphan))
        kids = sorted(children.get(sid, ()), key=start, reverse=True)
        stack.extend((k, depth + 1, False) for k in kids)
    # Spans only reachable through a reference cycle: shown at the top level.
    out.extend((s, 0, True) for s in spans if str(s["spanID"]) not in seen)
    return out


def layout(payload: Mapping[str, Any]) -> TraceView:
    """Lay out one ``/api/traces/<id>`` answer; raises ``TraceNotFound`` when it is empty."""
    trace = _first_trace(payload)
    service_of = _services(trace)
    spans = _spans(trace)
    t0 = min(int(s.get("startTime", 0)) for s in spans)
    t1 = max(int(s.get("startTime", 0)) + int(s.get("duration", 0)) for s in spans)
    rows: list[SpanRow] = []
    views: list[SpanView] = []
    for span, depth, orphan in _tree_order(spans):
        attrs = _tags(span.get("tags"))
        start = int(span.get("startTime", 0))
        events = [
            ((int(log.get("timestamp", t0)) - t0) / 1000, _tags(log.get("fields")))
            for log in span.get("logs") or ()
            if isinstance(log, Mapping)
        ]
        row = SpanRow(
            span_id=str(span["spanID"]),
            parent_id=_parent(span),
            service=service_of.get(str(span.get("processID")), "unknown"),
            name=str(span.get("operationName", "")),
            kind=str(attrs.get(KIND_TAG, "internal")),
            start_ms=(start - t0) / 1000,
            duration_ms=int(span.get("duration", 0)) / 1000,
            depth=depth,
            attrs=attrs,
            status=_status(attrs),
            status_message=str(attrs.get(STATUS_MESSAGE, "")),
            events=events,
            orphan=orphan,
        )
        rows.append(row)
        views.append(_view(row, start))
    services = list(dict.fromkeys(r.service for r in sorted(rows, key=lambda r: r.start_ms)))
    warnings = [str(w) for w in trace.get("warnings") or ()]
    orphans = sum(r.orphan for r in rows)
    if orphans:
        warnings.append(f"{orphans} span(s) whose parent is not in the trace (yet)")
    return TraceView(
        trace_id=str(trace.get("traceID", "")),
        start_us=t0,
        duration_ms=(t1 - t0) / 1000,
        rows=rows,
        services=services,
        hops=_hops(rows),
        stage_ms=_stage_ms(views),
        warnings=warnings,
    )


def _view(row: SpanRow, start_us: int) -> SpanView:
    """The monitor's own span type, so the stage rules of the status page apply unchanged."""
    return SpanView(
        trace_id=b"",
        parent_span_id=bytes.fromhex(row.parent_id) if row.parent_id else b"",
        name=row.name,
        kind=KINDS.get(row.kind, 0),
        service=row.service,
        start_ns=start_us * 1000,
        end_ns=(start_us + round(row.duration_ms * 1000)) * 1000,
        error=row.error,
        attrs=dict(row.attrs),
    )


def _stage_ms(views: Sequence[SpanView]) -> list[tuple[str, float, int]]:
    totals: dict[str, tuple[float, int]] = {}
    for view in views:
        for stage, ms in observations(view):
            total, count = totals.get(stage, (0.0, 0))
            totals[stage] = (total + ms, count + 1)
    return [(st, *totals[st]) for st in ordered(list(totals))]


def _number(value: Attr | None) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _hops(rows: Sequence[SpanRow]) -> list[Hop]:
    by_id = {r.span_id: r for r in rows}
    hops = []
    for row in sorted(rows, key=lambda r: r.start_ms):
        if row.attrs.get(sc.MESSAGING_OPERATION_TYPE) != "process":
            continue
        publish = by_id.get(row.parent_id or "")
        hops.append(
            Hop(
                topic=str(row.attrs.get(sc.MESSAGING_DESTINATION, "?")),
                producer=publish.service if publish else "?",
                consumer=row.service,
                published_ms=publish.start_ms if publish else None,
                wait_ms=_number(row.attrs.get(sc.WAIT_MS)),
                process_ms=row.duration_ms,
            )
        )
    return hops


def summaries(payload: Mapping[str, Any]) -> list[TraceSummary]:
    """The traces of one ``/api/traces?service=…`` answer, newest first."""
    data = payload.get("data") if isinstance(payload, Mapping) else None
    out = []
    for trace in data or ():
        if not isinstance(trace, Mapping):
            continue
        service_of = _services(trace)
        try:
            spans = _spans(trace)
        except TraceNotFound:
            continue
        t0 = min(int(s.get("startTime", 0)) for s in spans)
        t1 = max(int(s.get("startTime", 0)) + int(s.get("duration", 0)) for s in spans)
        roots = sorted(
            (s for s in spans if _parent(s) is None), key=lambda s: int(s.get("startTime", 0))
        ) or sorted(spans, key=lambda s: int(s.get("startTime", 0)))
        root = roots[0]
        out.append(
            TraceSummary(
                trace_id=str(trace.get("traceID", "")),
                start_us=t0,
                duration_ms=(t1 - t0) / 1000,
                spans=len(spans),
                services=sorted(set(service_of.values())),
                root=f"{service_of.get(str(root.get('processID')), 'unknown')}: "
                f"{root.get('operationName', '')}",
                errors=sum(_status(_tags(s.get("tags"))) == "ERROR" for s in spans),
            )
        )
    return sorted(out, key=lambda t: t.start_us, reverse=True)
