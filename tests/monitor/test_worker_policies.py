"""The worker judges canaries only on current policies: after a restart the rebuilt ``canary``
alerts wait (held, not resolved) until genwire.config has been read to its end; a policy read
again after a feed failure never rolls back a later revision; a rollback decided on a revision
that is no longer the newest is not published."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi import FastAPI
from genwire_bench.monitor.synth import REFERENCE, Profile
from genwire_monitor import alertstate, promexport
from genwire_monitor.alerting import AlertEvent
from genwire_monitor.app import setup
from genwire_monitor.config import MonitorSettings
from genwire_monitor.handlers import parse_alert
from genwire_monitor.rollback import Decision
from genwire_monitor.worker import EngineWorker

from genwire.policy import ModelPolicy, parse, promote
from genwire.policyfeed import PolicyStore
from genwire.service.runtime import ServiceRuntime

from .simulate import fast_settings, traffic

T0 = 1_800_000_000.0
CONFIG = "test.config"
STATE = "test.alert-state"
MODEL = REFERENCE.model
CANARY = replace(REFERENCE, version="2")
POLICY = ModelPolicy(
    model=MODEL,
    aliases={"champion": "1", "challenger": "2"},
    weights={"1": 75, "2": 25},
    revision=4,
    updated_ms=(T0 - 1) * 1000,
)
REBUILT = AlertEvent(
    id=f"canary:{MODEL}:2:genwire.mean_logprob",
    status="firing",
    kind="canary",
    severity="page",
    title=f"Canary {MODEL} 2 differs from champion 1",
    summary="mean log-probability differs",
    rule="canary psi+ks",
    model=MODEL,
    model_version="2",
    labels={"feature": "genwire.mean_logprob", "champion": "1"},
    started_at=datetime.fromtimestamp(T0 - 60, UTC),
)


@dataclass
class Follower:
    """Stands in for ``PolicyFollower``: a store, and whether it is current."""

    store: PolicyStore = field(default_factory=PolicyStore)
    current: bool = False
    topic: str = CONFIG

    def publish(self, policy: ModelPolicy) -> None:
        self.store.apply(policy.key(), policy.value())


class Producer:
    """Accepts every send; a record on the config topic comes back through the follower's
    store, as the feed would bring it."""

    def __init__(self, follower: Follower) -> None:
        self.follower = follower
        self.sent: list[tuple[str, bytes]] = []

    async def send(self, topic: str, value: bytes, *, key: bytes | None = None) -> Any:
        self.sent.append((topic, value))
        if topic == CONFIG:
            self.follower.store.apply(key, value)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    def rollbacks(self) -> list[ModelPolicy]:
        out = [parse(MODEL.encode(), v) for t, v in self.sent if t == CONFIG]
        return [p for p in out if p is not None]


def _worker(follower: Follower, now: list[float], **settings: object) -> EngineWorker:
    return EngineWorker(
        fast_settings(config_topic=CONFIG, canary_min_samples=50, **settings),
        Producer(follower),  # type: ignore[arg-type]
        promexport.MonitorCollector(),
        clock=lambda: now[0],
        policies=follower,  # type: ignore[arg-type]
    )


async def test_rebuilt_canary_alerts_wait_until_the_policies_are_current(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The monitor restarts while version 2 is a canary: its rebuilt canary alert is neither
    resolved nor written back as resolved before genwire.config is read to its end (it once was,
    at the first evaluation, "no longer takes canary traffic (no policy)")."""

    async def firing_alerts(*_: object) -> list[AlertEvent]:
        return [REBUILT]

    monkeypatch.setattr(alertstate, "firing_alerts", firing_alerts)
    follower = Follower()
    now = [T0]
    worker = _worker(follower, now, alert_state_topic=STATE)
    producer: Producer = worker._producer  # type: ignore[assignment]
    try:
        assert await worker.restore() == [REBUILT.id]
        for _ in range(3):  # the feed is still reading the topic
            now[0] += 1.0
            assert await worker.evaluate_once() == []
        follower.publish(POLICY)  # read so far, and the topic may hold a later revision
        now[0] += 1.0
        assert await worker.evaluate_once() == []
        assert [a.id for a in worker.engine.book.active(now[0])] == [REBUILT.id]
        assert producer.sent == [], "no resolution published, none written to the state"
        assert f"{CONFIG} not read to its end" in worker.engine.rollback.held[MODEL]
        follower.current = True
        now[0] += 1.0
        assert await worker.evaluate_once() == []
        assert worker.engine.book.is_firing(REBUILT.id), "still a canary: kept"
        follower.publish(POLICY.changed(by="cli:op", weights={"1": 100}))  # rolled back
        now[0] += 1.0
        (resolved,) = await worker.evaluate_once()
        assert resolved.id == REBUILT.id and resolved.status == "resolved"
        assert f"(policy revision {POLICY.revision + 1})" in resolved.summary
        assert [parse_alert(v).status for t, v in producer.sent if t == STATE] == ["resolved"]
    finally:
        await worker.close()


async def _drive(
    worker: EngineWorker,
    now: list[float],
    canary: Profile,
    seconds: float,
    rng: random.Random,
    share: float = 0.25,
) -> None:
    """Both versions' traffic, an evaluation at every step."""
    champ = traffic(REFERENCE, now[0], seconds, 120 * (1 - share), rng)
    cand = traffic(canary, now[0], seconds, 120 * share, rng)
    for (t, a), (_, b) in zip(champ, cand, strict=True):
        now[0] = t
        await worker.ingest([a, b])
        await worker.evaluate_once()


async def test_a_policy_read_again_never_rolls_back_a_later_revision() -> None:
    """The audit's case: canary 2 is rolled back (4 → 5), the operator promotes 2 (6), then the
    feed fails and reads genwire.config again from its start. Revision 4 must not come back,
    nor be rolled back again: that record (weights {1: 100}) would undo revision 6."""
    follower = Follower(current=True)
    follower.publish(POLICY)
    now = [T0]
    worker = _worker(follower, now)
    producer: Producer = worker._producer  # type: ignore[assignment]
    rng = random.Random(41)
    try:
        await _drive(worker, now, CANARY, 12.0, rng)
        await _drive(worker, now, replace(CANARY, error_share=0.5), 8.0, rng)
        (rolled,) = producer.rollbacks()
        assert (rolled.revision, rolled.weights) == (5, {"1": 100})
        six = promote(rolled, "2", by="cli:op", reason="fixed; promote 2")
        follower.publish(six)
        assert worker.engine.book.is_firing(f"errors:errors:page:{MODEL}:2"), "its page fires on"
        follower.current = False  # the feed failed; its successor reads from offset 0
        for record in (POLICY, rolled, six):
            follower.publish(record)
            assert follower.store.get(MODEL) == six
            now[0] += 0.1
            await worker.evaluate_once()
        follower.current = True
        await _drive(worker, now, replace(CANARY, error_share=0.5), 2.0, rng, share=0.0001)
        assert producer.rollbacks() == [rolled], "nothing published over revision 6"
        assert follower.store.get(MODEL) == six
    finally:
        await worker.close()


async def test_a_rollback_superseded_before_it_is_published_is_dropped() -> None:
    """Between the decision (engine thread) and the publish the feed may bring a newer
    revision: the decision is dropped (decided again on the newest) instead of undoing it."""
    follower = Follower(current=True)
    rolled = POLICY.changed(by="monitor", weights={"1": 100})
    follower.publish(POLICY)
    now = [T0]
    worker = _worker(follower, now)
    producer: Producer = worker._producer  # type: ignore[assignment]
    decision = Decision(MODEL, "2", "1", POLICY.revision, rolled, REBUILT, T0)
    try:
        follower.publish(POLICY.changed(by="cli:op", weights={"1": 50, "2": 50}))
        await worker._publish_rollback(decision)
        assert producer.sent == [] and decision.published_at is None
        assert decision.error == "its policy is revision 5 now, not revision 4"
        follower.current = False
        stale = Decision(MODEL, "2", "1", POLICY.revision + 1, rolled, REBUILT, T0)
        await worker._publish_rollback(stale)
        assert producer.sent == [] and stale.error == f"{CONFIG} is not read to its end"
    finally:
        await worker.close()


async def test_the_monitor_is_not_ready_until_its_policies_are_current() -> None:
    """Health tells the truth: the follower's reason is a readiness check of the service."""
    cfg = MonitorSettings(
        kafka_bootstrap_servers="127.0.0.1:1",  # nothing is started: no broker needed
        config_topic=CONFIG,
        alert_state_topic="",
        feedback_topic="",
        watched_groups={},
    )
    runtime = ServiceRuntime(cfg, "monitor", set_global_tracer=False)
    app = FastAPI()
    try:
        async with setup(cfg, runtime, app):
            reasons = runtime.reasons()
            assert (
                f"{CONFIG}: not read to its end yet: no canary alert retired nor rollback "
                "decided meanwhile" in reasons
            ), reasons
            worker: EngineWorker = app.state.worker
            assert worker.policies is not None and not worker.policies.current
            assert worker.engine.policies_current is False
    finally:
        await runtime.producer.stop()  # never started: nothing to close but its handle
