"""The engine worker keeps alert events when Kafka refuses them and sends them later, in order."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from typing import Any

from genwire_bench.monitor.synth import REFERENCE
from genwire_monitor import promexport
from genwire_monitor.handlers import parse_alert
from genwire_monitor.worker import EngineWorker

from .simulate import fast_settings, traffic

T0 = 1_800_000_000.0


class FlakyProducer:
    """Refuses sends while ``down``; records what it accepted (a fake: pure unit test)."""

    def __init__(self) -> None:
        self.down = True
        self.sent: list[tuple[str, bytes, bytes | None]] = []

    async def send(self, topic: str, value: bytes, *, key: bytes | None = None) -> Any:
        if self.down:
            raise ConnectionError("broker unreachable")
        self.sent.append((topic, value, key))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


async def test_unsent_alerts_are_retried_in_order() -> None:
    producer = FlakyProducer()
    now = [T0]
    worker = EngineWorker(
        fast_settings(alert_state_topic="test.alert-state"),  # a fake producer: no broker
        producer,
        promexport.MonitorCollector(),
        clock=lambda: now[0],  # type: ignore[arg-type]
    )
    rng = random.Random(14)
    try:
        for profile, seconds in ((REFERENCE, 12.0), (replace(REFERENCE, slow_ms=1500), 2.0)):
            for t, payload in traffic(profile, now[0], seconds, 100, rng):
                now[0] = t
                await worker.ingest([payload])
                await worker.evaluate_once()
        assert producer.sent == []  # everything failed so far...
        producer.down = False
        await worker.evaluate_once()  # ...and goes out with the next evaluation
        cfg = worker.settings
        ids = [parse_alert(v).id for t, v, _ in producer.sent if t == cfg.alerts_topic]
        assert "latency:e2e:page" in ids
        assert len(ids) == len(set(ids))  # each transition once
        state = [(k, parse_alert(v).id) for t, v, k in producer.sent if t == cfg.alert_state_topic]
        assert state == [(i.encode(), i) for i in ids]  # mirrored, keyed by alert id
    finally:
        await worker.close()


def test_the_state_retry_queue_keeps_the_latest_event_of_every_alert() -> None:
    # The compacted alert-state topic needs only each alert's latest transition; a queue that
    # truncated by count during a long outage could drop a "resolved" whose "firing" was
    # already written, and the alert would be rebuilt as firing on the next start.
    from datetime import UTC, datetime

    from genwire_monitor.alerting import AlertEvent
    from genwire_monitor.worker import MAX_UNSENT, latest_per_alert

    def event(alert: str, status: str) -> AlertEvent:
        return AlertEvent(
            id=alert,
            status=status,  # type: ignore[arg-type]
            kind="latency_burn",
            severity="page",
            title=alert,
            summary="",
            rule="",
            started_at=datetime.now(UTC),
        )

    noisy = [event(f"a{i % 3}", "firing") for i in range(MAX_UNSENT * 2)]
    queue = latest_per_alert([event("x", "firing"), *noisy, event("x", "resolved")])
    assert {e.id: e.status for e in queue} == {
        "a0": "firing",
        "a1": "firing",
        "a2": "firing",
        "x": "resolved",
    }
    assert len(queue) == 4 and queue[-1].status == "resolved"  # in the order they happened
