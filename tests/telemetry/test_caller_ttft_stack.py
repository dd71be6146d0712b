"""A stalled model shows in the monitor's TTFT, on the running stack (issue 16, item 4).

Triton is frozen (SIGSTOP, as ``genwire chaos`` does) while one HTTP request goes in, then
thawed after ``STALL_S``; every span of the request is read back from ``otlp_spans`` and fed to
the monitor's engine. Its TTFT runs from the gateway's receive to the first token, so it holds
the stall; the model's own TTFT (``genwire.time_to_first_token_ms``) does not.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from genwire_bench.monitor.simulate import fast_settings
from genwire_chaos.faults import StackControl
from genwire_gateway.config import GatewaySettings
from genwire_monitor.config import LatencySLO
from genwire_monitor.handlers import MonitorEngine
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from genwire.apikeys import auth_headers
from genwire.settings import CommonSettings
from genwire.telemetry import semconv as sc
from genwire.topics import Topic

pytestmark = pytest.mark.slow

STALL_S = 2.0


def _result_keys_and_ttft(payload: bytes) -> tuple[set[str], list[float]]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(payload)
    keys: set[str] = set()
    own: list[float] = []
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                attrs = {kv.key: kv.value for kv in span.attributes}
                if span.name == f"{Topic.RESULTS} publish" and sc.MESSAGING_MESSAGE_KEY in attrs:
                    keys.add(attrs[sc.MESSAGING_MESSAGE_KEY].string_value)
                if sc.TIME_TO_FIRST_TOKEN_MS in attrs:
                    own.append(attrs[sc.TIME_TO_FIRST_TOKEN_MS].double_value)
    return keys, own


async def test_a_frozen_triton_shows_in_the_monitors_ttft(stack: CommonSettings) -> None:
    consumer = AIOKafkaConsumer(
        Topic.SPANS,
        bootstrap_servers=stack.kafka_bootstrap_servers,
        group_id=None,
        auto_offset_reset="latest",
    )
    await consumer.start()
    control = StackControl(stack)
    try:
        deadline = time.monotonic() + 30
        while not consumer.assignment() and time.monotonic() < deadline:
            await consumer.getmany(timeout_ms=100)
        tps = sorted(consumer.assignment())
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        gateway = GatewaySettings()
        async with httpx.AsyncClient(
            base_url=f"http://{gateway.host}:{gateway.port}",
            timeout=60,
            trust_env=False,
            headers=auth_headers(),
        ) as http:
            group = await asyncio.to_thread(control.freeze, "triton")
            try:
                call = asyncio.create_task(
                    http.post("/v1/completions", json={"prompt": "Once upon", "max_tokens": 4})
                )
                await asyncio.sleep(STALL_S)
            finally:
                await asyncio.to_thread(control.thaw, "triton", group)
            response = await call
        assert response.status_code == 200, response.text
        rid = response.headers["x-request-id"]

        payloads: list[bytes] = []
        own_ttft: list[float] = []
        settle_until: float | None = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    if record.value is None:
                        continue
                    payloads.append(record.value)
                    keys, own = _result_keys_and_ttft(record.value)
                    own_ttft += own
                    if rid in keys and settle_until is None:
                        settle_until = time.monotonic() + 3.0
            if settle_until is not None and time.monotonic() >= settle_until:
                break
    finally:
        await consumer.stop()
    assert settle_until is not None, f"no result span for {rid}"

    engine = MonitorEngine(
        fast_settings(
            trace_idle_s=0.5,
            slos=[LatencySLO(name="ttft", stage="ttft", threshold_ms=1000, objective=0.99)],
        )
    )
    now = time.time()
    engine.ingest(payloads, now)
    engine.complete(now + 1)
    ttft = engine.sketch("ttft", now + 1)
    assert ttft.count >= 1
    caller_ms = float(ttft.get_quantile_value(1.0) or 0.0)
    print(f"\ncaller-side TTFT {caller_ms:.0f} ms; the model's own {own_ttft} ms")
    assert caller_ms >= STALL_S * 1000 * 0.9  # the stall is in the monitor's TTFT
    assert own_ttft and min(own_ttft) < caller_ms - 1000  # ...and was not in the stage's own
    (slo,) = engine.slos
    good, total = slo.ring.window(now + 1, 3600 * fast_settings().window_scale)
    assert total - good >= 1  # a bad event for the TTFT SLO
