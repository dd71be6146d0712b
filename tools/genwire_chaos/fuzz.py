"""Fuzzing ``genwire.requests`` with Hypothesis: malformed requests and raw bytes.

The cases (:mod:`genwire_chaos.fuzz_cases`) are request-schema-shaped JSON with wrong types,
out-of-range values and unknown fields, and raw values (invalid UTF-8, not JSON, empty, null,
larger than preprocess accepts), each with its key present or absent. Every case is produced
with a header naming it (``genwire_chaos_case``), which a dead letter keeps.

Verdict per case: a case whose request id is known (a valid key, or no key and a valid
``request_id`` in the JSON) must get a result or an error result under that id; every case must
get that or a DLQ record carrying a ``genwire_dlq_reason``. The run fails if a service restarted
(pid or restart count changed) or is not ready at the end.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from genwire.request import request_id_hint
from genwire.telemetry import semconv as sc
from genwire.topics import Topic
from genwire_chaos.faults import StackControl
from genwire_chaos.fuzz_cases import CASE_HEADER, FuzzCase, build_case, generate_drafts
from genwire_chaos.kafka_io import TopicTail, new_producer, outcome_of, stuck_partitions
from genwire_chaos.report import ScenarioReport
from genwire_chaos.tracker import Outcome

Out = Callable[[str], None]


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
