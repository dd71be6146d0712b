"""Automatic rollback through the real broker: the monitor app follows a (test) config topic,
reads synthetic spans of a champion and a canary, and publishes the rollback record there when
the canary goes bad. The time from the canary's first bad request to the record on the topic
is printed (``-s``); docs/monitor.md, "Automatic rollback", has the figures."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import replace

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from genwire_bench.monitor.synth import REFERENCE
from genwire_stack.health import free_port

from genwire.kafka import ensure_topics
from genwire.policy import ModelPolicy, parse
from genwire.settings import CommonSettings
from genwire.topics import TopicSpec
from tests.common.support import fresh_topic

from .harness import HOUR_MS, SpanFeed, fresh_topics, serve_monitor
from .simulate import SCALE, fast_settings

pytestmark = pytest.mark.integration

POLICY = ModelPolicy(
    model=REFERENCE.model,
    aliases={"champion": "1", "challenger": "2"},
    weights={"1": 75, "2": 25},
    revision=1,
)


@pytest.mark.slow
async def test_a_failing_canary_is_rolled_back_on_the_config_topic(kafka: CommonSettings) -> None:
    bootstrap = kafka.kafka_bootstrap_servers
    spans, alerts = await fresh_topics(bootstrap)
    config = fresh_topic("monitor.config")
    await ensure_topics(bootstrap, [TopicSpec(config, 1, HOUR_MS, compact=True)])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(config, POLICY.value(), key=POLICY.key())
    finally:
        await producer.stop()
    cfg = fast_settings(
        kafka_bootstrap_servers=bootstrap,
        spans_topic=spans,
        alerts_topic=alerts,
        config_topic=config,
        group_id=f"test-monitor-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        port=free_port(),
        commit_interval_s=0.5,
        trace_idle_s=0.3,
    )
    records: list[tuple[float, ModelPolicy]] = []
    reader = AIOKafkaConsumer(
        config, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await reader.start()

    async def pump() -> None:
        while True:
            for batch in (await reader.getmany(timeout_ms=50)).values():
                for r in batch:
                    policy = parse(r.key, r.value)
                    if policy is not None:
                        records.append((time.monotonic(), policy))

    pumping = asyncio.create_task(pump())
    try:
        async with (
            serve_monitor(cfg) as monitor,
            SpanFeed(bootstrap, spans, seed=5) as champion,
            SpanFeed(bootstrap, spans, seed=6) as canary,
        ):
            # The feed has the policy: the monitor knows who is the champion.
            for _ in range(300):  # (a feed that found no topic yet starts again after 5 s)
                if (await monitor.status()).get("policies"):
                    break
                await asyncio.sleep(0.1)
            assert (await monitor.status())["policies"][POLICY.model]["revision"] == 1  # type: ignore[index]
            canary_v = replace(REFERENCE, version="2")
            await asyncio.gather(champion.run(REFERENCE, 6.0, 75), canary.run(canary_v, 6.0, 25))
            assert [p.revision for _, p in records] == [1], "a healthy canary stays"
            bad_from = time.monotonic()
            # Up to 45 s of bad traffic (stopped at the rollback, typically 1-2 s): a monitor
            # that took its spans partitions late on a busy machine still sees enough.
            load = asyncio.gather(
                champion.run(REFERENCE, 45.0, 75),
                canary.run(replace(canary_v, error_share=0.5), 45.0, 25),
            )
            try:
                for _ in range(900):
                    if len(records) > 1:
                        break
                    await asyncio.sleep(0.05)
            finally:
                load.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await load
            assert len(records) == 2, "the rollback, once"
            at, rolled = records[1]
            print(
                f"\nfailing canary: rollback on the config topic {at - bad_from:.2f}s after its "
                f"first bad request (short window {300 * SCALE:.2f}s, trace completion "
                f"{cfg.trace_idle_s}s)"
            )
            assert rolled.weights == {"1": 100} and rolled.revision == 2
            assert rolled.updated_by == "monitor" and rolled.alert is not None
            assert rolled.alert["id"] == "errors:errors:page:genwire-gpt:2"
            # The monitor follows its own record back from the topic: a moment after publishing.
            for _ in range(100):
                status = await monitor.status()
                if status["policies"][POLICY.model]["revision"] == 2:  # type: ignore[index]
                    break
                await asyncio.sleep(0.05)
            (done,) = status["rollbacks"]  # type: ignore[misc]
            assert done["canary"] == "2" and done["revision"] == 2
            assert status["policies"][POLICY.model]["revision"] == 2  # type: ignore[index]
            metrics = (await monitor.get("/metrics")).text
            assert 'genwire_monitor_rollbacks_total{model="genwire-gpt"} 1.0' in metrics
            page = (await monitor.get("/")).text
            assert "Automatic rollbacks" in page and "errors:errors:page:genwire-gpt:2" in page
    finally:
        pumping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pumping
        await reader.stop()
