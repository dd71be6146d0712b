"""The monitor on spans from the running pipeline: real requests through preprocess,
inference (Triton) and postprocess, their spans on ``otlp_spans``, read by an in-process
monitor as its own consumer group (beside Jaeger's and the stack's monitor).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from genwire_monitor.config import LatencySLO
from genwire_stack.health import free_port

from genwire.settings import CommonSettings
from genwire.telemetry import semconv as sc
from genwire.topics import Topic

from .chromium import dump_dom
from .harness import read_alerts, serve_monitor
from .simulate import fast_settings

pytestmark = pytest.mark.slow

WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven")


def _prompt(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


async def _drive(
    bootstrap: str, seconds: float, rate: float, words: tuple[int, int], rng: random.Random
) -> int:
    """Produce JSON requests to genwire.requests (no gateway needed) at about ``rate``/s."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
    await producer.start()
    sent = 0
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            rid = f"monitor-test-{uuid.uuid4().hex[:12]}"
            body = {
                "request_id": rid,
                "prompt": _prompt(rng, rng.randint(*words)),
                "max_tokens": 4,
                "temperature": 0.0,
            }
            await producer.send(Topic.REQUESTS, json.dumps(body).encode(), key=rid.encode())
            sent += 1
            await asyncio.sleep(1.0 / rate)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def test_pipeline_spans_feed_latency_alerts_and_drift(stack: CommonSettings) -> None:
    tag = uuid.uuid4().hex[:8]
    cfg = fast_settings(
        kafka_bootstrap_servers=stack.kafka_bootstrap_servers,
        jaeger_ui_url=stack.jaeger_ui_url,
        alerts_topic=Topic.ALERTS.value,
        group_id=f"test-monitor-pipeline-{tag}",
        auto_offset_reset="latest",
        port=free_port(),
        trace_idle_s=1.5,  # spans of one request come from four services' exporters
        # Every request is "slow" against 1 ms: the latency alert must fire on real spans.
        slos=[LatencySLO(name=f"pipe{tag}", stage="end_to_end", threshold_ms=1, objective=0.99)],
        drift={"reference_window_s": 3600, "current_window_s": 1800, "min_samples": 40},
        drift_for_s=180,
    )
    rng = random.Random(11)
    bootstrap = cfg.kafka_bootstrap_servers
    async with read_alerts(bootstrap, cfg.alerts_topic) as alerts, serve_monitor(cfg) as mon:
        await asyncio.sleep(1.0)  # the group's "latest" position is set
        sent = await _drive(bootstrap, 14.0, 15, (3, 12), rng)  # the reference: short prompts
        latency_id = f"latency:pipe{tag}:page"
        for _ in range(100):
            if alerts.of(latency_id, "firing"):
                break
            await asyncio.sleep(0.1)
        assert alerts.of(latency_id, "firing"), "no latency alert from the pipeline's spans"
        status = await mon.status()
        stages = set(status["percentiles"])  # type: ignore[arg-type]
        assert {"preprocess", "inference", "postprocess", "end_to_end"} <= stages, stages
        assert "kafka genwire.requests" in stages  # the wait in a topic, from process spans
        print(f"\npipeline stages seen: {sorted(stages)}")
        dom = await asyncio.to_thread(dump_dom, mon.url + "/")
        assert "inference" in dom and "<polyline" in dom

        switch = time.monotonic()
        drifted = asyncio.create_task(_drive(bootstrap, 15.0, 15, (40, 60), rng))
        drift_id_part = f":{sc.GEN_AI_INPUT_TOKENS}"
        detected = None
        while not drifted.done():
            hits = [
                e
                for _, e in alerts.events
                if e.kind == "drift" and e.status == "firing" and e.id.endswith(drift_id_part)
            ]
            if hits:
                detected = time.monotonic() - switch
                break
            await asyncio.sleep(0.1)
        sent += await drifted
    print(
        f"\npipeline: {sent} requests; latency alert fired; drift in prompt tokens "
        f"detected {detected if detected is None else round(detected, 2)}s after the switch"
    )
    assert detected is not None, "no drift alert for prompt tokens from the pipeline's spans"
