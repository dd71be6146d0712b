"""The gateway SIGKILLed with streams open through it (gRPC GenerateStream and HTTP SSE).

Rule checked (docs/architecture.md): the work of a gateway that died is cancelled — its result on
``genwire.results`` says ``finish_reason: cancelled`` — unless the caller named the request (an
idempotency key: gRPC ``idempotency-key`` metadata, HTTP ``Idempotency-Key``), in which case it
completes, for the caller's retry to collect. Inference takes a gateway for dead when its
heartbeats on ``genwire.control`` stopped for ``origin_timeout_s`` (15 s by default).

Two kinds of streams are open when the gateway is killed, each over both transports, named and
not:

- *streaming*: generating, their first chunk received. A generation of the default model lasts
  a few seconds, so most end by themselves before the origin timeout: such an unnamed one is
  noted as inconclusive; one still running ``origin_timeout_s`` + 3 s after the kill was not
  cancelled (a failure).
- *queued*: opened behind a backlog of long background requests (straight to Kafka, never
  cancelled) that keeps Triton busy past the origin timeout, so their generation can only start
  after the gateway is known dead: an unnamed one must end ``cancelled``, a named one must
  complete. Their ids (unknown to the caller before a first chunk) are found by a metadata
  label the gateway carries to the result. The backlog is sized from the model's measured
  throughput with a full batch (``backlog_size``): the fixed 128 it used to be drained 11–14 s
  after the kill on a faster machine and model, before the gateway could be known dead.

A probe first finds sampling seeds whose generation runs to ``max_tokens`` (the output is fixed
by the seed), so "it would have run on" is provable. The run fails if no unnamed stream gave a
conclusive answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
import uuid
from collections.abc import Callable

from aiokafka.structs import ConsumerRecord

from genwire.events import GenerationResult
from genwire.request import GenerationRequest
from genwire.topics import Topic
from genwire_chaos.faults import FaultError, StackControl
from genwire_chaos.gateway_streams import LABEL, PROMPT, Stream, make_streams, open_streams
from genwire_chaos.kafka_io import TopicTail, new_producer
from genwire_chaos.report import FaultWindow, ScenarioReport

Out = Callable[[str], None]


class _Results:
    def __init__(self) -> None:
        self.by_id: dict[str, list[GenerationResult]] = {}
        self.by_label: dict[str, list[GenerationResult]] = {}
        self.published: set[str] = set()  # stream labels seen on genwire.requests

    def sink(self, record: ConsumerRecord[bytes, bytes], _: float) -> None:
        if record.topic == Topic.REQUESTS:
            with contextlib.suppress(ValueError, AttributeError):
                label = (json.loads(record.value or b"").get("metadata") or {}).get(LABEL)
                if label:
                    self.published.add(label)
            return
        try:
            result = GenerationResult.model_validate_json(record.value or b"")
        except ValueError:
            return
        self.by_id.setdefault(result.request_id, []).append(result)
        label = result.metadata.get(LABEL)
        if label:
            self.by_label.setdefault(label, []).append(result)

    def of(self, stream: Stream) -> list[GenerationResult]:
        if stream.request_id and stream.request_id in self.by_id:
            return self.by_id[stream.request_id]
        return self.by_label.get(stream.label, [])

    async def wait(self, ids: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(i in self.by_id for i in ids):
                return
            await asyncio.sleep(0.2)

    async def wait_published(self, streams: list[Stream], timeout_s: float) -> list[Stream]:
        """Wait until the gateway has published every stream's request; those it has not."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(s.label in self.published for s in streams):
                return []
            await asyncio.sleep(0.1)
        return [s for s in streams if s.label not in self.published]

    async def wait_streams(self, streams: list[Stream], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self.of(s) for s in streams):
                return
            await asyncio.sleep(0.5)


async def _probe_seeds(
    bootstrap: str, results: _Results, max_tokens: int, tries: int, out: Out
) -> list[int]:
    """Seeds whose generation of ``PROMPT`` runs to ``max_tokens`` (sorted best first)."""
    run = uuid.uuid4().hex[:8]
    ids = {f"chaos-gwprobe-{run}-{s}": s for s in range(tries)}
    producer = new_producer(bootstrap, client_id="genwire-chaos-probe")
    await producer.start()
    try:
        for rid, s in ids.items():
            key, value = GenerationRequest(
                request_id=rid, prompt=PROMPT, max_tokens=max_tokens, temperature=1.0, seed=s
            ).to_kafka()
            await producer.send_and_wait(Topic.REQUESTS, value, key=key)
    finally:
        await producer.stop()
    await results.wait(list(ids), 120.0)
    lengths: list[tuple[int, int]] = []
    for rid, s in ids.items():
        got = results.by_id.get(rid)
        if got and got[0].error is None:
            lengths.append((got[0].usage.completion_tokens, s))
    lengths.sort(reverse=True)
    full = [s for n, s in lengths if n >= max_tokens]
    out(f"gateway-kill: probe: {len(full)} of {tries} seeds run to {max_tokens} tokens")
    return full or [s for _, s in lengths[:1]]


async def _backlog(
    bootstrap: str, seeds: list[int], count: int, max_tokens: int, tag: str = "gwload"
) -> list[str]:
    """``count`` long Kafka requests (no gateway, so never cancelled) that keep Triton busy;
    their ids."""
    run = uuid.uuid4().hex[:8]
    ids = [f"chaos-{tag}-{run}-{i}" for i in range(count)]
    producer = new_producer(bootstrap, client_id="genwire-chaos-backlog")
    await producer.start()
    try:
        for i, rid in enumerate(ids):
            key, value = GenerationRequest(
                request_id=rid,
                prompt=PROMPT,
                max_tokens=max_tokens,
                temperature=1.0,
                seed=seeds[i % len(seeds)],
            ).to_kafka()
            await producer.send(Topic.REQUESTS, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()
    return ids


async def _calibrate(
    bootstrap: str, results: _Results, seeds: list[int], max_tokens: int, count: int
) -> tuple[float, float]:
    """Tokens per second the stack generates with ``count`` long requests at once (more than
    a decode batch holds: what drains a backlog), and the tokens of one such request."""
    ids = await _backlog(bootstrap, seeds, count, max_tokens, tag="gwcal")
    await results.wait(ids, 120.0)
    done = [got[0] for i in ids if (got := results.by_id.get(i)) and got[0].error is None]
    return generation_rate(done)


def generation_rate(done: list[GenerationResult]) -> tuple[float, float]:
    """Tokens per second over the generating window of ``done`` (first inference start to last
    inference end, by the results' own timings: no producer start or pipeline hops in it) and
    their mean tokens per request; (0, 0) when nothing can be measured."""
    spans = [
        (r.timings.inference_start, r.timings.inference_end, r.usage.completion_tokens)
        for r in done
        if r.timings.inference_start is not None and r.timings.inference_end is not None
    ]
    if not spans:
        return 0.0, 0.0
    window_s = (max(e for _, e, _ in spans) - min(s for s, _, _ in spans)) / 1000.0
    tokens = sum(n for _, _, n in spans)
    return (tokens / window_s if window_s > 0 else 0.0), tokens / len(spans)


def backlog_size(
    tokens_per_s: float,
    hold_s: float,
    tokens_per_request: float,
    *,
    factor: float = 1.5,
    least: int = 128,
    most: int = 2_000,
) -> int:
    """Requests of ``tokens_per_request`` that keep a stack generating ``tokens_per_s`` busy
    for ``factor`` × ``hold_s`` (at least ``least``, the old fixed count; at most ``most``, so a
    mismeasured rate cannot queue an hour of work)."""
    work = factor * tokens_per_s * hold_s
    wanted = math.ceil(work / tokens_per_request) if tokens_per_request > 0 else 0
    return max(least, min(most, wanted))


async def run_gateway_kill(
    *,
    control: StackControl | None = None,
    streams_per_kind: int = 3,
    queued_per_kind: int = 2,
    max_tokens: int = 240,
    probe_tries: int = 12,
    backlog: int | None = None,
    calibration: int = 64,
    origin_timeout_s: float | None = None,
    result_wait_s: float = 150.0,
    out: Out = print,
) -> ScenarioReport:
    """Open streams (gRPC and HTTP, named and not), SIGKILL the gateway, judge the results.

    ``backlog`` None: sized by ``backlog_size`` from the rate ``calibration`` long requests
    measure (``generation_rate``), to hold Triton past the origin timeout, the judging margin
    and ~10 s for the gateway to publish the queued requests."""
    control = control or StackControl(out=out)
    bootstrap = control.bootstrap()
    if origin_timeout_s is None:
        origin_timeout_s = _origin_timeout()
    deadline_s = origin_timeout_s + 3.0  # an unnamed generation running past it: not cancelled
    report = ScenarioReport(
        name="gateway-kill",
        description="gateway SIGKILLed with streams open (gRPC and SSE, with and without "
        "an idempotency key; generating and queued)",
        params={
            "streams_per_kind": streams_per_kind,
            "queued_per_kind": queued_per_kind,
            "max_tokens": max_tokens,
            "backlog": backlog,
            "origin_timeout_s": origin_timeout_s,
        },
    )
    began = time.monotonic()
    down = await asyncio.to_thread(control.preflight)
    if down:
        report.failures.append(f"stack not healthy before the run: {', '.join(down)}")
        return report
    before = await asyncio.to_thread(control.states)
    results = _Results()
    tail = TopicTail(
        bootstrap, [Topic.RESULTS, Topic.REQUESTS], results.sink, name="gateway-results"
    )
    await tail.start()
    streams: list[Stream] = []
    tasks: list[asyncio.Task[None]] = []
    killed_ms = 0.0
    try:
        seeds = await _probe_seeds(bootstrap, results, max_tokens, probe_tries, out)
        if not seeds:
            report.failures.append("probe: no generation came back")
            return report
        if backlog is None:
            rate, each = await _calibrate(bootstrap, results, seeds, max_tokens, calibration)
            backlog = backlog_size(rate, deadline_s + 10.0, each)
            report.params |= {"tokens_per_s": round(rate), "backlog": backlog}
            out(
                f"gateway-kill: {rate:,.0f} tokens/s generating {calibration} at once "
                f"({each:.0f} tokens each): backlog {backlog}"
            )
        opened = time.monotonic()
        streaming = make_streams("streaming", streams_per_kind, seeds)
        tasks += open_streams(streaming, max_tokens)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30.0):
                await asyncio.gather(*(s.started.wait() for s in streaming))
        await _backlog(bootstrap, seeds, backlog, max_tokens)
        queued = make_streams("queued", queued_per_kind, seeds)
        tasks += open_streams(queued, max_tokens)
        streams = streaming + queued
        # Kill only once the gateway has published every queued request: on two saturated
        # cores that took more than the 2 s this once waited, and a request the gateway never
        # published is one its caller saw fail (no result is owed), not this rule's subject.
        unpublished = await results.wait_published(queued, 60.0)
        for s in unpublished:
            report.failures.append(f"{s.kind} {s.label}: not published by the gateway in 60 s")
        killed_ms = time.time() * 1000.0
        window = FaultWindow("SIGKILL gateway", round(time.monotonic() - opened, 2))
        report.faults.append(window)
        out(
            f"gateway-kill: {len(streaming)} streams generating, {len(queued)} queued behind "
            f"{backlog} requests; SIGKILL gateway"
        )
        try:
            pid = await asyncio.to_thread(control.kill, "gateway")
            took = await asyncio.to_thread(control.recover, "gateway", pid)
            window.end_s = round(time.monotonic() - opened, 2)
            window.detail = f"back and ready after {took:.1f} s"
        except FaultError as exc:
            report.failures.append(f"fault injection failed: {exc}")
        await asyncio.wait(tasks, timeout=30.0)
        await results.wait_streams(streams, result_wait_s)
    finally:
        for task in tasks:
            task.cancel()
        await tail.stop()
    _judge(report, streams, results, killed_ms, deadline_s)
    after = await asyncio.to_thread(control.states, list(before))
    changed = [
        n
        for n, s in before.items()
        if n != "gateway" and (after[n].pid != s.pid or after[n].restarts != s.restarts)
    ]
    if changed:
        report.failures.append(f"service(s) restarted without being faulted: {', '.join(changed)}")
    try:
        not_ready = await asyncio.to_thread(control.restore)
    except FaultError as exc:
        not_ready = [f"could not restore: {exc}"]
    if not_ready:
        report.failures.append(f"not ready at the end (restarted): {', '.join(not_ready)}")
    report.duration_s = round(time.monotonic() - began, 1)
    return report


def _origin_timeout(default: float = 15.0) -> float:
    """Inference's ``origin_timeout_s`` as this environment configures it (read from its
    variable, not by importing the service: tooling imports no service)."""
    try:
        return float(os.environ.get("GENWIRE_INFERENCE_ORIGIN_TIMEOUT_S", default))
    except ValueError:
        return default


def _judge(
    report: ScenarioReport,
    streams: list[Stream],
    results: _Results,
    killed_ms: float,
    deadline_s: float,
) -> None:
    """Per stream: cancelled (anonymous) or completed (named). An anonymous generation still
    running ``deadline_s`` after the kill (epoch ms ``killed_ms``) was not cancelled."""
    rows: dict[str, dict[str, int]] = {}
    after_kill: dict[str, list[float]] = {}
    problems: list[str] = []
    conclusive = 0
    for s in streams:
        row = rows.setdefault(s.kind, {})

        def count(what: str, row: dict[str, int] = row) -> None:
            row[what] = row.get(what, 0) + 1

        if s.phase == "streaming" and s.first_chunk_at is None:
            count("never started")
            problems.append(f"{s.kind} stream never got a first chunk ({s.ended or 'no answer'})")
            continue
        if s.finished_before_kill:
            count("finished before the kill")
            continue
        got = results.of(s)
        if not got:
            count("no result")
            problems.append(f"{s.kind} {s.request_id or s.label}: no result on genwire.results")
            continue
        result = got[0]
        rid = result.request_id
        if result.error is not None:
            count(f"error {result.error.code}")
            problems.append(f"{s.kind} {rid}: error result {result.error.code}")
            continue
        reason = result.finish_reason or "?"
        tokens = result.usage.completion_tokens
        ended = result.timings.inference_end or result.timings.completed or killed_ms
        since_kill = round((ended - killed_ms) / 1000.0, 1)
        after_kill.setdefault(f"{s.kind} {reason}", []).append(since_kill)
        if s.named:
            count(reason)
            if reason == "cancelled":
                problems.append(f"{s.kind} {rid}: cancelled although it had an idempotency key")
        elif reason == "cancelled":
            count(reason)
            conclusive += 1
        elif since_kill > deadline_s:
            count(f"not cancelled ({reason})")
            conclusive += 1
            problems.append(
                f"{s.kind} {rid}: not cancelled: ran on to {reason} ({tokens} tokens), "
                f"ending {since_kill:.1f} s after the kill"
            )
        else:
            count(f"inconclusive ({reason} within {deadline_s:g} s)")
            report.notes.append(
                f"{s.kind} {rid}: ended by itself ({reason}, {tokens} tokens) "
                f"{since_kill:.1f} s after the kill, before the gateway could be known dead"
            )
    anonymous = [s for s in streams if not s.named and not s.finished_before_kill]
    if anonymous and not conclusive:
        problems.append(
            "inconclusive: no unnamed generation outlived the origin timeout (a longer "
            "backlog would queue them longer)"
        )
    report.failures.extend(problems)
    report.extra = {
        "streams": {
            kind: ", ".join(f"{what} {n}" for what, n in sorted(row.items()))
            for kind, row in rows.items()
        },
        "generation ended, s after the kill": {
            k: ", ".join(f"{v:g}" for v in sorted(vs)) for k, vs in sorted(after_kill.items())
        },
        "client side": sorted({s.ended for s in streams if s.ended}),
    }
