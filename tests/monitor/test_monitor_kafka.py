"""The monitor on the real broker, fed realistic OTLP span payloads on a unique test topic.

Windows are scaled 1/360 (1 h -> 10 s, 5 min -> 0.83 s), so each scenario takes seconds.
Figures (time to detect, to resolve, false alarms) are printed: run with ``-s`` to see them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import replace
from datetime import datetime

import pytest
from genwire_bench.monitor.synth import LENGTH_STOPS, LONG_PROMPTS, REFERENCE
from genwire_monitor.config import MonitorSettings
from genwire_stack.health import free_port

from genwire.settings import CommonSettings
from genwire.telemetry import semconv as sc

from .chromium import dump_dom
from .harness import SpanFeed, fresh_topics, read_alerts, serve_monitor
from .simulate import SCALE, fast_settings
from .webhook_receiver import receiver

pytestmark = pytest.mark.integration

RATE = 100  # requests per second (600 spans per second)


async def _settings(kafka: CommonSettings, **extra: object) -> MonitorSettings:
    spans, alerts = await fresh_topics(kafka.kafka_bootstrap_servers)
    return fast_settings(
        kafka_bootstrap_servers=kafka.kafka_bootstrap_servers,
        jaeger_ui_url=kafka.jaeger_ui_url,
        spans_topic=spans,
        alerts_topic=alerts,
        group_id=f"test-monitor-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        port=free_port(),
        commit_interval_s=0.5,
        trace_idle_s=0.3,
        **extra,
    )


async def _wait_for(predicate: object, timeout_s: float) -> float:
    """Seconds until ``predicate()`` is true (fails the test after ``timeout_s``)."""
    started = time.monotonic()
    while not predicate():  # type: ignore[operator]
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.slow
async def test_latency_breach_alerts_within_the_short_window_and_resolves(
    kafka: CommonSettings,
) -> None:
    async with receiver() as hook:
        cfg = await _settings(kafka, alertmanager_url=hook.url)
        bootstrap = cfg.kafka_bootstrap_servers
        async with (
            read_alerts(bootstrap, cfg.alerts_topic) as alerts,
            serve_monitor(cfg) as monitor,
            SpanFeed(bootstrap, cfg.spans_topic, seed=1) as feed,
        ):
            await feed.run(REFERENCE, 6.0, RATE)
            assert alerts.events == []
            incident = time.monotonic()
            slow = asyncio.create_task(feed.run(replace(REFERENCE, slow_ms=1500), 12.0, RATE))
            detect = await _wait_for(lambda: alerts.of("latency:e2e:page", "firing"), 15)
            short_s = 300 * SCALE
            print(
                f"\nlatency page alert: detected {detect:.2f}s after the incident began "
                f"(short window {short_s:.2f}s, trace completion {cfg.trace_idle_s}s)"
            )
            assert detect < short_s + cfg.trace_idle_s + 2.0
            _, fired = alerts.of("latency:e2e:page", "firing")[0]
            assert fired.severity == "page" and fired.kind == "latency_burn"
            assert float(fired.figures["p99_ms"]) > 1000
            assert fired.trace_links[0] == cfg.trace_url(fired.example_trace_ids[0])

            # What an on-call engineer sees while it fires: /metrics, and the page in a browser.
            metrics = (await monitor.get("/metrics")).text
            assert f'{sc.METRIC_MONITOR_ALERTS}{{id="latency:e2e:page"' in metrics
            assert (
                f'{sc.METRIC_MONITOR_STAGE_LATENCY}_bucket{{le="+Inf",stage="end_to_end"}}'
                in metrics
            )
            dom = await asyncio.to_thread(dump_dom, monitor.url + "/")
            active = dom.split('id="alerts"', 1)[1].split("<h2", 1)[0]  # the active section
            assert 'data-alert-id="latency:e2e:page"' in active, "still firing while rendered"
            assert "SLO e2e: end_to_end over 1000 ms burning budget" in active
            for stage in ("gateway", "preprocess", "inference", "postprocess", "triton queue"):
                assert stage in dom
            assert "<polyline" in dom

            await slow
            ended = time.monotonic()
            # Healthy traffic proves it clear (silence would not: no data holds an alert).
            healthy = asyncio.create_task(feed.run(REFERENCE, 30.0, RATE))
            try:
                await _wait_for(lambda: alerts.of("latency:e2e:page", "resolved"), 30)
            finally:
                healthy.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await healthy
            print(
                f"latency page alert: resolved {time.monotonic() - ended:.2f}s after the "
                f"incident ended (incident lasted {ended - incident:.1f}s)"
            )
            _, resolved = alerts.of("latency:e2e:page", "resolved")[0]
            assert resolved.resolved_at is not None and resolved.id == fired.id
            assert len(alerts.of("latency:e2e:page", "firing")) == 1  # no flapping
        # Firing alerts carry an endsAt ahead (sent again before it); the resolution its own.
        ended = resolved.resolved_at.isoformat()  # type: ignore[union-attr]
        await _wait_for(lambda: any(a.get("endsAt") == ended for a in hook.alerts), 10)
        firing = next(a for a in hook.alerts if a["labels"]["alertname"] == "latency:e2e:page")
        assert firing["labels"]["severity"] == "page" and "startsAt" in firing
        ends = datetime.fromisoformat(firing["endsAt"])
        assert ends > resolved.resolved_at, "firing: it ends ahead, unless sent again"  # type: ignore[operator]


@pytest.mark.slow
async def test_steady_reference_traffic_raises_no_alert(kafka: CommonSettings) -> None:
    cfg = await _settings(kafka)
    seconds = 45.0
    async with (
        read_alerts(cfg.kafka_bootstrap_servers, cfg.alerts_topic) as alerts,
        serve_monitor(cfg) as monitor,
        SpanFeed(cfg.kafka_bootstrap_servers, cfg.spans_topic, seed=2) as feed,
    ):
        await feed.run(REFERENCE, seconds, RATE)
        await asyncio.sleep(1.0)
        status = await monitor.status()
    counts = status["counts"]
    assert isinstance(counts, dict)
    drift_evaluations = seconds / max(0.1, cfg.scaled(cfg.eval_interval_s))
    simulated_h = seconds / SCALE / 3600
    print(
        f"\nsteady run: {feed.requests} requests, {counts['spans']} spans, "
        f"~{drift_evaluations:.0f} evaluations over {simulated_h:.1f} scaled hours: "
        f"{len(alerts.events)} alerts (false-alarm rate {len(alerts.events) / simulated_h:.2f}"
        f" per scaled hour)"
    )
    assert counts["requests"] >= feed.requests * 0.9
    assert alerts.events == []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("profile", "feature"),
    [(LONG_PROMPTS, sc.GEN_AI_INPUT_TOKENS), (LENGTH_STOPS, sc.GEN_AI_FINISH_REASONS)],
    ids=["longer-prompts", "length-stops"],
)
async def test_distribution_switch_raises_drift_naming_the_feature(
    kafka: CommonSettings, profile: object, feature: str
) -> None:
    cfg = await _settings(kafka)
    async with (
        read_alerts(cfg.kafka_bootstrap_servers, cfg.alerts_topic) as alerts,
        serve_monitor(cfg),
        SpanFeed(cfg.kafka_bootstrap_servers, cfg.spans_topic, seed=3) as feed,
    ):
        await feed.run(REFERENCE, 14.0, RATE)  # the frozen reference: 10 s (1 h scaled)
        assert alerts.events == []
        switch = time.monotonic()
        task = asyncio.create_task(feed.run(profile, 10.0, RATE))  # type: ignore[arg-type]
        drift_id = f"drift:genwire-gpt:1:{feature}"
        detect = await _wait_for(lambda: alerts.of(drift_id, "firing"), 10)
        task.cancel()
    print(
        f"\ndrift in {feature}: detected {detect:.2f}s after the switch "
        f"(current window {cfg.scaled(cfg.drift.current_window_s):.1f}s)"
    )
    _, alert = alerts.of(drift_id, "firing")[0]
    assert alert.kind == "drift" and alert.labels["feature"] == feature
    assert alert.model == "genwire-gpt" and alert.model_version == "1"
    assert alert.example_trace_ids
    assert switch > 0


async def test_malformed_records_are_counted_and_skipped(kafka: CommonSettings) -> None:
    cfg = await _settings(kafka)
    async with (
        serve_monitor(cfg) as monitor,
        SpanFeed(cfg.kafka_bootstrap_servers, cfg.spans_topic) as feed,
    ):
        await feed.raw([b"\xff\xfe not protobuf", b'{"resourceSpans": []}', b"\x0a\x03abc"])
        await feed.run(REFERENCE, 1.0, 50)
        await _wait_for(lambda: True, 0)
        metrics = ""
        for _ in range(100):
            metrics = (await monitor.get("/metrics")).text
            if f'{sc.METRIC_MONITOR_RECORDS}{{outcome="malformed"}} 3.0' in metrics:
                break
            await asyncio.sleep(0.1)
        assert f'{sc.METRIC_MONITOR_RECORDS}{{outcome="malformed"}} 3.0' in metrics
        assert (await monitor.get("/readyz")).status_code == 200
        status = await monitor.status()
        assert status["counts"]["spans"] > 0  # type: ignore[index]


async def test_restart_resumes_from_committed_offsets(kafka: CommonSettings) -> None:
    cfg = await _settings(kafka)
    async with SpanFeed(cfg.kafka_bootstrap_servers, cfg.spans_topic) as feed:
        await feed.run(REFERENCE, 1.0, 50)
        first = feed.payloads
        async with serve_monitor(cfg) as monitor:
            await _wait_for_records(monitor, first)
            await asyncio.sleep(cfg.commit_interval_s * 2)  # a commit happens meanwhile
            before = await monitor.status()
        await feed.run(REFERENCE, 1.0, 50)
        second = feed.payloads - first
        async with serve_monitor(cfg) as monitor:
            await _wait_for_records(monitor, second)
            await asyncio.sleep(1.0)  # anything re-read would show up by now
            after = await monitor.status()
    first_records = before["counts"]["records"]  # type: ignore[index]
    second_records = after["counts"]["records"]  # type: ignore[index]
    print(
        f"\nrestart: first run read {first_records} of {first} records, the restarted one "
        f"{second_records} of the {second} published while it was down"
    )
    assert first_records == first
    assert second_records == second  # resumed from the commit: nothing re-read, nothing lost


async def _wait_for_records(monitor: object, n: int) -> None:
    for _ in range(200):
        status = await monitor.status()  # type: ignore[attr-defined]
        if status["counts"]["records"] >= n:
            return
        await asyncio.sleep(0.05)
    pytest.fail("the monitor did not read the records")
