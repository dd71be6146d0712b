"""Assembling a request's spans (one trace) into one record: end-to-end time, error, features.

Spans of one request come from several services, in separate Kafka messages, in any order.
A trace is complete once no span of it has arrived for ``idle_s``; the table of open traces is
bounded (the oldest is completed early when full), and late spans of a trace completed
recently are dropped rather than counted as a new request.

A trace is a request only if it holds genwire's root span (``is_entry``): a trace some
framework opened beside ours (FastAPI's own telemetry did, one per HTTP request) is not
counted. Caller-side figures start at the entry time: the gateway's receive (its SERVER span's
start) or, for a Kafka client, the timestamp of its record on ``genwire.requests``.

An ERROR span fails the request unless its code is the caller's (4xx) or a hang-up
(``cancelled``), or a later try of the same operation succeeded (a retry, ``attempt_key``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from genwire.request import CANCELLED, http_status
from genwire.telemetry import semconv as sc
from genwire.topics import Topic
from genwire_monitor.features import numeric
from genwire_monitor.spans import (
    KIND_CLIENT,
    KIND_CONSUMER,
    KIND_PRODUCER,
    AttrValue,
    SpanView,
)

# Attributes gathered per request (the latest span carrying each one wins).
REQUEST_ATTRS: tuple[str, ...] = (
    sc.GEN_AI_INPUT_TOKENS,
    sc.GEN_AI_OUTPUT_TOKENS,
    sc.GEN_AI_FINISH_REASONS,
    sc.MEAN_LOGPROB,
    sc.FILTER_HITS,
    sc.TIME_TO_FIRST_TOKEN_MS,
    sc.FIRST_TOKEN_UNIX_MS,
    sc.TIME_PER_OUTPUT_TOKEN_MS,
    sc.GEN_AI_RESPONSE_MODEL,
    sc.GEN_AI_REQUEST_MODEL,
    sc.MODEL_VERSION,
)


def is_entry(span: SpanView) -> bool:
    """The root span of genwire's trace of a request: the gateway's SERVER span (it carries
    ``genwire.entrypoint``) or, for a Kafka client, the process span of ``genwire.requests``."""
    if sc.ENTRYPOINT in span.attrs:
        return True
    return (
        span.attrs.get(sc.MESSAGING_DESTINATION) == Topic.REQUESTS.value
        and span.attrs.get(sc.MESSAGING_OPERATION_TYPE) == "process"
    )


def entry_ns(span: SpanView) -> int:
    """The earliest time this span knows the request existed: its start, or for a Kafka process
    span the record's timestamp (its start minus ``genwire.kafka.wait_ms``)."""
    wait = span.attrs.get(sc.WAIT_MS)
    if isinstance(wait, int | float) and not isinstance(wait, bool) and wait > 0:
        return span.start_ns - int(wait * 1e6)
    return span.start_ns


SERVER, CLIENT, CALLER_GONE = "server", "client", "cancelled"
"""What an ERROR span says of its request: our failure, the caller's mistake (4xx), or the
caller gave up (neither: no budget spent, not counted as rejected)."""


def failure_kind(span: SpanView) -> str:
    """``SERVER``, ``CLIENT`` or ``CALLER_GONE`` for an ERROR span, by its
    ``genwire.error.code`` (none or unknown: a server failure)."""
    code = span.attrs.get(sc.ERROR_CODE)
    if not isinstance(code, str):
        return SERVER
    if code == CANCELLED:
        return CALLER_GONE
    return CLIENT if http_status(code) < 500 else SERVER


RETRIED_KINDS = frozenset({KIND_CLIENT, KIND_PRODUCER})
"""The spans a handler's retry makes again under the same process span (``triton.generate``,
a publish). Only their good tries are remembered (a few per trace, not one per span of a long
stream): only they can supersede a failed try (and a CONSUMER span after a failed one)."""


def attempt_key(span: SpanView) -> int:
    """Which operation ``span`` is a try of: (service, span name, parent span id, request id),
    hashed (an int per span held while its trace is open, not a tuple: the table holds
    ``max_open`` traces). Retries of a handler run under the same process span
    (``triton.generate`` after a ``RetryableError``, a publish), while each Kafka record's
    process span has its own parent (the publish of that record), so one failing chunk among
    many good ones stays a failure; the prompts of a batch share a parent, not a request id."""
    return hash((span.service, span.name, span.parent_span_id, span.attrs.get(sc.REQUEST_ID)))


@dataclass(slots=True)
class RequestRecord:
    """One request, as its trace tells it."""

    trace_id: bytes
    start_ns: int
    end_ns: int
    error: bool  # a server-side failure: it burns the error budget
    spans: int
    attrs: dict[str, AttrValue] = field(default_factory=dict)
    client_error: bool = False  # the caller's mistake (a 4xx-class code): not our failure
    entry_ns: int = 0  # when the entry point received it (0: not known yet)
    cancelled: bool = False  # the caller gave up (code ``cancelled``): neither kind of error

    @property
    def trace_hex(self) -> str:
        """The trace id as Jaeger shows it."""
        return self.trace_id.hex()

    @property
    def e2e_ms(self) -> float:
        """From the entry time (else the first span's start) to the last span's end."""
        first = min(self.start_ns, self.entry_ns or self.start_ns)
        return max(0, self.end_ns - first) / 1e6

    @property
    def ttft_ms(self) -> float | None:
        """Time to first token as the caller waits it: from the entry time to the first token
        (``genwire.first_token_unix_ms``); else the inference stage's own TTFT; else None."""
        first_token = numeric(self.attrs.get(sc.FIRST_TOKEN_UNIX_MS))
        if first_token is not None:
            entry_ms = min(self.start_ns, self.entry_ns or self.start_ns) / 1e6
            return max(0.0, first_token - entry_ms)
        return numeric(self.attrs.get(sc.TIME_TO_FIRST_TOKEN_MS))  # NaN/inf: no value

    @property
    def model(self) -> str:
        """The model that served it (response model, else requested), or ``unknown``."""
        for key in (sc.GEN_AI_RESPONSE_MODEL, sc.GEN_AI_REQUEST_MODEL):
            value = self.attrs.get(key)
            if isinstance(value, str) and value:
                return value
        return "unknown"

    @property
    def version(self) -> str:
        """``genwire.model.version``, or ``unknown``."""
        value = self.attrs.get(sc.MODEL_VERSION)
        return str(value) if value not in (None, "") else "unknown"


@dataclass(slots=True)
class _Open:
    record: RequestRecord
    stamps: dict[str, int]  # end time of the span each attribute came from
    last_seen: float
    counted: bool  # holds genwire's root span (``is_entry``): a request
    # Per ``attempt_key``: the latest failed try (its start, its kind) and the latest good
    # try's start. Spans arrive in any order (a retry's span may come first), so the verdict
    # waits for the trace to complete.
    failed: dict[int, tuple[int, str]] | None = None  # None: no failure (the usual case)
    good: dict[int, int] = field(default_factory=dict)

    def verdict(self) -> None:
        """Set the record's error flags from the tries that were not tried again with success:
        a failure a later good try of the same operation superseded fails nothing."""
        if not self.failed:
            return
        rec = self.record
        for key, (start_ns, kind) in self.failed.items():
            if self.good.get(key, -1) > start_ns:
                continue  # retried, and the retry succeeded
            if kind == SERVER:
                rec.error = True
            elif kind == CLIENT:
                rec.client_error = True
            else:
                rec.cancelled = True


class TraceAssembler:
    """Open traces keyed by trace id, in least-recently-updated order."""

    def __init__(self, idle_s: float, max_open: int) -> None:
        self.idle_s = idle_s
        self.max_open = max_open
        self._open: OrderedDict[bytes, _Open] = OrderedDict()
        self._done: OrderedDict[bytes, None] = OrderedDict()
        self.late_spans = 0

    def __len__(self) -> int:
        return len(self._open)

    def add(self, span: SpanView, now: float) -> list[RequestRecord]:
        """Take one span; returns records completed early because the table was full."""
        tid = span.trace_id
        entry = self._open.get(tid)
        if entry is None:
            if tid in self._done:
                self.late_spans += 1
                return []
            entry = _Open(RequestRecord(tid, span.start_ns, span.end_ns, False, 0), {}, now, False)
            self._open[tid] = entry
        else:
            self._open.move_to_end(tid)
            entry.last_seen = now
        rec = entry.record
        rec.spans += 1
        rec.start_ns = min(rec.start_ns, span.start_ns)
        rec.end_ns = max(rec.end_ns, span.end_ns)
        if span.error:
            attempt = attempt_key(span)
            failed = entry.failed if entry.failed is not None else {}
            entry.failed = failed
            if failed.get(attempt, (-1, ""))[0] <= span.start_ns:  # the latest failed try decides
                failed[attempt] = (span.start_ns, failure_kind(span))
        elif span.kind in RETRIED_KINDS or (span.kind == KIND_CONSUMER and entry.failed):
            # A CONSUMER span is a try again when its record is redelivered after a failed
            # one (a stage that gave up, or crashed): kept once the trace holds a failure
            # only, which a redelivery comes long after. (Other spans: no key computed.)
            attempt = attempt_key(span)
            if entry.good.get(attempt, -1) < span.start_ns:
                entry.good[attempt] = span.start_ns
        entry.counted = entry.counted or is_entry(span)
        rec.entry_ns = min(rec.entry_ns or rec.start_ns, entry_ns(span))
        if span.attrs:
            for key in REQUEST_ATTRS:
                value = span.attrs.get(key)
                if value is not None and span.end_ns >= entry.stamps.get(key, -1):
                    rec.attrs[key] = value
                    entry.stamps[key] = span.end_ns
        overflow = []
        while len(self._open) > self.max_open:
            overflow.extend(self._finish(next(iter(self._open))))
        return overflow

    def expire(self, now: float) -> list[RequestRecord]:
        """Records of traces idle for ``idle_s`` (oldest first)."""
        out: list[RequestRecord] = []
        while self._open:
            tid, entry = next(iter(self._open.items()))
            if now - entry.last_seen < self.idle_s:
                break
            out.extend(self._finish(tid))
        return out

    def _finish(self, tid: bytes) -> list[RequestRecord]:
        entry = self._open.pop(tid)
        entry.verdict()
        self._done[tid] = None
        while len(self._done) > self.max_open:
            self._done.popitem(last=False)
        return [entry.record] if entry.counted else []
