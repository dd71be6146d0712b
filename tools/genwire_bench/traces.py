"""Per-hop breakdown from the benchmark requests' traces, fetched from Jaeger's query API.

A hop is a stage's process span (time in the stage), the wait of a record in its topic (the
``genwire.kafka.wait_ms`` attribute, and the gap from the ``<topic> publish`` span to the
``<topic> process`` span it parents), the ``triton.generate`` call with its queue and compute
times, and any other span (the gateway's server span, for instance).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from genwire.telemetry import semconv as sc
from genwire_bench.stats import Dist, distribution

PROCESS_SUFFIX = " process"
PUBLISH_SUFFIX = " publish"


@dataclass(frozen=True)
class Span:
    """The parts of a Jaeger span the breakdown needs (times in µs)."""

    span_id: str
    parent_id: str | None
    name: str
    service: str
    start_us: int
    duration_us: int
    tags: Mapping[str, Any]


def parse_trace(data: Mapping[str, Any]) -> list[Span]:
    """Spans of one trace in Jaeger's ``/api/traces/<id>`` JSON (``data[0]``)."""
    processes = data.get("processes", {})
    spans = []
    for raw in data.get("spans", []):
        parent = next(
            (r["spanID"] for r in raw.get("references", []) if r.get("refType") == "CHILD_OF"),
            None,
        )
        service = processes.get(raw.get("processID", ""), {}).get("serviceName", "?")
        spans.append(
            Span(
                span_id=raw["spanID"],
                parent_id=parent,
                name=raw["operationName"],
                service=service,
                start_us=int(raw["startTime"]),
                duration_us=int(raw["duration"]),
                tags={t["key"]: t.get("value") for t in raw.get("tags", [])},
            )
        )
    return spans


@dataclass(frozen=True)
class HopSample:
    """One measured hop of one trace: its name, milliseconds, and offset from the trace start."""

    hop: str
    ms: float
    offset_ms: float


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


CLIENT_BEFORE = "client → first span"
CLIENT_AFTER = "last publish → client"


def hop_samples(
    spans: Sequence[Span], client: tuple[float, float] | None = None
) -> list[HopSample]:
    """Every hop in one trace (streamed requests repeat some hops once per chunk).

    ``client`` is the request's (send, answer) wall-clock time in ms: with it, the hops before
    the first span and after the last published record (to the client's answer) are added.
    """
    if not spans:
        return []
    t0 = min(s.start_us for s in spans)
    out: list[HopSample] = []
    if client is not None:
        sent, answered = client
        publishes = [s.start_us for s in spans if s.name.endswith(PUBLISH_SUFFIX)]
        last = max(publishes) if publishes else max(s.start_us + s.duration_us for s in spans)
        out.append(HopSample(CLIENT_BEFORE, t0 / 1000.0 - sent, sent - t0 / 1000.0))
        out.append(HopSample(CLIENT_AFTER, answered - last / 1000.0, (last - t0) / 1000.0))
    by_id = {s.span_id: s for s in spans}

    def add(hop: str, ms: float | None, span: Span) -> None:
        if ms is not None:
            out.append(HopSample(hop, ms, (span.start_us - t0) / 1000.0))

    for s in spans:
        if s.name.endswith(PUBLISH_SUFFIX):
            continue  # queueing a record takes microseconds; the transit is measured below
        if s.name.endswith(PROCESS_SUFFIX):
            topic = s.name[: -len(PROCESS_SUFFIX)]
            stage = str(s.tags.get(sc.STAGE) or s.service)
            add(f"{topic} wait (attr)", _number(s.tags.get(sc.WAIT_MS)), s)
            parent = by_id.get(s.parent_id or "")
            if parent is not None and parent.name == f"{topic}{PUBLISH_SUFFIX}":
                add(f"{topic} transit", (s.start_us - parent.start_us) / 1000.0, parent)
            add(f"{stage}: process {topic}", s.duration_us / 1000.0, s)
        elif s.name == sc.SPAN_TRITON_GENERATE:
            add(s.name, s.duration_us / 1000.0, s)
            add(f"{s.name} queue", _number(s.tags.get(sc.QUEUE_MS)), s)
            add(f"{s.name} compute", _number(s.tags.get(sc.COMPUTE_MS)), s)
        else:
            add(f"{s.service}: {s.name}", s.duration_us / 1000.0, s)
    return out


def trace_span_ms(spans: Sequence[Span]) -> float | None:
    """Wall time covered by the trace's spans, first start to last end."""
    if not spans:
        return None
    return (max(s.start_us + s.duration_us for s in spans) - min(s.start_us for s in spans)) / 1e3


@dataclass(frozen=True)
class HopStats:
    """One hop over all traces of a target: its distribution and how often it occurs per trace."""

    hop: str
    per_trace: float
    offset_p50_ms: float
    ms: Dist


@dataclass(frozen=True)
class Breakdown:
    """Per-hop statistics of one target's traces, in pipeline order."""

    traces_found: int
    traces_wanted: int
    trace_span: Dist | None
    hops: list[HopStats]


def breakdown(
    traces: Iterable[Sequence[Span]],
    wanted: int,
    clients: Sequence[tuple[float, float] | None] | None = None,
) -> Breakdown:
    """Aggregate the hops of several traces, ordered by their median offset in the trace.

    ``clients`` gives, per trace in the same order, its request's (send, answer) wall times.
    """
    samples: dict[str, list[HopSample]] = {}
    spans_ms: list[float | None] = []
    found = 0
    for i, spans in enumerate(traces):
        if not spans:
            continue
        found += 1
        spans_ms.append(trace_span_ms(spans))
        client = clients[i] if clients is not None and i < len(clients) else None
        for sample in hop_samples(spans, client):
            samples.setdefault(sample.hop, []).append(sample)
    hops = []
    for hop, items in samples.items():
        dist = distribution(i.ms for i in items)
        assert dist is not None
        offset = float(np.median([i.offset_ms for i in items]))
        hops.append(HopStats(hop, len(items) / max(found, 1), offset, dist))
    hops.sort(key=lambda h: h.offset_p50_ms)
    return Breakdown(found, wanted, distribution(spans_ms), hops)


class JaegerClient:
    """Fetches traces by id, waiting for late spans to arrive (export is batched via Kafka)."""

    def __init__(self, base_url: str, timeout_s: float = 5.0) -> None:
        self._client = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout_s)

    async def close(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()

    async def reachable(self) -> bool:
        """True when the query API answers."""
        try:
            return (await self._client.get("/api/services")).status_code == 200
        except httpx.HTTPError:
            return False

    async def fetch(self, trace_id: str) -> list[Span]:
        """The trace's spans so far (empty when Jaeger has none yet)."""
        try:
            response = await self._client.get(f"/api/traces/{trace_id}")
        except httpx.HTTPError:
            return []
        if response.status_code != 200:
            return []
        data = response.json().get("data") or []
        return parse_trace(data[0]) if data else []

    async def fetch_many(
        self,
        trace_ids: Sequence[str],
        *,
        min_spans: int = 2,
        settle_s: float = 3.0,
        deadline_s: float = 30.0,
        parallel: int = 8,
    ) -> dict[str, list[Span]]:
        """Fetch each trace until its span count stays the same for ``settle_s`` (or time is up)."""
        gate = asyncio.Semaphore(parallel)
        end = time.monotonic() + deadline_s

        async def one(trace_id: str) -> tuple[str, list[Span]]:
            best: list[Span] = []
            stable_since = time.monotonic()
            while time.monotonic() < end:
                async with gate:
                    spans = await self.fetch(trace_id)
                if len(spans) > len(best):
                    best, stable_since = spans, time.monotonic()
                elif len(best) >= min_spans and time.monotonic() - stable_since >= settle_s:
                    break
                await asyncio.sleep(1.0)
            return trace_id, best

        return dict(await asyncio.gather(*(one(t) for t in trace_ids)))
