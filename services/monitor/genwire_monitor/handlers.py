"""The monitor's logic, free of Kafka and HTTP: span batches in, windows, alerts and figures out.

``MonitorEngine.ingest`` takes a batch of ``genwire.spans`` values (OTLP), decodes them
(``spans``), adds each span's latencies to its stage's windows (``stages``, ``windows``) and
SLO counters (``burnrate``), and assembles requests (``traces``) for the request-level series
and drift windows (``drift``); ``tick`` evaluates every rule (``rules``) through the alert book
(``alerting``) and returns the transitions. ``alert_record`` and ``parse_alert`` are the
``genwire.alerts`` record those transitions travel in; ``state_record`` / ``restore`` are the
compacted alert-state record that lets a restarted monitor rebuild its firing alerts.

Per model version (``ModelSeries``): every SLO and the error SLO have their own counters, the
drift windows and the mean token log-probability are kept per version; at most
``max_models`` versions get a series, everything else (later versions, requests no model
version served: unknown or rejected names) shares one ``other`` series.

Not thread-safe by design: the app runs every call on one worker thread, so the event loop
never blocks on decoding and nothing needs a lock.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from ddsketch import DDSketch

from genwire.feedback import FeedbackEvent
from genwire.policy import SHADOW_ATTRIBUTE, ModelPolicy
from genwire.telemetry import semconv as sc
from genwire_monitor import burnrate, rules
from genwire_monitor.alerting import AlertBook, AlertEvent
from genwire_monitor.burnrate import SLOState, ring_for, sketch_ring_for
from genwire_monitor.config import END_TO_END, OTHER_MODEL, TPOT, TTFT, MonitorSettings
from genwire_monitor.drift import DriftMonitor, SeriesResult
from genwire_monitor.features import numeric
from genwire_monitor.histogram import Histogram
from genwire_monitor.history import History
from genwire_monitor.rollback import Decision, RollbackController
from genwire_monitor.rules import CANARY_PREFIX, CanaryResult
from genwire_monitor.spans import MalformedPayload, SpanView, decode
from genwire_monitor.stages import genwire_stage, observations
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


ModelKey = tuple[str, str]
OTHER_KEY: ModelKey = (OTHER_MODEL, OTHER_MODEL)


@dataclass
class Mean:
    """Sum and count of one time bucket."""

    total: float = 0.0
    n: int = 0


MAX_FEEDBACK_LABELS = 16  # distinct labels counted per series; more count as "other"


@dataclass
class FeedbackTally:
    """Feedback received for one model version since start."""

    count: int = 0
    rated: int = 0
    rating_sum: float = 0.0
    corrections: int = 0
    labels: dict[str, int] = field(default_factory=dict)

    def add(self, rating: float | None, label: str | None, correction: bool) -> None:
        """Count one piece of feedback."""
        self.count += 1
        if rating is not None:
            self.rated += 1
            self.rating_sum += rating
        self.corrections += correction
        if label:
            if label not in self.labels and len(self.labels) >= MAX_FEEDBACK_LABELS:
                label = "other"
            self.labels[label] = self.labels.get(label, 0) + 1

    def figures(self) -> dict[str, object]:
        """JSON-ready: count, mean rating, corrections, labels."""
        return {
            "count": self.count,
            "mean_rating": self.rating_sum / self.rated if self.rated else None,
            "corrections": self.corrections,
            "labels": dict(self.labels),
        }


@dataclass
class ModelSeries:
    """One model version's SLO counters (the latency SLOs, then the error SLO), requests and
    mean token log-probability per time bucket."""

    model: str
    version: str
    slos: list[SLOState]
    logprob: TimeRing[Mean]
    requests: int = 0
    errors: int = 0
    seen: int = field(default=0)  # order of first appearance
    last_seen: float = 0.0  # clock time of its latest request (eviction when idle)
    last_request: float = 0.0  # end time of its latest request (the requests' own clock)
    feedback: FeedbackTally = field(default_factory=FeedbackTally)

    def mean_logprob(self, now: float, window_s: float) -> float | None:
        """Mean of ``genwire.mean_logprob`` over the window (None: no value)."""
        buckets = self.logprob.window(now, window_s)
        n = sum(b.n for b in buckets)
        return sum(b.total for b in buckets) / n if n else None


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
    shadow_spans: int = 0  # spans of shadow copies: not the caller's request, skipped
    feedback: int = 0  # genwire.feedback records read
    feedback_unmatched: int = 0  # about a request no served version is known for
    feedback_malformed: int = 0


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
        self.slos: list[SLOState] = self._new_slos(None, None)
        self.error_slo = self.slos.pop()
        self.models: dict[ModelKey, ModelSeries] = {}
        self._span_slos: dict[str, list[SLOState]] = {}
        for slo in self.slos:
            if slo.stage not in REQUEST_STAGES:
                self._span_slos.setdefault(slo.stage, []).append(slo)
        # Those on a stage genwire does not report (slo_no_data), and the stages a span had.
        self._foreign_slos = [
            slo
            for stage, slos in self._span_slos.items()
            if not genwire_stage(stage)
            for slo in slos
        ]
        self._slo_stages_seen: set[str] = set()
        self.generated = 0  # requests that ended with a generation, neither failed nor refused
        self.drift = DriftMonitor(settings.drift, scale)
        self.drift_results: list[SeriesResult] = []
        self.book = AlertBook(settings.trace_url, settings.examples_per_alert)
        self.history = History(settings.history_points)
        self.partitions: dict[Key, PartitionStatus] = {}  # latest broker reading, stall watch
        self.model_idle_s = settings.scaled(settings.model_idle_s)
        self._vanished: dict[ModelKey, float] = {}  # series with alerts but no series: since
        self.evicted = 0  # model version series evicted since start
        self._order = 0  # first-appearance counter of series
        self.policies: dict[str, ModelPolicy] = {}  # in force (genwire.config), by model
        # genwire.config read to its end? (none followed: nothing to wait for)
        self.policies_current = not settings.config_topic
        self.canary_results: list[CanaryResult] = []
        self.rollback = RollbackController(settings)
        self.due: list[Decision] = []  # rollbacks decided at the last tick, to publish
        self.partitions_read = False  # has the stall watch read the broker since start?

    def _new_slos(self, model: str | None, version: str | None) -> list[SLOState]:
        """Every latency SLO, then the error SLO, for all traffic or one model version."""
        s = self.settings
        scale = s.window_scale
        out = [
            SLOState(
                slo.name,
                slo.stage,
                slo.objective,
                slo.threshold_ms,
                ring_for(s.burn_rules, scale),
                sketch_ring_for(s.burn_rules, scale),
                model,
                version,
            )
            for slo in s.slos
        ]
        out.append(
            SLOState(
                s.error_slo.name,
                END_TO_END,
                s.error_slo.objective,
                None,
                ring_for(s.burn_rules, scale),
                None,
                model,
                version,
            )
        )
        return out

    def model_key(self, rec: RequestRecord) -> ModelKey | None:
        """The series a request counts in: its model version's, ``other``, or None (no model
        named at all: counted in the all-traffic figures only)."""
        if not any(rec.attrs.get(k) for k in (sc.GEN_AI_RESPONSE_MODEL, sc.GEN_AI_REQUEST_MODEL)):
            return None
        served = rec.attrs.get(sc.MODEL_VERSION) not in (None, "")
        key = (rec.model, rec.version)
        if not served or rec.client_error or key == OTHER_KEY:
            return OTHER_KEY  # no model version served it: unknown or rejected names
        if key in self.models or self._named(key):
            return key
        if len(self.models) - (OTHER_KEY in self.models) < self.settings.max_models:
            return key
        return OTHER_KEY

    def _named(self, key: ModelKey) -> bool:
        """Whether a policy in force names this version (champion, canary, alias, shadow): it
        always gets its own series, cap or not — a canary must never be judged inside
        ``other``. Bounded by the policies (written by operators, not by callers)."""
        policy = self.policies.get(key[0])
        return policy is not None and key[1] in policy.versions()

    def _series(self, key: ModelKey) -> ModelSeries:
        series = self.models.get(key)
        if series is None:
            width = self.page_window_s / 10
            series = self.models[key] = ModelSeries(
                key[0],
                key[1],
                self._new_slos(*key),
                TimeRing(width, self.page_window_s, Mean),
                seen=self._order,
            )
            self._order += 1
            self._vanished.pop(key, None)
        return series

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
        if span.attrs.get(SHADOW_ATTRIBUTE) is True:
            # A shadow copy shares its request's trace; its version, latency and errors are
            # not the caller's (its result never reaches one): kept out of every figure.
            self.counts.shadow_spans += 1
            return
        t = span.end_ns / 1e9
        for stage, ms in observations(span):
            self._observe(stage, ms, t, now)
            watching = self._span_slos.get(stage)
            if watching:
                self._slo_stages_seen.add(stage)
                for slo in watching:
                    slo.count(t, now, ms <= (slo.threshold_ms or 0), span.trace_id.hex(), ms)
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

    def _request(self, rec: RequestRecord, now: float) -> None:
        self.counts.requests += 1
        self.counts.errors += rec.error
        self.counts.client_errors += rec.client_error
        if not rec.error and not rec.client_error and sc.GEN_AI_FINISH_REASONS in rec.attrs:
            self.generated += 1  # it passed every stage (not a GetResult, not a refusal)
        t = rec.end_ns / 1e9
        values: dict[str, float] = {END_TO_END: rec.e2e_ms}  # from the entry time
        for stage, attr in REQUEST_STAGES.items():
            value = numeric(rec.attrs.get(attr)) if attr else None
            if value is not None:  # NaN or inf would poison a sketch (inf: OverflowError)
                values[stage] = value
        ttft = rec.ttft_ms  # caller-side: from the entry time to the first token
        if ttft is not None:
            values[TTFT] = ttft
        for stage, ms in values.items():
            self._observe(stage, ms, t, now)
        key = self.model_key(rec)
        series = None if key is None else self._series(key)
        groups = [[*self.slos, self.error_slo]] + ([series.slos] if series else [])
        trace = rec.trace_hex
        for slos in groups:
            for slo in slos:
                if slo.threshold_ms is None:
                    slo.count(t, now, not rec.error, trace, None)
                elif slo.stage in values:
                    ms = values[slo.stage]
                    slo.count(t, now, ms <= slo.threshold_ms, trace, ms)
        if series is not None and key is not None:
            series.last_seen = max(series.last_seen, now)
            series.last_request = max(series.last_request, min(t, now))
            series.requests += 1
            series.errors += rec.error
            logprob = numeric(rec.attrs.get(sc.MEAN_LOGPROB))  # one NaN would poison the mean
            if logprob is not None:
                bucket = series.logprob.at(t, now)
                if bucket is not None:
                    bucket.total += logprob
                    bucket.n += 1
            self.drift.add(rec, now, key)

    def add_feedback(self, values: Iterable[bytes], now: float) -> None:
        """Count ``genwire.feedback`` records under the version that served their request
        (a version with a series); the rest (unknown request ids, versions without a series)
        are counted as unmatched, never as a new series."""
        for value in values:
            try:
                event = FeedbackEvent.model_validate_json(value)
            except ValueError:
                self.counts.feedback_malformed += 1
                continue
            self.counts.feedback += 1
            series = self.models.get((event.model, event.model_version)) if event.known else None
            if series is None:
                self.counts.feedback_unmatched += 1
                continue
            series.feedback.add(event.rating, event.label, event.correction is not None)

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
        self.partitions_read = True

    def all_slos(self) -> list[SLOState]:
        """The all-traffic SLOs (error SLO last), then each model version's."""
        out = [*self.slos, self.error_slo]
        for series in self.models.values():
            out += series.slos
        return out

    def model_figures(self, now: float) -> list[dict[str, object]]:
        """Per model version, over the page window: requests, error ratio, mean token
        log-probability, and per SLO its good ratio and p50/p95/p99 (ms); plus the totals since
        start. Ordered by first appearance (``other`` wherever it appeared)."""
        out: list[dict[str, object]] = []
        w = self.page_window_s
        for series in sorted(self.models.values(), key=lambda m: m.seen):
            slos: dict[str, dict[str, float | None]] = {}
            error_ratio: float | None = None
            for slo in series.slos:
                good, total = slo.ring.window(now, w)
                if slo.threshold_ms is None:
                    error_ratio = (total - good) / total if total else None
                    continue
                sketch = slo.sketch(now, w)
                slos[slo.name] = {
                    "good_ratio": good / total if total else None,
                    "count": float(total),
                    **{
                        f"p{round(q * 100)}_ms": (
                            float(sketch.get_quantile_value(q) or 0.0) if sketch.count else None
                        )
                        for q in (0.5, 0.95, 0.99)
                    },
                }
            _, requests = series.slos[-1].ring.window(now, w)
            policy = self.policies.get(series.model)
            role = ""
            if policy is not None and series.version in policy.versions():
                role = policy.arm_of(series.version)
                if series.version in policy.canaries():
                    role = f"{role} (canary {policy.weights.get(series.version, 0)}%)"
            out.append(
                {
                    "model": series.model,
                    "version": series.version,
                    "role": role,
                    "requests": requests,
                    "error_ratio": error_ratio,
                    "mean_logprob": series.mean_logprob(now, w),
                    "slos": slos,
                    "requests_total": series.requests,
                    "feedback": series.feedback.figures(),
                    "errors_total": series.errors,
                }
            )
        return out

    def restore(self, events: Iterable[AlertEvent]) -> list[str]:
        """Put back the alerts that were firing before a restart; returns their ids."""
        return [e.id for e in events if self.book.restore(e)]

    # ---- evaluation ---------------------------------------------------------------------

    def tick(self, now: float) -> list[AlertEvent]:
        """Complete idle traces, evict idle model versions, evaluate every rule, resolve the
        alerts of series that are gone, record history; returns transitions."""
        self.complete(now)
        self.evict(now)
        self.drift_results = self.drift.evaluate(now)
        # Policies not current (a partial read, a replay, a dead feed): a canary's alerts are
        # held, neither compared, retired nor acted on, until they are.
        current = self.policies_current
        self.canary_results = self._compare_canaries(now) if current else []
        events = rules.evaluate_all(
            self.settings,
            self.book,
            self.all_slos(),
            self.drift_results,
            list(self.partitions.values()) if self.partitions_read else None,
            now,
            self.canary_results,
        )
        events += rules.no_data_events(
            self.settings,
            self.book,
            [(slo, slo.stage in self._slo_stages_seen) for slo in self._foreign_slos],
            self.generated,
            self.stages(),
            now,
        )
        events += self._resolve_vanished(now)
        if current:
            events += self._resolve_retired(now)
            self.due = self.rollback.decide(
                self.policies,
                self.book.active(now),
                now,
                lambda a, since: self._served(a, since, now),
                lambda a, champion, since: self._shared(a, champion, since, now),
            )
        else:
            why = f"{self.settings.config_topic} not read to its end (at start, or again)"
            self.due = self.rollback.pause(self.policies, why)
        self.history.record(now, self.percentiles(now), self.drift_results)
        return events

    def _served(self, alert: AlertEvent, since: float, now: float) -> bool:
        """Whether ``alert``'s version served, since ``since``, requests that bear on it. For a
        burn-rate alert: a rule of its severity fires on its SLO's requests since then alone
        (each window cut at ``since``; by the requests' end times), so neither old failures
        nor a diluted average since a revision days old decide; for the others any request
        since then (the comparison with the champion judges a sample)."""
        series = self.models.get((alert.model or "", alert.model_version or ""))
        if series is None:
            return False
        if alert.kind not in rules.BURN_KINDS:
            return series.last_request >= since
        slo = next((x for x in series.slos if x.name == alert.labels.get("slo")), None)
        if slo is None:
            return False
        s = self.settings
        severity_rules = [r for r in s.burn_rules if r.severity == alert.severity]
        results = burnrate.evaluate(
            slo.ring, slo.objective, severity_rules, now, s.window_scale, s.min_events, since
        )
        return any(r.verdict is burnrate.Verdict.FIRE for r in results)

    def _slo(self, model: str, version: str, name: str) -> SLOState | None:
        series = self.models.get((model, version))
        if series is None:
            return None
        return next((x for x in series.slos if x.name == name), None)

    def _shared(self, alert: AlertEvent, champion: str, since: float, now: float) -> str:
        """Why ``champion`` has the canary burn alert's problem on the same evidence ("": it
        does not, nothing tells, or the alert is no burn alert). Both SLOs of that name are
        judged with every window cut at ``since``: for each rule of the alert's severity that
        fires on the canary, the champion shares it when its short window, with enough
        requests to judge, burns at or above the same factor. A champion with too few requests
        there (a canary with all or most of the traffic) does not hold it."""
        if alert.kind not in rules.BURN_KINDS or alert.model is None:
            return ""
        name = alert.labels.get("slo", "")
        mine = self._slo(alert.model, alert.model_version or "", name)
        theirs = self._slo(alert.model, champion, name)
        if mine is None or theirs is None:
            return ""
        for ca, ch in zip(
            self._since_results(mine, alert.severity, since, now),
            self._since_results(theirs, alert.severity, since, now),
            strict=True,
        ):
            if ca.verdict is not burnrate.Verdict.FIRE:
                continue  # the rule the alert rests on is one that fires
            if ch.short.total >= self.settings.min_events and ch.short_burn >= ch.rule.factor:
                return (
                    f"champion burns {ch.short_burn:.1f}x >= {ch.rule.factor:g}x over the "
                    f"same {ch.short.seconds:.3g}s ({ch.short.bad}/{ch.short.total} bad)"
                )
        return ""

    def _since_results(
        self, slo: SLOState, severity: str, since: float, now: float
    ) -> list[burnrate.BurnResult]:
        s = self.settings
        rules = [r for r in s.burn_rules if r.severity == severity]
        return burnrate.evaluate(
            slo.ring, slo.objective, rules, now, s.window_scale, s.min_events, since
        )

    def set_policies(self, policies: dict[str, ModelPolicy], current: bool = True) -> None:
        """The policies in force now (a copy of the feed's, handed to the engine thread);
        ``current`` False: the feed has not read ``genwire.config`` to its end (at start, or
        again after a failure), so they may be incomplete or outdated."""
        self.policies = policies
        self.policies_current = current

    def _compare_canaries(self, now: float) -> list[CanaryResult]:
        """Each canary of each policy against its champion, both with their own series."""
        s = self.settings
        out: list[CanaryResult] = []
        for model, policy in self.policies.items():
            champion = policy.champion
            if not champion or (model, champion) not in self.models:
                continue
            for version in sorted(policy.canaries()):
                if (model, version) not in self.models:
                    continue
                result = self.drift.compare(
                    (model, champion),
                    (model, version),
                    now,
                    s.canary_min_samples,
                    s.canary_features,
                )
                if result is not None:
                    out.append(CanaryResult(champion, result))
        return out

    def _resolve_retired(self, now: float) -> list[AlertEvent]:
        """A ``canary`` alert of a version that is no longer a canary (rolled back, promoted,
        or its model's policy deleted) resolves: there is nothing left to compare."""
        events: list[AlertEvent] = []
        for aid in self.book.known():
            if not aid.startswith(CANARY_PREFIX):
                continue
            d = self.book.draft(aid)
            if d is None or d.model is None:
                continue
            policy = self.policies.get(d.model)
            if policy is not None and d.model_version in policy.canaries():
                continue
            why = f"version {d.model_version} of {d.model} no longer takes canary traffic" + (
                f" (policy revision {policy.revision})." if policy else " (no policy)."
            )
            ev = self.book.resolve(aid, now, why)
            events += [ev] if ev else []
        return events

    def evict(self, now: float) -> list[ModelKey]:
        """Drop every model version series (SLO counters, log-probabilities, drift windows)
        with no request for ``model_idle_s``: a version no longer served frees its slot, so
        the series stay bounded by ``max_models`` + 1 *at a time*, not since start. Their
        alerts resolve (``_resolve_vanished``)."""
        gone = [k for k, m in self.models.items() if now - m.last_seen >= self.model_idle_s]
        for key in gone:
            self._vanished[key] = self.models.pop(key).last_seen
            self.drift.drop(key)
            self.evicted += 1
        return gone

    def _resolve_vanished(self, now: float) -> list[AlertEvent]:
        """Resolve the per-version alerts whose series is gone: evicted (idle for
        ``model_idle_s``), or rebuilt after a restart for a version that has had no request
        for ``model_idle_s`` since. Without this they would be held (no data) for ever."""
        events: list[AlertEvent] = []
        alive: set[ModelKey] = set()
        for aid in self.book.known():
            d = self.book.draft(aid)
            if d is None or d.model is None or d.model_version is None:
                continue
            key = (d.model, d.model_version)
            if key in self.models:
                continue
            since = self._vanished.setdefault(key, now)  # a restored alert: from now
            if now - since < self.model_idle_s:
                alive.add(key)
                continue
            why = (
                f"no request of {key[0]} {key[1]} for {now - since:.0f}s: the version is no "
                f"longer served and its series was evicted."
            )
            ev = self.book.resolve(aid, now, why)
            events += [ev] if ev else []
        for key in [k for k in self._vanished if k not in alive]:
            del self._vanished[key]  # nothing left to resolve for it (bounded by alert ids)
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


def state_record(event: AlertEvent) -> tuple[bytes, bytes]:
    """The alert-state record of a transition, keyed by the alert id: the topic is compacted,
    so the latest event of every id is kept (firing: rebuilt on start; resolved: not). Alert
    ids are bounded (SLOs x severities x model series, drift features, watched partitions),
    so resolved ones are kept as such rather than deleted by tombstones."""
    return alert_record(event)


def firing_from_state(records: Iterable[tuple[bytes | None, bytes | None]]) -> list[AlertEvent]:
    """The alerts firing according to an alert-state topic read from its start (the latest
    record per key wins; tombstones and unreadable values drop the key)."""
    latest: dict[bytes, bytes | None] = {}
    for key, value in records:
        if key is not None:
            latest[key] = value
    out = []
    for value in latest.values():
        if value is None:
            continue
        try:
            event = parse_alert(value)
        except ValueError:
            log.warning("skipping an unreadable alert-state record")
            continue
        if event.status == "firing":
            out.append(event)
    return out
