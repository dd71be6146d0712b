"""The monitor is not ready while what it must publish cannot be (alerts, their state, a
rollback) for the stall timeout, or while no evaluation succeeds for a few intervals: /readyz
says why instead of ready while nothing reaches anyone."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest
from aiokafka.errors import KafkaError
from genwire_bench.monitor.synth import REFERENCE
from genwire_monitor import promexport
from genwire_monitor.worker import EngineWorker

from .simulate import fast_settings, traffic

T0 = 1_800_000_000.0


class DownProducer:
    """Every send fails as aiokafka's would with the broker gone."""

    async def send(self, topic: str, value: bytes, *, key: bytes | None = None) -> Any:
        raise KafkaError("broker gone")


def _worker(now: list[float]) -> EngineWorker:
    return EngineWorker(
        fast_settings(alert_state_topic="test.alert-state"),
        DownProducer(),  # type: ignore[arg-type]
        promexport.MonitorCollector(),
        clock=lambda: now[0],
    )


async def test_alerts_unpublished_for_the_stall_timeout_make_it_unready() -> None:
    now = [T0]
    worker = _worker(now)
    rng = random.Random(14)
    try:
        for profile, seconds in ((REFERENCE, 12.0), (replace(REFERENCE, slow_ms=1500), 2.0)):
            for t, payload in traffic(profile, now[0], seconds, 100, rng):
                now[0] = t
                await worker.ingest([payload])
                await worker.evaluate_once()
        assert worker.engine.book.is_firing("latency:e2e:page")
        assert worker._unsent, "nothing could be sent"
        now[0] += worker.settings.stall_timeout_s + 1
        await worker.evaluate_once()  # still failing
        reasons = worker.not_ready()
        assert any(worker.settings.alerts_topic in r and "unpublished" in r for r in reasons)
        unpublished, evaluated = worker.health()
        assert unpublished >= worker.settings.stall_timeout_s and evaluated == 0.0
    finally:
        await worker.close()


async def test_evaluations_that_keep_failing_make_it_unready(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [T0]
    worker = _worker(now)
    try:
        await worker.evaluate_once()
        assert worker.not_ready() == []

        def broken(*args: object) -> Any:
            raise RuntimeError("a bug in a rule")

        monkeypatch.setattr(worker, "_tick", broken)
        for _ in range(10):  # what run() does: log, and try again next interval
            now[0] += 5.0
            with pytest.raises(RuntimeError):
                await worker.evaluate_once()
        reasons = worker.not_ready()
        assert any("no successful evaluation" in r for r in reasons), reasons
    finally:
        await worker.close()
