"""Fuzzing ``genwire.requests`` with Hypothesis: malformed requests and raw bytes.

Cases are request-schema-shaped JSON with wrong types, out-of-range values and unknown fields,
and raw values (invalid UTF-8, not JSON, empty, null, larger than preprocess accepts), each with
its key present (a valid id, an invalid one, invalid UTF-8, empty) or absent. Every case is
produced with a header naming it (``genwire_chaos_case``), which a dead letter keeps.

Verdict per case: a case whose request id is known (a valid key, or no key and a valid
``request_id`` in the JSON) must get a result or an error result under that id; every case must
get that or a DLQ record carrying a ``genwire_dlq_reason``. The run fails if a service restarted
(pid or restart count changed) or is not ready at the end.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from genwire.request import REQUEST_ID_PATTERN, request_id_hint
from genwire.telemetry import semconv as sc
from genwire.topics import Topic
from genwire_chaos.faults import StackControl
from genwire_chaos.kafka_io import TopicTail, new_producer, outcome_of, stuck_partitions
from genwire_chaos.report import ScenarioReport
from genwire_chaos.tracker import Outcome

CASE_HEADER = "genwire_chaos_case"
HUGE_SIZES = (1024 * 1024 + 1, 1536 * 1024, 2 * 1024 * 1024)
"""Values past preprocess's default limit (1 MiB), but under the broker's (16 MiB)."""
FIELDS = (
    "schema_version",
    "request_id",
    "model",
    "model_version",
    "prompt",
    "messages",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "stream",
    "metadata",
    "deadline_ms",
    "received_ms",
)
ID_MODES = (
    "key",
    "json",
    "both",
    "both-different",
    "none",
    "empty-key",
    "bad-key",
    "bad-utf8-key",
    "bad-json-id",
)

Out = Callable[[str], None]
_NOW_MS = time.time() * 1000
"""Fixed when imported: strategies must not depend on the clock while Hypothesis draws."""


@dataclass
class FuzzCase:
    """One record to produce, and under which ids its answer may come back."""

    index: int
    kind: str
    id_mode: str
    key: bytes | None
    value: bytes | None
    required_id: str | None = None
    """A valid request id: a result under it is required."""
    match_ids: list[str] = field(default_factory=list)
    """Ids under which a result answers this case (filled in once produced)."""


# -- strategies ------------------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
_json_any = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _field_values(name: str) -> st.SearchStrategy[Any]:
    """Plausible, out-of-range and wrong-typed values of one request field."""
    ints = {
        "max_tokens": (1, 32768),
        "top_k": (0, 1000),
        "seed": (0, 2**63 - 1),
        "schema_version": (1, 1),
    }
    floats = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0)}
    if name in ints:
        lo, hi = ints[name]
        good = st.integers(min_value=lo, max_value=min(hi, 64) if name == "max_tokens" else hi)
        bad = st.one_of(
            st.integers(max_value=lo - 1), st.integers(min_value=hi + 1), st.sampled_from(["5"])
        )
        return st.one_of(good, good, bad, _scalars)
    if name in floats:
        lo_f, hi_f = floats[name]
        return st.one_of(
            st.floats(min_value=lo_f, max_value=hi_f),
            st.floats(min_value=hi_f, exclude_min=True),
            st.floats(max_value=lo_f, exclude_max=True),
            _scalars,
        )
    if name == "prompt":
        return st.one_of(st.text(min_size=1, max_size=60), st.just(""), _scalars)
    if name == "messages":
        message = st.fixed_dictionaries(
            {
                "role": st.sampled_from(["user", "system", "assistant", "tool", ""]),
                "content": st.one_of(st.text(max_size=40), _scalars),
            },
            optional={"name": st.text(max_size=5)},
        )
        return st.one_of(st.lists(message, max_size=3), _json_any)
    if name == "stop":
        return st.one_of(
            st.text(min_size=1, max_size=8),
            st.lists(st.text(max_size=70), max_size=6),
            _scalars,
        )
    if name == "stream":
        return st.one_of(st.booleans(), _scalars)
    if name == "metadata":
        return st.one_of(
            st.dictionaries(st.text(max_size=70), st.text(max_size=20), max_size=20), _json_any
        )
    if name in ("deadline_ms", "received_ms"):
        return st.one_of(
            st.floats(min_value=_NOW_MS + 3_600_000, max_value=_NOW_MS + 7_200_000),
            st.floats(max_value=0.0),
            _scalars,
        )
    if name in ("model", "model_version"):
        return st.one_of(st.just("genwire-gpt"), st.text(max_size=140), st.just("7"), _scalars)
    return _json_any


@st.composite
def json_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A request-shaped JSON object: some known fields (any value), maybe unknown ones."""
    names = draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=8))
    body: dict[str, Any] = {}
    if draw(st.booleans()):  # most carry a usable prompt, so deeper checks are reached
        body["prompt"] = draw(st.sampled_from(["Once upon a time", "Hello", "The robot"]))
        body["max_tokens"] = draw(st.integers(min_value=1, max_value=8))
    for name in names:
        if name != "request_id":
            body[name] = draw(_field_values(name))
    for extra in draw(st.lists(st.text(min_size=1, max_size=12), max_size=2)):
        if extra not in FIELDS:
            body[extra] = draw(_scalars)
    return body


@dataclass(frozen=True)
class Draft:
    """A drawn case before ids are assigned."""

    kind: str
    id_mode: str
    body: dict[str, Any] | None
    raw: bytes | None
    bad_id: str = ""
    bad_key: bytes = b""


_bad_ids = st.one_of(
    st.just(""),
    st.text(min_size=1, max_size=20).filter(lambda s: re.fullmatch(REQUEST_ID_PATTERN, s) is None),
    st.just("x" * 200),
    st.just("-leading-dash"),
    st.just("has space"),
)


@st.composite
def drafts(draw: st.DrawFn) -> Draft:
    """One fuzz case: JSON-shaped (most) or raw bytes, and how its id is given."""
    id_mode = draw(st.sampled_from(ID_MODES))
    bad_id = draw(_bad_ids) if id_mode in ("bad-key", "bad-json-id") else ""
    bad_key = draw(st.binary(min_size=1, max_size=8)) if id_mode == "bad-utf8-key" else b""
    kind = draw(
        st.sampled_from(
            ["json"] * 12 + ["bytes", "text", "invalid-utf8", "empty", "null", "json-array", "huge"]
        )
    )
    if kind == "json":
        return Draft(kind, id_mode, draw(json_requests()), None, bad_id, bad_key)
    raw: bytes | None
    if kind == "bytes":
        raw = draw(st.binary(min_size=1, max_size=200))
    elif kind == "text":
        raw = draw(st.text(min_size=1, max_size=200)).encode()
    elif kind == "invalid-utf8":
        prefix = draw(st.sampled_from([b'{"prompt": "', b"", b'{"prompt": "ok", "x": "']))
        raw = prefix + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"]))
        raw += b'"}' if prefix else b""
    elif kind == "empty":
        raw = b""
    elif kind == "null":
        raw = None
    elif kind == "json-array":
        raw = json.dumps(draw(st.lists(_scalars, max_size=4))).encode()
    else:
        size = draw(st.sampled_from(HUGE_SIZES))
        filler = "a" * size
        raw = json.dumps({"prompt": filler, "max_tokens": 4}).encode()
    return Draft(kind, id_mode, None, raw, bad_id, bad_key)


def generate_drafts(count: int, seed_value: int) -> list[Draft]:
    """``count`` drafts from Hypothesis (generation only: no shrinking, no example database)."""
    found: list[Draft] = []

    @seed(seed_value)
    @settings(
        max_examples=count,
        phases=[Phase.generate],
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(drafts())
    def collect(draft: Draft) -> None:
        found.append(draft)

    collect()
    return found[:count]


def _valid_id(value: str) -> bool:
    return re.fullmatch(REQUEST_ID_PATTERN, value) is not None


def build_case(draft: Draft, index: int, run_id: str) -> FuzzCase:
    """Give a draft its ids and bytes."""
    rid = f"{run_id}-{index:05d}"
    mode = draft.id_mode
    key: bytes | None = None
    json_id: str | None = None
    if mode in ("key", "both"):
        key = rid.encode()
        json_id = rid if mode == "both" else None
    elif mode == "both-different":
        key, json_id = rid.encode(), f"{rid}-json"
    elif mode == "json":
        json_id = rid
    elif mode == "empty-key":
        key, json_id = b"", rid
    elif mode == "bad-key":
        key = f"{draft.bad_id} {rid}".encode()  # the space alone makes it invalid
    elif mode == "bad-utf8-key":
        key = b"\xff" + draft.bad_key + rid.encode()
    elif mode == "bad-json-id":
        json_id = f"{draft.bad_id} {rid}"
    if draft.body is not None:
        body = dict(draft.body)
        if json_id is not None:
            body["request_id"] = json_id
        try:
            value: bytes | None = json.dumps(body).encode()
        except ValueError:  # e.g. a circular structure cannot happen, but stay total
            value = b"{}"
    else:
        value = draft.raw
    if key is None and value is None:
        key = b""  # a record needs one of them: a tombstone with an empty key
    required: str | None = None
    if key:
        key_text = key.decode("utf-8", "replace")
        required = key_text if _valid_id(key_text) and _is_utf8(key) else None
    elif json_id is not None and draft.body is not None and _valid_id(json_id):
        required = json_id
    return FuzzCase(index, draft.kind, mode, key, value, required)


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class _Seen:
    results: dict[str, list[Outcome]] = field(default_factory=dict)
    dlq: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    def result(self, record: ConsumerRecord[bytes, bytes], _: float) -> None:
        rid, outcome = outcome_of(record.value)
        key = (record.key or b"").decode("utf-8", "replace") or rid or ""
        self.results.setdefault(key, []).append(outcome)

    def dead_letter(self, record: ConsumerRecord[bytes, bytes], _: float) -> None:
        headers = {k: v.decode("utf-8", "replace") for k, v in record.headers or ()}
        case = headers.get(CASE_HEADER)
        if case is not None:
            self.dlq.setdefault(case, []).append(headers)


async def run_fuzz(
    cases: int,
    *,
    control: StackControl | None = None,
    seed_value: int = 0,
    rate: float = 40.0,
    wait_s: float = 120.0,
    stuck_wait_s: float = 60.0,
    out: Out = print,
) -> ScenarioReport:
    """Produce ``cases`` fuzz records and check every one was answered or dead-lettered."""
    control = control or StackControl(out=out)
    bootstrap = control.bootstrap()
    report = ScenarioReport(
        name="fuzz",
        description="Hypothesis-generated malformed requests and raw bytes",
        params={"cases": cases, "seed": seed_value, "rate": rate},
    )
    began = time.monotonic()
    down = await asyncio.to_thread(control.preflight)
    if down:
        report.failures.append(f"stack not healthy before the run: {', '.join(down)}")
        return report
    run_id = f"chaos-fuzz-{uuid.uuid4().hex[:8]}"
    drafted = await asyncio.to_thread(generate_drafts, cases, seed_value)
    built = [build_case(d, i, run_id) for i, d in enumerate(drafted)]
    out(f"fuzz: {len(built)} cases generated (seed {seed_value}), run id {run_id}")
    before = await asyncio.to_thread(control.states)
    seen = _Seen()
    results_tail = TopicTail(bootstrap, [Topic.RESULTS], seen.result, name="fuzz-results")
    dlq_tail = TopicTail(bootstrap, [Topic.DLQ], seen.dead_letter, name="fuzz-dlq")
    await results_tail.start()
    await dlq_tail.start()
    producer = new_producer(bootstrap, client_id="genwire-chaos-fuzz")
    await producer.start()
    try:
        t0 = time.monotonic()
        futures = []
        for case in built:
            delay = t0 + case.index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            headers = [(CASE_HEADER, f"{run_id}:{case.index}".encode())]
            futures.append(
                await producer.send(Topic.REQUESTS, case.value, key=case.key, headers=headers)
            )
        metas = await asyncio.gather(*futures, return_exceptions=True)
        unsent = 0
        for case, meta in zip(built, metas, strict=True):
            if isinstance(meta, BaseException):
                unsent += 1
                continue
            hint = request_id_hint(case.value or b"", case.key)
            case.match_ids = [hint] if hint else [f"anon-{meta.partition}-{meta.offset}"]
        out(f"fuzz: {len(built) - unsent} cases produced in {time.monotonic() - t0:.1f} s")
        if unsent:
            report.failures.append(f"{unsent} case(s) could not be produced")
        pending = _unanswered(built, seen, run_id)
        deadline = time.monotonic() + wait_s
        while pending and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            pending = _unanswered(built, seen, run_id)
        try:
            stuck, settle = await stuck_partitions(bootstrap, wait_s=stuck_wait_s)
        except KafkaError as exc:
            report.failures.append(f"could not check for stuck partitions: {exc}")
        else:
            report.stuck = [str(s) for s in stuck]
            report.stuck_settle_s = round(settle, 1)
    finally:
        await producer.stop()
        await results_tail.stop()
        await dlq_tail.stop()
    after = await asyncio.to_thread(control.states, list(before))
    _judge(report, built, seen, run_id, before, after)
    not_ready = await asyncio.to_thread(control.restore)
    if not_ready:
        report.failures.append(f"not ready at the end (restarted): {', '.join(not_ready)}")
    report.duration_s = round(time.monotonic() - began, 1)
    return report


def _answered(case: FuzzCase, seen: _Seen, run_id: str) -> tuple[bool, bool]:
    """(has a result under one of its ids, has a dead letter with a reason)."""
    has_result = any(rid in seen.results for rid in case.match_ids)
    letters = seen.dlq.get(f"{run_id}:{case.index}", [])
    has_letter = any(h.get(sc.HEADER_DLQ_REASON) for h in letters)
    return has_result, has_letter


def _unanswered(cases: list[FuzzCase], seen: _Seen, run_id: str) -> list[FuzzCase]:
    missing = []
    for case in cases:
        has_result, has_letter = _answered(case, seen, run_id)
        lacks_required = case.required_id is not None and case.required_id not in seen.results
        if lacks_required or not (has_result or has_letter):
            missing.append(case)
    return missing


def _internal_errors(cases: list[FuzzCase], seen: _Seen, run_id: str) -> list[str]:
    """Cases answered with the ``internal`` code: every other input deserves a precise one."""
    found: list[str] = []
    for case in cases:
        letters = seen.dlq.get(f"{run_id}:{case.index}", [])
        reasons = [
            h.get(sc.HEADER_DLQ_REASON, "")
            for h in letters
            if h.get(sc.HEADER_DLQ_CODE) == "internal"
        ]
        results = [
            o
            for rid in case.match_ids
            for o in seen.results.get(rid, [])
            if o.error_code == "internal"
        ]
        if reasons or results:
            why = reasons[0] if reasons else "internal error result"
            found.append(f"#{case.index} {case.kind}/{case.id_mode}: {why[:200]}")
    return found


def _judge(
    report: ScenarioReport,
    cases: list[FuzzCase],
    seen: _Seen,
    run_id: str,
    before: dict[str, Any],
    after: dict[str, Any],
) -> None:
    kinds: Counter[str] = Counter(c.kind for c in cases)
    modes: Counter[str] = Counter(c.id_mode for c in cases)
    codes: Counter[str] = Counter()
    dlq_codes: Counter[str] = Counter()
    no_reason = 0
    answered_by_result = 0
    answered_by_dlq = 0
    for case in cases:
        has_result, has_letter = _answered(case, seen, run_id)
        answered_by_result += has_result
        answered_by_dlq += has_letter
        for rid in case.match_ids:
            for outcome in seen.results.get(rid, [])[:1]:
                codes[outcome.error_code or f"ok:{outcome.finish_reason}"] += 1
        for headers in seen.dlq.get(f"{run_id}:{case.index}", [])[:1]:
            dlq_codes[headers.get(sc.HEADER_DLQ_CODE, "?")] += 1
            no_reason += not headers.get(sc.HEADER_DLQ_REASON)
    missing = _unanswered(cases, seen, run_id)
    without_required = [c for c in missing if c.required_id is not None]
    unanswered = [c for c in missing if c.required_id is None]
    if without_required:
        sample = ", ".join(f"#{c.index} {c.kind}/{c.id_mode}" for c in without_required[:8])
        report.failures.append(
            f"{len(without_required)} case(s) with a request id got no result: {sample}"
        )
    if unanswered:
        sample = ", ".join(f"#{c.index} {c.kind}/{c.id_mode}" for c in unanswered[:8])
        report.failures.append(
            f"{len(unanswered)} case(s) got neither a result nor a dead letter: {sample}"
        )
    if no_reason:
        report.failures.append(f"{no_reason} dead letter(s) without a genwire_dlq_reason")
    internal = _internal_errors(cases, seen, run_id)
    if internal:
        report.failures.append(
            f"{len(internal)} case(s) answered 'internal' (a handler bug, not a verdict on the "
            f"input): {'; '.join(internal[:5])}"
        )
    restarted = {
        name: 1
        for name, state in before.items()
        if after.get(name) is None
        or after[name].pid != state.pid
        or (state.restarts is not None and after[name].restarts != state.restarts)
    }
    report.restarts = restarted
    if restarted:
        report.failures.append(f"service(s) restarted during the fuzzing: {', '.join(restarted)}")
    if report.stuck:
        report.failures.append(f"{len(report.stuck)} partition(s) stuck")
    report.extra = {
        "cases": len(cases),
        "answered by a result": answered_by_result,
        "dead-lettered": answered_by_dlq,
        "result codes": dict(sorted(codes.items())),
        "dead-letter codes": dict(sorted(dlq_codes.items())),
        "kinds": dict(sorted(kinds.items())),
        "id modes": dict(sorted(modes.items())),
    }
