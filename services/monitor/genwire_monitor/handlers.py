"""The monitor's logic, free of Kafka and HTTP: span batches in, windows, alerts and figures out.

``MonitorEngine.ingest`` takes a batch of ``genwire.spans`` values (OTLP), decodes them
(``spans``), adds each span's latencies to its stage's windows (``stages``, ``windows``) and
SLO counters (``burnrate``), and assembles requests (``traces``) for the request-level series
and drift windows (``drift``); ``tick`` evaluates every rule (``rules``) through the alert book
(``alerting``) and returns the transitions. ``alert_record`` and ``parse_alert`` are the
``genwire.alerts`` record those transitions travel in.

Not thread-safe by design: the app runs every call on one worker thread, so the event loop
never blocks on decoding and nothing needs a lock.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from ddsketch import DDSketch

from genwire.telemetry import semconv as sc
from genwire_monitor import rules
from genwire_monitor.alerting import AlertBook, AlertEvent
from genwire_monitor.burnrate import SLOState, ring_for
from genwire_monitor.config import END_TO_END, TPOT, TTFT, MonitorSettings
from genwire_monitor.drift import DriftMonitor, SeriesResult
from genwire_monitor.histogram import Histogram
from genwire_monitor.history import History
from genwire_monitor.spans import MalformedPayload, SpanView, decode
from genwire_monitor.stages import observations
from genwire_monitor.stalls import Key, PartitionStatus
from genwire_monitor.traces import RequestRecord, TraceAssembler
from genwire_monitor.windows import TimeRing, merged, new_sketch

log = logging.getLogger(__name__)

MAX_STAGES = 64  # distinct stage names tracked; more (unknown services) share "other"
REQUEST_STAGES = {  # request-level series and where their value comes from
    END_TO_END: None,
    TTFT: sc.TIME_TO_FIRST_TOKEN_MS,
    TPOT: sc.TIME_PER_OUTPUT_TOKEN_MS,
}


@dataclass
class Counts:
    """Running totals since start (they also feed /metrics)."""

    records: int = 0
    malformed: int = 0
    spans: int = 0
    requests: int = 0
    errors: int = 0
    client_errors: int = 0
    late_spans: int = 0
    too_old: int = 0


class MonitorEngine:
    """Aggregates spans into per-stage sketches, SLO counts and drift windows."""

    def __init__(self, settings: MonitorSettings) -> None:
        self.settings = settings
        scale = settings.window_scale
        self.page_window_s = settings.scaled(settings.page_window_s)
        self.counts = Counts()
        self.traces = TraceAssembler(settings.trace_idle_s, settings.max_open_traces)
        self._stages: dict[str, TimeRing[DDSketch]] = {}
        self._histograms: dict[str, Histogram] = {}  # the same observations, since start
        self.slos: list[SLOState] = [
            SLOState(
                s.name, s.stage, s.objective, s.threshold_ms, ring_for(settings.burn_rules, scale)
            )
            for s in settings.slos
        ]
        self.error_slo = SLOState(
            settings.error_slo.name,
            END_TO_END,
            settings.error_slo.objective,
            None,
            ring_for(settings.burn_rules, scale),
        )
        self._span_slos: dict[str, list[SLOState]] = {}
        for slo in self.slos:
            if slo.stage not in REQUEST_STAGES:
                self._span_slos.setdefault(slo.stage, []).append(slo)
        self.drift = DriftMonitor(settings.drift, scale)
        self.drift_results: list[SeriesResult] = []
        self.book = AlertBook(settings.trace_url, settings.examples_per_alert)
        self.history = History(settings.history_points)
        self.partitions: dict[Key, PartitionStatus] = {}  # latest broker reading, stall watch

    # ---- ingest -------------------------------------------------------------------------

    def ingest(self, payloads: Iterable[bytes], now: float) -> None:
        """Decode and aggregate Kafka values; malformed ones are counted and skipped."""
        for payload in payloads:
            self.counts.records += 1
            try:
                for span in decode(payload):
                    self._span(span, now)
            except MalformedPayload:
                self.counts.malformed += 1
            except Exception:  # a value no test foresaw must not stop the monitor
                self.counts.malformed += 1
                log.exception("skipping a span record the monitor could not aggregate")

    def _span(self, span: SpanView, now: float) -> None:
        self.counts.spans += 1
        t = span.end_ns / 1e9
        for stage, ms in observations(span):
            self._observe(stage, ms, t, now)
            for slo in self._span_slos.get(stage, ()):
                self._count(slo, t, now, ms <= (slo.threshold_ms or 0), span.trace_id)
        for record in self.traces.add(span, now):
            self._request(record, now)

    def _observe(self, stage: str, ms: float, t: float, now: float) -> None:
        ring = self._stages.get(stage)
        if ring is None:
            if len(self._stages) >= MAX_STAGES:
                stage = "other"
            ring = self._stages.setdefault(
                stage, TimeRing(self.page_window_s / 10, self.page_window_s, new_sketch)
            )
            self._histograms.setdefault(stage, Histogram())
        self._histograms[stage].observe_ms(ms)  # every observation, however old: counters
        sketch = ring.at(t, now)
        if sketch is None:
            self.counts.too_old += 1
        else:
            sketch.add(ms)

    def _count(self, slo: SLOState, t: float, now: float, good: bool, trace: bytes) -> None:
        if slo.ring.add(t, now, good) and not good:
            slo.bad_examples.append(trace.hex())

    def _request(self, rec: RequestRecord, now: float) -> None:
        self.counts.requests += 1
        self.counts.errors += rec.error
        self.counts.client_errors += rec.client_error
        t = rec.end_ns / 1e9
        values: dict[str, float] = {END_TO_END: rec.e2e_ms}  # from the entry time
        for stage, attr in REQUEST_STAGES.items():
            raw = rec.attrs.get(attr) if attr else None
            if isinstance(raw, int | float) and not isinstance(raw, bool):
                values[stage] = float(raw)
        ttft = rec.ttft_ms  # caller-side: from the entry time to the first token
        if ttft is not None:
            values[TTFT] = ttft
        for stage, ms in values.items():
            self._observe(stage, ms, t, now)
        for slo in self.slos:
            if slo.stage in values and slo.threshold_ms is not None:
                self._count(slo, t, now, values[slo.stage] <= slo.threshold_ms, rec.trace_id)
        self._count(self.error_slo, t, now, not rec.error, rec.trace_id)
        self.drift.add(rec, now)

    def complete(self, now: float) -> int:
        """Record every trace idle long enough to be complete; returns how many."""
        records = self.traces.expire(now)
        for record in records:
            self._request(record, now)
        self.counts.late_spans = self.traces.late_spans
        return len(records)

    def set_partitions(self, statuses: Iterable[PartitionStatus]) -> None:
        """Replace the stall watch's verdicts with its latest complete set."""
        self.partitions = {s.key: s for s in statuses}

    # ---- evaluation ---------------------------------------------------------------------

    def tick(self, now: float) -> list[AlertEvent]:
        """Complete idle traces, evaluate every rule, record history; returns transitions."""
        self.complete(now)
        self.drift_results = self.drift.evaluate(now)
        events = rules.evaluate_all(
            self.settings,
            self.book,
            [*self.slos, self.error_slo],
            self.drift_results,
            list(self.partitions.values()),
            self.sketch,
            now,
        )
        self.history.record(now, self.percentiles(now), self.drift_results)
        return events

    def stages(self) -> list[str]:
        """Every stage seen so far."""
        return list(self._stages)

    def sketch(self, stage: str, now: float, window_s: float | None = None) -> DDSketch:
        """Merged sketch of ``stage`` over the page window (or ``window_s``)."""
        ring = self._stages.get(stage)
        if ring is None:
            return new_sketch()
        return merged(ring.window(now, window_s or self.page_window_s))

    def histograms(self) -> dict[str, Histogram]:
        """A copy of every stage's cumulative latency histogram (for /metrics)."""
        return {stage: h.copy() for stage, h in self._histograms.items()}

    def percentiles(self, now: float) -> dict[str, dict[str, float]]:
        """p50/p95/p99 (ms) and count per stage over the page window."""
        out: dict[str, dict[str, float]] = {}
        for stage in self._stages:
            s = self.sketch(stage, now)
            if s.count:
                out[stage] = {
                    "p50": float(s.get_quantile_value(0.5) or 0.0),
                    "p95": float(s.get_quantile_value(0.95) or 0.0),
                    "p99": float(s.get_quantile_value(0.99) or 0.0),
                    "count": float(s.count),
                }
        return out


# ---- the alert record -----------------------------------------------------------------------


def alert_record(event: AlertEvent) -> tuple[bytes, bytes]:
    """The Kafka key (the alert id, so an alert's events stay ordered) and JSON value."""
    return event.id.encode(), event.model_dump_json().encode()


def parse_alert(value: bytes) -> AlertEvent:
    """An alert event read back from ``genwire.alerts``."""
    return AlertEvent.model_validate_json(value)
