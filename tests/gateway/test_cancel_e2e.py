"""A caller who leaves a stream stops the model, unless it named the request (its retry collects
the result): through the real gateway, Kafka and Triton."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from genwire_chaos.faults import StackControl
from genwire_gateway.client import GenwireClient, StreamChunk
from genwire_gateway.config import GatewaySettings

from genwire.settings import CommonSettings
from genwire.telemetry import semconv as sc

MAX_TOKENS = 200


async def _first_chunk(
    client: GenwireClient,
    seed: int,
    rid: str = "",
    ignore_eos: bool | None = None,
    cancel_reason: str | None = None,
) -> StreamChunk:
    """Stream, hang up after the first chunk (cancelling the request first, with
    ``cancel_reason``, when given); returns that chunk."""
    stream = client.stream(
        "Return a list of",
        request_id=rid,
        max_tokens=MAX_TOKENS,
        seed=seed,
        temperature=1.0,
        ignore_eos=ignore_eos,
    )
    first: StreamChunk | None = None
    async for first in stream:
        if cancel_reason is not None:
            assert await client.cancel(first.request_id, reason=cancel_reason)
        break  # the caller hangs up after the first chunk
    await stream.aclose()  # type: ignore[attr-defined]
    assert first is not None
    return first


async def _first_chunk_then_leave(
    client: GenwireClient, seed: int, rid: str = "", ignore_eos: bool | None = None
) -> str:
    """Stream, hang up after the first chunk; returns the request id (the gateway's if unnamed)."""
    return (await _first_chunk(client, seed, rid, ignore_eos)).request_id


async def _until_a_cancel_lands(client: GenwireClient, within_s: float = 60.0) -> None:
    """One caller at a time leaves until its generation ends cancelled (the chaos tests before
    this file restart the stages and Triton, and the first requests after a restart are slow):
    this test is about cancels stopping generations, not about a stack still warming up. (The
    bursts that made a leaving caller late at concurrency are gone since Triton runs below
    the pipeline's CPU priority: docs/benchmarks.md, Round 8.)"""
    deadline = asyncio.get_running_loop().time() + within_s
    seed = 100
    while True:
        rid = await _first_chunk_then_leave(client, seed, ignore_eos=True)
        info = await client.get_result(rid, wait_s=20)
        if info.result is not None and info.result.finish_reason == "cancelled":
            return
        assert asyncio.get_running_loop().time() < deadline, "no cancel stopped a generation"
        seed += 1


async def test_leaving_a_stream_stops_the_generation_in_the_model(stack: CommonSettings) -> None:
    settings = GatewaySettings()
    async with GenwireClient(f"{settings.grpc_host}:{settings.grpc_port}") as client:
        await _until_a_cancel_lands(client)
        # No end of sequence: each generation runs until its cancel (or max_tokens). With eos
        # most of these prompts ended by themselves within 3–72 tokens, and the two that did
        # not could outrun their cancels right after an inference restart (first chunks then
        # take 250–450 ms, not 100–200).
        leaving = (_first_chunk_then_leave(client, seed, ignore_eos=True) for seed in range(8))
        rids = await asyncio.gather(*leaving)
        infos = [await client.get_result(rid, wait_s=20) for rid in rids]
    results = [info.result for info in infos]
    assert all(r is not None for r in results), [i.status for i in infos]
    reasons = [(r.finish_reason, r.completion_tokens) for r in results if r]
    cancelled = [r for r in results if r is not None and r.finish_reason == "cancelled"]
    # Without cancellation every generation would run on to max_tokens.
    assert len(cancelled) >= len(results) // 2, reasons
    assert all(r.completion_tokens < MAX_TOKENS for r in cancelled), reasons
    assert all(reason in ("cancelled", "length") for reason, _ in reasons), reasons


async def test_leaving_a_named_stream_lets_it_finish_for_the_retry(stack: CommonSettings) -> None:
    settings = GatewaySettings()
    run = uuid.uuid4().hex[:8]
    rids = [f"keep-e2e-{run}-{seed}" for seed in range(3)]
    async with GenwireClient(f"{settings.grpc_host}:{settings.grpc_port}") as client:
        await asyncio.gather(*(_first_chunk_then_leave(client, s, r) for s, r in enumerate(rids)))
        infos = [await client.get_result(rid, wait_s=30) for rid in rids]
    results = [info.result for info in infos]
    assert all(r is not None and r.finish_reason in ("stop", "length") for r in results), results


async def _cancel_reason_in_jaeger(jaeger_url: str, trace_id: str, timeout_s: float = 60.0) -> str:
    """``genwire.cancel.reason`` of the trace's spans, once Jaeger has one carrying it."""
    url = f"{jaeger_url.rstrip('/')}/api/traces/{trace_id}"
    deadline = asyncio.get_running_loop().time() + timeout_s
    async with httpx.AsyncClient(timeout=5.0) as http:
        while asyncio.get_running_loop().time() < deadline:
            response = await http.get(url)
            if response.status_code == 200 and response.json().get("data"):
                for span in response.json()["data"][0]["spans"]:
                    for tag in span.get("tags", []):
                        if tag["key"] == sc.CANCEL_REASON:
                            return str(tag["value"])
            await asyncio.sleep(0.5)
    raise AssertionError(f"no {sc.CANCEL_REASON} in trace {trace_id} after {timeout_s:.0f} s")


async def test_a_cancels_reason_lands_on_the_requests_trace(stack: CommonSettings) -> None:
    """gRPC ``CancelRequest.reason`` is not dropped: the inference instance that stops the
    generation puts it on the request's span, read back here from Jaeger."""
    settings = GatewaySettings()
    why = f"e2e reason {uuid.uuid4().hex[:8]}"
    async with GenwireClient(f"{settings.grpc_host}:{settings.grpc_port}") as client:
        for seed in range(200, 210):  # until one cancel lands before its generation ends
            # Named: leaving the stream cancels nothing, so this cancel is the only one.
            rid = f"cancel-reason-{uuid.uuid4().hex[:12]}"
            first = await _first_chunk(client, seed, rid, ignore_eos=True, cancel_reason=why)
            trace_id = first.trace_id
            info = await client.get_result(rid, wait_s=20)
            if info.result is not None and info.result.finish_reason == "cancelled":
                break
        else:
            raise AssertionError("no cancel stopped a generation in ten tries")
    assert trace_id
    assert await _cancel_reason_in_jaeger(stack.jaeger_ui_url, trace_id) == why


async def test_a_cancel_while_triton_is_down_ends_the_request_during_the_outage(
    stack: CommonSettings,
) -> None:
    """Triton dies mid-generation: inference waits for it (``TRITON_WAIT_S``) before a retry
    that would generate the request whole. A cancel then ends the wait and the request at
    once, with what it streamed, while Triton is still down (before, the cancel stopped nothing
    and the result came only after Triton was back, generated whole)."""
    control = StackControl(stack)
    settings = GatewaySettings()
    async with GenwireClient(f"{settings.grpc_host}:{settings.grpc_port}") as client:
        for seed in range(300, 303):  # until the kill lands before the generation ends
            rid = f"cancel-outage-{uuid.uuid4().hex[:12]}"
            # Named: leaving the stream cancels nothing; the cancel below is the only one.
            await _first_chunk(client, seed, rid, ignore_eos=True)
            await asyncio.to_thread(control.kill_all, "triton")  # down until started again
            try:
                await asyncio.sleep(1.0)  # the call fails; inference waits for Triton
                await client.cancel(rid, reason="outage test")
                info = await client.get_result(rid, wait_s=15)
                still_down = control.state("triton").pid is None
            finally:
                await asyncio.to_thread(control.start, "triton")
                inference = [s for s in control.services() if s.split("-")[0] == "inference"]
                await asyncio.to_thread(control.wait_healthy, inference, 120.0)
                # The tests after this one start on a warm model, as on a stack never
                # restarted.
                await client.generate("Once upon a time", max_tokens=4, timeout_s=120)
            if info.result is None or info.result.finish_reason == "cancelled":
                break  # else it ended before the kill (a fast model): nothing was tested
    assert still_down, "Triton came back before the result: the test proves nothing"
    assert info.result is not None, (info.status, info.error_code, info.error_message)
    assert info.result.finish_reason == "cancelled", info.result
    assert 0 < info.result.completion_tokens < MAX_TOKENS
