"""``genwire bench --unsampled`` against the real stack: the services honour an unsampled
trace context and record no spans, so the run measures the pipeline without tracing's cost."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from genwire_bench.drivers.base import new_trace
from genwire_bench.drivers.kafka import KafkaDriver
from genwire_bench.records import BenchRequest, SamplingSpec

from genwire.settings import CommonSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def _trace_spans(http: httpx.AsyncClient, trace_id: str) -> int:
    response = await http.get(f"/api/traces/{trace_id}")
    if response.status_code != 200 or not response.json().get("data"):
        return 0
    return len(response.json()["data"][0]["spans"])


async def test_an_unsampled_request_leaves_no_span_and_a_sampled_one_does(
    stack: CommonSettings,
) -> None:
    driver = KafkaDriver(stack.kafka_bootstrap_servers, "genwire-gpt", stream=False)
    await driver.start()
    try:
        req = BenchRequest(0, "Once upon a time", (), SamplingSpec(max_tokens=4, seed=9))
        quiet, loud = new_trace(sampled=False), new_trace()
        run = f"unsampled-{time.time_ns()}"
        first = await driver.send(req, f"{run}-0", quiet)
        second = await driver.send(req, f"{run}-1", loud)
    finally:
        await driver.close()
    assert first.error is None and second.error is None
    # Greedy: both answered in full, alike (the model, trained on each machine, may end early).
    assert 1 <= first.output_tokens == second.output_tokens <= 4
    async with httpx.AsyncClient(base_url=stack.jaeger_ui_url, timeout=5.0) as http:
        # Every service exports both requests' spans in the same batches: once the sampled
        # one's trace is complete (postprocess, the last stage, included), the other's would be.
        for _ in range(120):
            if await _trace_spans(http, loud.trace_id) >= 8:
                break
            await asyncio.sleep(0.5)
        assert await _trace_spans(http, loud.trace_id) >= 8
        await asyncio.sleep(1.0)
        assert await _trace_spans(http, quiet.trace_id) == 0
