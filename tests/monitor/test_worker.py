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
