"""The gateway SIGKILLed while streams are open through it (gRPC GenerateStream and HTTP SSE).

Rule checked (docs/architecture.md): a generation whose gateway died is cancelled — its result on
``genwire.results`` says ``finish_reason: cancelled`` — unless the caller named the request (an
idempotency key: gRPC ``idempotency-key`` metadata, HTTP ``Idempotency-Key``), in which case it
completes, for the caller's retry to collect.

To make "it would have run on" provable, a probe first finds sampling seeds whose generation
runs to ``max_tokens`` (the output is fixed by the seed), and background requests of the same
seeds keep Triton's batch full so each generation lasts longer than the cancel takes (inference
cancels the work of a gateway whose heartbeats stopped for ``origin_timeout_s``, 5 s). All
streams wait for their first chunk, then the gateway is killed and brought back. An unnamed
stream whose generation still ended with ``length`` more than ``cancel_deadline_s`` after the
kill was not cancelled (a failure); one that ended sooner proves nothing (inconclusive); if no
unnamed stream is conclusive, the run fails as inconclusive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka.structs import ConsumerRecord

from genwire.chaos.faults import FaultError, StackControl
from genwire.chaos.kafka_io import TopicTail, new_producer
from genwire.chaos.report import FaultWindow, ScenarioReport
from genwire.events import GenerationResult
from genwire.request import GenerationRequest
from genwire.stack.components import GATEWAY_GRPC_PORT, SERVICE_PORTS
from genwire.topics import Topic

Out = Callable[[str], None]
PROMPT = "Once upon a time"


@dataclass
class Stream:
    """One open stream and what became of it."""

    transport: str
    named: bool
    seed: int
    request_id: str = ""
    first_chunk_at: float | None = None
    finished_before_kill: bool = False
    ended: str = ""
    chunks: int = 0
    started: asyncio.Event = field(default_factory=asyncio.Event)


class _Results:
    def __init__(self) -> None:
        self.by_id: dict[str, list[GenerationResult]] = {}

    def sink(self, record: ConsumerRecord[bytes, bytes], _: float) -> None:
        try:
            result = GenerationResult.model_validate_json(record.value or b"")
        except ValueError:
            return
        self.by_id.setdefault(result.request_id, []).append(result)

    async def wait(self, ids: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(i in self.by_id for i in ids):
                return
            await asyncio.sleep(0.2)


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


async def _background(bootstrap: str, seeds: list[int], count: int, max_tokens: int) -> None:
    """``count`` long Kafka requests (no gateway, so never cancelled) to fill Triton's batch."""
    run = uuid.uuid4().hex[:8]
    producer = new_producer(bootstrap, client_id="genwire-chaos-background")
    await producer.start()
    try:
        for i in range(count):
            key, value = GenerationRequest(
                request_id=f"chaos-gwload-{run}-{i}",
                prompt=PROMPT,
                max_tokens=max_tokens,
                temperature=1.0,
                seed=seeds[i % len(seeds)],
            ).to_kafka()
            await producer.send(Topic.REQUESTS, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def _grpc_stream(stream: Stream, target: str, max_tokens: int, timeout_s: float) -> None:
    import grpc

    from genwire.proto.v1 import generation_pb2 as pb
    from genwire.proto.v1 import generation_pb2_grpc as pb_grpc

    metadata: tuple[tuple[str, str], ...] = ()
    if stream.named:
        stream.request_id = f"chaos-gw-{uuid.uuid4().hex[:12]}"
        metadata = (("idempotency-key", stream.request_id),)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.GenerationServiceStub(channel)  # type: ignore[no-untyped-call]
        request = pb.GenerateRequest(
            prompt=PROMPT, max_tokens=max_tokens, temperature=1.0, seed=stream.seed
        )
        call = stub.GenerateStream(request, timeout=timeout_s, metadata=metadata)
        try:
            async for message in call:
                stream.chunks += 1
                if not stream.request_id:
                    stream.request_id = message.request_id
                if stream.first_chunk_at is None:
                    stream.first_chunk_at = time.monotonic()
                    stream.started.set()
                if message.final:
                    stream.finished_before_kill = True
                    stream.ended = f"final ({message.finish_reason})"
                    return
            stream.ended = "ended without a final chunk"
        except grpc.aio.AioRpcError as exc:
            stream.ended = f"gRPC {exc.code().name}"
        finally:
            stream.started.set()
            call.cancel()


async def _http_stream(stream: Stream, base: str, max_tokens: int, timeout_s: float) -> None:
    import httpx

    headers = {}
    if stream.named:
        stream.request_id = f"chaos-gw-{uuid.uuid4().hex[:12]}"
        headers["Idempotency-Key"] = stream.request_id
    body = {
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 1.0,
        "seed": stream.seed,
        "stream": True,
    }
    try:
        async with (
            httpx.AsyncClient(base_url=base, timeout=timeout_s, trust_env=False) as client,
            client.stream("POST", "/v1/completions", json=body, headers=headers) as response,
        ):
            stream.request_id = stream.request_id or response.headers.get("x-request-id", "")
            if response.status_code != 200:
                stream.ended = f"HTTP {response.status_code}"
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :]
                if data == "[DONE]":
                    stream.finished_before_kill = True
                    stream.ended = "final ([DONE])"
                    return
                stream.chunks += 1
                if stream.first_chunk_at is None:
                    stream.first_chunk_at = time.monotonic()
                    stream.started.set()
                with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
                    if json.loads(data)["choices"][0].get("finish_reason"):
                        stream.finished_before_kill = True
            stream.ended = "ended without [DONE]"
    except httpx.HTTPError as exc:
        stream.ended = f"HTTP error {type(exc).__name__}"
    finally:
        stream.started.set()


async def run_gateway_kill(
    *,
    control: StackControl | None = None,
    streams_per_kind: int = 3,
    max_tokens: int = 240,
    probe_tries: int = 12,
    background: int = 40,
    cancel_deadline_s: float = 15.0,
    result_wait_s: float = 120.0,
    out: Out = print,
) -> ScenarioReport:
    """Open streams (gRPC and HTTP, named and not), SIGKILL the gateway, judge the results."""
    control = control or StackControl(out=out)
    bootstrap = control.bootstrap()
    report = ScenarioReport(
        name="gateway-kill",
        description="gateway SIGKILLed with streams open (gRPC and SSE, with and without "
        "an idempotency key)",
        params={
            "streams_per_kind": streams_per_kind,
            "max_tokens": max_tokens,
            "background": background,
            "cancel_deadline_s": cancel_deadline_s,
        },
    )
    began = time.monotonic()
    down = await asyncio.to_thread(control.preflight)
    if down:
        report.failures.append(f"stack not healthy before the run: {', '.join(down)}")
        return report
    before = await asyncio.to_thread(control.states)
    results = _Results()
    tail = TopicTail(bootstrap, [Topic.RESULTS], results.sink, name="gateway-results")
    await tail.start()
    streams: list[Stream] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        seeds = await _probe_seeds(bootstrap, results, max_tokens, probe_tries, out)
        if not seeds:
            report.failures.append("probe: no generation came back")
            return report
        await _background(bootstrap, seeds, background, max_tokens)
        grpc_target = f"127.0.0.1:{GATEWAY_GRPC_PORT}"
        http_base = f"http://127.0.0.1:{SERVICE_PORTS['gateway']}"
        timeout_s = 120.0
        for transport in ("grpc", "http"):
            for named in (False, True):
                for i in range(streams_per_kind):
                    stream = Stream(transport, named, seeds[i % len(seeds)])
                    streams.append(stream)
                    coro = (
                        _grpc_stream(stream, grpc_target, max_tokens, timeout_s)
                        if transport == "grpc"
                        else _http_stream(stream, http_base, max_tokens, timeout_s)
                    )
                    tasks.append(asyncio.create_task(coro))
        opened = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(s.started.wait() for s in streams)), timeout=30.0
            )
        load_start = opened
        killed_ms = time.time() * 1000.0
        window = FaultWindow("SIGKILL gateway", round(time.monotonic() - load_start, 2))
        report.faults.append(window)
        out(f"gateway-kill: {len(streams)} streams open; SIGKILL gateway")
        try:
            pid = await asyncio.to_thread(control.kill, "gateway")
            took = await asyncio.to_thread(control.recover, "gateway", pid)
            window.end_s = round(time.monotonic() - load_start, 2)
            window.detail = f"back and ready after {took:.1f} s"
        except FaultError as exc:
            report.failures.append(f"fault injection failed: {exc}")
        await asyncio.wait(tasks, timeout=30.0)
        ids = [s.request_id for s in streams if s.request_id]
        await results.wait(ids, result_wait_s)
    finally:
        for task in tasks:
            task.cancel()
        await tail.stop()
    _judge(report, streams, results, max_tokens, killed_ms + cancel_deadline_s * 1000.0)
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


def _judge(
    report: ScenarioReport,
    streams: list[Stream],
    results: _Results,
    max_tokens: int,
    cancel_by_ms: float,
) -> None:
    """Per stream: cancelled (anonymous) or completed (named); ``cancel_by_ms`` is the epoch ms
    by which an anonymous generation must have been cancelled."""
    rows: dict[str, dict[str, int]] = {}
    problems: list[str] = []
    conclusive = 0
    for s in streams:
        kind = f"{s.transport}/{'named' if s.named else 'anonymous'}"
        row = rows.setdefault(kind, {})

        def count(what: str, row: dict[str, int] = row) -> None:
            row[what] = row.get(what, 0) + 1

        if not s.request_id or s.first_chunk_at is None:
            count("never started")
            problems.append(f"{kind} stream never got a first chunk ({s.ended or 'no answer'})")
            continue
        if s.finished_before_kill:
            count("finished before the kill")
            continue
        got = results.by_id.get(s.request_id)
        if not got:
            count("no result")
            problems.append(f"{kind} {s.request_id}: no result on genwire.results")
            continue
        result = got[0]
        if result.error is not None:
            count(f"error {result.error.code}")
            problems.append(f"{kind} {s.request_id}: error result {result.error.code}")
            continue
        reason = result.finish_reason or "?"
        count(reason)
        tokens = result.usage.completion_tokens
        if s.named and reason == "cancelled":
            problems.append(f"{kind} {s.request_id}: cancelled although it had an idempotency key")
        elif not s.named and reason == "cancelled":
            conclusive += 1
        elif not s.named:
            ended = result.timings.inference_end or result.timings.completed or 0.0
            if ended > cancel_by_ms:
                conclusive += 1
                problems.append(
                    f"{kind} {s.request_id}: not cancelled: ran on to {reason} ({tokens} tokens) "
                    f"{(ended - cancel_by_ms) / 1000:.1f} s past the cancel deadline"
                )
            else:
                count("inconclusive")
                report.notes.append(
                    f"{kind} {s.request_id}: ended by itself ({reason}, {tokens} tokens) "
                    "within the cancel deadline"
                )
    anonymous = [s for s in streams if not s.named and not s.finished_before_kill]
    if anonymous and not conclusive:
        problems.append(
            "inconclusive: no unnamed generation outlived the cancel deadline (more --streams "
            "or background load would make them longer)"
        )
    report.failures.extend(problems)
    report.extra = {
        "streams": {
            kind: ", ".join(f"{what} {n}" for what, n in sorted(row.items()))
            for kind, row in rows.items()
        }
    }
    details: list[str] = [
        f"{s.transport}/{'named' if s.named else 'anonymous'} {s.request_id}: {s.ended}"
        for s in streams
        if s.ended
    ]
    report.extra["client side"] = sorted(set(d.split(": ", 1)[1] for d in details))
