"""Alert state survives restarts: the firing alerts are rebuilt from the compacted alert-state
topic, held while the new monitor has no data, and resolved (with a ``resolved`` event) once
the condition is seen clear; every event names the rule that raised it and the one holding it."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import replace

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from genwire_bench.monitor.synth import REFERENCE
from genwire_monitor.alerting import AlertEvent
from genwire_monitor.handlers import MonitorEngine, firing_from_state, parse_alert, state_record
from genwire_stack.health import free_port

from genwire.kafka import ensure_topics
from genwire.settings import CommonSettings
from genwire.topics import TopicSpec
from tests.common.support import fresh_topic

from .harness import HOUR_MS, SpanFeed, fresh_topics, read_alerts, serve_monitor
from .simulate import SCALE, fast_settings, run

T0 = 1_800_000_000.0
PAGE = "latency:e2e:page"


def _fired() -> tuple[MonitorEngine, float, AlertEvent]:
    engine = MonitorEngine(fast_settings())
    rng = random.Random(21)
    t, _ = run(engine, REFERENCE, T0, 12.0, 100, rng)
    t, events = run(engine, replace(REFERENCE, slow_ms=1500), t, 3.0, 100, rng)
    (fired,) = [e for _, e in events if e.id == PAGE and e.status == "firing"]
    return engine, t, fired


def test_events_name_the_rule_that_raised_them_and_the_rule_that_holds_them() -> None:
    engine, t, fired = _fired()
    assert fired.raised_by in {"page 1h/5m 14.4x", "page 6h/30m 6x"}
    assert fired.held_by == fired.raised_by  # at the transition, the rule that fired
    rng = random.Random(22)
    t, events = run(engine, replace(REFERENCE, slow_ms=1500), t, 8.0, 100, rng)
    (active,) = [a for a in engine.book.active(t) if a.id == PAGE]
    assert active.raised_by == fired.raised_by and active.held_by  # raiser kept, holder now
    assert not active.no_data
    _, events = run(engine, REFERENCE, t, 15.0, 100, rng)
    (resolved,) = [e for _, e in events if e.id == PAGE and e.status == "resolved"]
    assert resolved.raised_by == fired.raised_by and resolved.held_by
    drift = AlertEvent.model_validate(
        {**fired.model_dump(), "raised_by": "", "held_by": ""}
    )  # an event written before these fields existed still parses
    assert parse_alert(drift.model_dump_json().encode()).raised_by == ""


def test_the_state_topic_says_which_alerts_fire() -> None:
    _, _, fired = _fired()
    resolved = fired.model_copy(update={"status": "resolved"})
    other = fired.model_copy(update={"id": "errors:errors:page"})
    records = [state_record(e) for e in (fired, other, resolved)] + [(b"x", b"not json")]
    assert [e.id for e in firing_from_state(records)] == ["errors:errors:page"]
    assert [e.id for e in firing_from_state([state_record(fired)])] == [PAGE]


def test_a_rebuilt_alert_holds_without_data_and_resolves_once_clear() -> None:
    _, _, fired = _fired()
    fresh = MonitorEngine(fast_settings())  # a restarted monitor: empty windows
    assert fresh.restore([fired]) == [PAGE]
    assert fresh.restore([fired]) == []  # once
    t = T0 + 100
    for i in range(300):  # 30 s of nothing: no data is not a resolution
        assert fresh.tick(t + i * 0.1) == []
    (active,) = fresh.book.active(t + 30)
    assert active.id == PAGE and active.no_data
    assert active.started_at == fired.started_at and active.raised_by == fired.raised_by
    _, events = run(fresh, REFERENCE, t + 30, 15.0, 100, random.Random(23))
    assert [(e.id, e.status) for _, e in events] == [(PAGE, "resolved")]
    (_, resolved), *_ = events
    assert resolved.started_at == fired.started_at and resolved.raised_by == fired.raised_by


async def _latest_state(bootstrap: str, topic: str) -> dict[str, AlertEvent]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        out: dict[str, AlertEvent] = {}
        for records in (await consumer.getmany(timeout_ms=3000)).values():
            for r in records:
                out[(r.key or b"").decode()] = parse_alert(r.value or b"")
        return out
    finally:
        await consumer.stop()


@pytest.mark.integration
async def test_a_restarted_monitor_rebuilds_the_firing_alert_and_resolves_it(
    kafka: CommonSettings,
) -> None:
    bootstrap = kafka.kafka_bootstrap_servers
    spans, alerts = await fresh_topics(bootstrap)
    state = fresh_topic("monitor.alert-state")
    await ensure_topics(bootstrap, [TopicSpec(state, 1, HOUR_MS, compact=True)])
    # What the previous monitor left: the page fired (written as it would have written it).
    _, _, fired = _fired()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        key, value = state_record(fired)
        await producer.send_and_wait(state, value, key=key)
    finally:
        await producer.stop()
    cfg = fast_settings(
        kafka_bootstrap_servers=bootstrap,
        spans_topic=spans,
        alerts_topic=alerts,
        alert_state_topic=state,
        group_id=f"test-monitor-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="latest",
        port=free_port(),
    )
    assert cfg.window_scale == SCALE
    async with read_alerts(bootstrap, alerts) as log, serve_monitor(cfg) as served:
        status = await served.status()
        active = {a["id"]: a for a in status["active"]}  # type: ignore[union-attr]
        assert PAGE in active, status  # rebuilt before the first evaluation
        assert active[PAGE]["no_data"] and active[PAGE]["raised_by"] == fired.raised_by
        page = (await served.get("/")).text
        assert f"raised by <b>{fired.raised_by}</b>" in page and "no data" in page
        await asyncio.sleep(3.0)  # no traffic: held, nothing published
        assert log.of(PAGE) == []
        started = time.monotonic()
        async with SpanFeed(bootstrap, spans, seed=24) as feed:
            feed_task = asyncio.create_task(feed.run(REFERENCE, 30.0, 100))
            try:
                while not log.of(PAGE, "resolved"):
                    assert time.monotonic() - started < 30, "the rebuilt alert never resolved"
                    await asyncio.sleep(0.2)
            finally:
                feed_task.cancel()
        print(f"\nrebuilt alert resolved {time.monotonic() - started:.1f}s after healthy traffic")
        (_, resolved), *_ = log.of(PAGE, "resolved")
        assert [e.status for _, e in log.of(PAGE)] == ["resolved"]  # no second "firing"
        assert resolved.started_at == fired.started_at and resolved.raised_by == fired.raised_by
        assert not (await served.status())["active"]
    latest = await _latest_state(bootstrap, state)
    assert latest[PAGE].status == "resolved"  # a later restart rebuilds nothing
