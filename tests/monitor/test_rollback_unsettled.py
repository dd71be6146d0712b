"""A rollback the broker did not acknowledge in time is still queued in the producer and may
be delivered later: its revision is not decided (nor sent) again until the send settles, so a
late delivery can never land after a second copy, or after a newer operator record."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from genwire_monitor import promexport
from genwire_monitor import worker as worker_module
from genwire_monitor.alerting import AlertEvent
from genwire_monitor.rollback import Decision
from genwire_monitor.worker import EngineWorker

from genwire.policy import ModelPolicy
from genwire.policyfeed import PolicyStore

from .simulate import fast_settings

T0 = 1_800_000_000.0
CONFIG = "test.config"
MODEL = "m"
POLICY = ModelPolicy(
    model=MODEL,
    aliases={"champion": "1", "challenger": "2"},
    weights={"1": 75, "2": 25},
    revision=4,
)
ALERT = AlertEvent(
    id=f"errors:errors:page:{MODEL}:2",
    status="firing",
    kind="error_burn",
    severity="page",
    title="SLO errors of m 2: requests with an error burning budget 50.0x",
    summary="failing",
    rule="burn rate >= 14.4x over 1h and 5m",
    model=MODEL,
    model_version="2",
    labels={"slo": "errors"},
    started_at=datetime.fromtimestamp(T0 - 60, UTC),
)


class Follower:
    """Stands in for ``PolicyFollower``: current, with revision 4 in force."""

    def __init__(self) -> None:
        self.store = PolicyStore()
        self.store.apply(POLICY.key(), POLICY.value())
        self.current = True
        self.topic = CONFIG


class SlowProducer:
    """Accepts each record; the broker acknowledges only when the test says so."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[object]] = []

    async def send(self, topic: str, value: bytes, *, key: bytes | None = None) -> Any:
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.futures.append(fut)
        return fut


async def test_no_second_rollback_until_the_first_send_settles(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker_module, "ACK_WAIT_S", 0.05)
    now = [T0]
    producer = SlowProducer()
    worker = EngineWorker(
        fast_settings(config_topic=CONFIG),
        producer,  # type: ignore[arg-type]
        promexport.MonitorCollector(),
        clock=lambda: now[0],
        policies=Follower(),  # type: ignore[arg-type]
    )
    controller = worker.engine.rollback

    def tick(t: float, policies: dict[str, ModelPolicy], current: bool) -> Any:
        return [], controller.decide(policies, [ALERT], t)  # the canary's page, current

    monkeypatch.setattr(worker, "_tick", tick)
    try:
        await worker.evaluate_once()
        assert len(producer.futures) == 1
        for _ in range(3):  # the first timed out: still queued, may still be delivered
            now[0] += 1.0
            await worker.evaluate_once()
        assert len(producer.futures) == 1, "sent again while the first was unsettled"
        assert "not settled" in controller.held[MODEL]
        producer.futures[0].set_result(None)  # delivered late after all
        now[0] += 1.0
        await worker.evaluate_once()
        assert len(producer.futures) == 1
        (decision,) = controller.decisions
        assert isinstance(decision, Decision) and decision.published_at == now[0]
    finally:
        await worker.close()


async def test_an_unsettled_rollback_whose_policy_moved_on_is_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A send a producer reset orphaned may never settle: once an operator's newer revision is
    in force, the old revision's rollback has nothing left to decide, and readiness forgets it."""
    monkeypatch.setattr(worker_module, "ACK_WAIT_S", 0.05)
    now = [T0]
    producer = SlowProducer()
    follower = Follower()
    settings = fast_settings(config_topic=CONFIG)
    worker = EngineWorker(
        settings,
        producer,  # type: ignore[arg-type]
        promexport.MonitorCollector(),
        clock=lambda: now[0],
        policies=follower,  # type: ignore[arg-type]
    )
    controller = worker.engine.rollback

    def tick(t: float, policies: dict[str, ModelPolicy], current: bool) -> Any:
        return [], controller.decide(policies, [ALERT], t)

    monkeypatch.setattr(worker, "_tick", tick)
    try:
        await worker.evaluate_once()
        assert list(worker._settling) == [(MODEL, 4)]
        follower.current = False  # the feed restarting: no evidence the policy moved on
        now[0] += 1.0
        await worker.evaluate_once()
        assert list(worker._settling) == [(MODEL, 4)]
        follower.current = True
        newer = POLICY.model_copy(update={"revision": 5})
        follower.store.apply(newer.key(), newer.value())
        now[0] += settings.stall_timeout_s + 1
        await worker.evaluate_once()
        assert (MODEL, 4) not in worker._settling
        assert "rollback:m:4" not in worker._waiting and worker.not_ready() == []
        assert not controller.held.get(MODEL, "").startswith("the rollback of revision 4")
    finally:
        await worker.close()
