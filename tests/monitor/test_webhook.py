"""The Alertmanager webhook: every firing alert is sent again every ``alertmanager_resend_s``
with ``endsAt`` ahead (Alertmanager resolves an alert nobody re-sends: after its
``resolve_timeout``, 5 min by default), alerts rebuilt after a restart included; a post that
fails is made again at the next evaluation; with the resend off, transitions only."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from genwire_monitor import alertstate, promexport
from genwire_monitor import worker as worker_module
from genwire_monitor.alerting import AlertEvent
from genwire_monitor.webhook import ALERTS_PATH, AlertmanagerClient
from genwire_monitor.worker import RESEND_HORIZON, EngineWorker

from .simulate import fast_settings

T0 = 1_800_000_000.0
URL = "http://alertmanager.test:9093"
LATENCY = "latency:e2e:page"  # held on no data: firing for as long as the test runs
GONE = "errors:errors:page:genwire-gpt:2"  # its version never comes back: resolves


def _rebuilt(alert_id: str, model: str | None = None, version: str | None = None) -> AlertEvent:
    return AlertEvent(
        id=alert_id,
        status="firing",
        kind="latency_burn" if alert_id == LATENCY else "error_burn",
        severity="page",
        title=alert_id,
        summary="",
        rule="page 1h/5m 14.4x",
        model=model,
        model_version=version,
        started_at=datetime.fromtimestamp(T0 - 600, UTC),
    )


class Receiver:
    """An Alertmanager in memory: every post's body; answers 503 while ``down``."""

    def __init__(self) -> None:
        self.posts: list[list[dict[str, Any]]] = []
        self.down = False

    def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.url == URL + ALERTS_PATH
        self.posts.append(json.loads(request.content))
        return httpx.Response(503 if self.down else 200)

    def last(self) -> dict[str, dict[str, Any]]:
        """The last post, by alert name."""
        return {a["labels"]["alertname"]: a for a in self.posts[-1]}


class Producer:
    async def send(self, topic: str, value: bytes, *, key: bytes | None = None) -> Any:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


async def _worker(
    monkeypatch: pytest.MonkeyPatch, now: list[float], resend_s: float
) -> tuple[EngineWorker, Receiver]:
    """A worker that rebuilt LATENCY and GONE at start, posting to a ``Receiver``."""

    async def firing_alerts(*_: object) -> list[AlertEvent]:
        return [_rebuilt(LATENCY), _rebuilt(GONE, "genwire-gpt", "2")]

    monkeypatch.setattr(alertstate, "firing_alerts", firing_alerts)
    receiver = Receiver()
    client = AlertmanagerClient(URL, "http://monitor/")
    await client._client.aclose()
    client._client = httpx.AsyncClient(transport=httpx.MockTransport(receiver.handle))
    worker = EngineWorker(
        fast_settings(alert_state_topic="test.alert-state", alertmanager_resend_s=resend_s),
        Producer(),  # type: ignore[arg-type]
        promexport.MonitorCollector(),
        client,
        clock=lambda: now[0],
    )
    assert sorted(await worker.restore()) == sorted([LATENCY, GONE])
    return worker, receiver


def _at(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


async def test_firing_alerts_are_sent_again_and_failed_posts_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [T0]
    worker, am = await _worker(monkeypatch, now, resend_s=60.0)
    ahead = RESEND_HORIZON * 60.0
    try:
        await worker.evaluate_once()  # rebuilt after a restart: sent at once
        assert am.last().keys() == {LATENCY, GONE}
        assert am.last()[LATENCY]["endsAt"] == _at(T0 + ahead)  # firing until re-sent
        assert am.last()[LATENCY]["startsAt"] == _at(T0 - 600)
        now[0] = T0 + 5.0
        await worker.evaluate_once()
        assert len(am.posts) == 1, "nothing new, no resend due yet"
        am.down = True
        idle_s = worker.settings.scaled(worker.settings.model_idle_s)
        now[0] = T0 + idle_s  # GONE's version has been idle for model_idle_s: it resolves
        (resolved,) = await worker.evaluate_once()
        assert resolved.id == GONE and resolved.status == "resolved"
        assert len(am.posts) == 2 and worker._webhook.failures == 1  # type: ignore[union-attr]
        am.down = False
        now[0] += 1.0
        assert await worker.evaluate_once() == []
        assert len(am.posts) == 3, "the failed post is made again at the next evaluation"
        assert am.last()[GONE]["endsAt"] == _at(T0 + idle_s)  # in the past: resolved
        assert am.last()[LATENCY]["endsAt"] == _at(now[0] + ahead)
        sent = now[0]
        now[0] = sent + 59.0
        await worker.evaluate_once()
        assert len(am.posts) == 3
        now[0] = sent + 60.0
        await worker.evaluate_once()
        assert am.last().keys() == {LATENCY}, "re-sent while firing; the resolution was taken"
        assert am.last()[LATENCY]["endsAt"] == _at(sent + 60.0 + ahead)
        assert datetime.fromisoformat(am.last()[LATENCY]["endsAt"]) - datetime.fromtimestamp(
            now[0], UTC
        ) < timedelta(minutes=5), "resent well within Alertmanager's default resolve_timeout"
    finally:
        await worker.close()


async def test_without_resends_only_transitions_are_posted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``alertmanager_resend_s=0``: a receiver that wants each transition once (rebuilt alerts
    are posted once after a restart: the post before it may have been lost)."""
    now = [T0]
    worker, am = await _worker(monkeypatch, now, resend_s=0.0)
    try:
        am.down = True
        await worker.evaluate_once()
        am.down = False
        now[0] += 1.0
        await worker.evaluate_once()
        assert len(am.posts) == 2 and am.posts[0] == am.posts[1], "retried as it was"
        assert am.last().keys() == {LATENCY, GONE}
        assert all("endsAt" not in a for a in am.posts[-1])
        now[0] += 1.0
        await worker.evaluate_once()
        assert len(am.posts) == 2, "no transition, no post"
        now[0] = T0 + worker.settings.scaled(worker.settings.model_idle_s)
        (resolved,) = await worker.evaluate_once()
        assert [a["labels"]["alertname"] for a in am.posts[-1]] == [GONE]
        assert am.last()[GONE]["endsAt"] == resolved.resolved_at.isoformat()  # type: ignore[union-attr]
    finally:
        await worker.close()


class HungProducer:
    """A broker that hangs: records are taken, never acknowledged nor failed."""

    def __init__(self) -> None:
        self.sent = 0

    async def send(self, topic: str, value: bytes, *, key: bytes | None = None) -> Any:
        self.sent += 1
        return asyncio.get_running_loop().create_future()


async def test_a_hung_broker_holds_no_evaluation_nor_the_webhook(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An evaluation waits ``ACK_WAIT_S`` at most for its records' acknowledgement, then posts
    to the webhook all the same and sends the records again at the next one."""
    monkeypatch.setattr(worker_module, "ACK_WAIT_S", 0.2)
    now = [T0]
    worker, am = await _worker(monkeypatch, now, resend_s=60.0)
    hung = HungProducer()
    worker._producer = hung  # type: ignore[assignment]
    try:
        assert await asyncio.wait_for(worker.evaluate_once(), 5.0) == []
        assert am.last().keys() == {LATENCY, GONE}
        now[0] = T0 + worker.settings.scaled(worker.settings.model_idle_s)
        (resolved,) = await asyncio.wait_for(worker.evaluate_once(), 5.0)
        assert resolved.id == GONE
        assert am.last().keys() == {LATENCY, GONE}, "posted though Kafka never answered"
        assert hung.sent >= 1 and worker._unsent == [resolved]
        now[0] += 1.0
        await asyncio.wait_for(worker.evaluate_once(), 5.0)
        assert hung.sent >= 2 and worker._unsent == [resolved], "sent again, still kept"
    finally:
        await worker.close()


async def test_failed_posts_are_counted_on_metrics_by_reason() -> None:
    """genwire_monitor_webhook_failures_total{reason}: a receiver answering 503 is ``rejected``,
    one that does not answer ``unreachable``; an accepted post counts nothing. Both series
    exist at 0 before any failure, so rate() sees the first one."""
    from prometheus_client import CollectorRegistry

    from genwire.telemetry import semconv as sc

    registry = CollectorRegistry()
    receiver = Receiver()
    unreachable = False

    def handle(request: httpx.Request) -> httpx.Response:
        if unreachable:
            raise httpx.ConnectError("connection refused", request=request)
        return receiver.handle(request)

    def count(reason: str) -> float | None:
        return registry.get_sample_value(sc.METRIC_MONITOR_WEBHOOK_FAILURES, {"reason": reason})

    client = AlertmanagerClient(URL, "http://monitor/", registry=registry)
    await client._client.aclose()
    client._client = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    event = _rebuilt(LATENCY)
    try:
        assert count("rejected") == 0 and count("unreachable") == 0
        assert await client.post([event]) is True
        assert count("rejected") == 0
        receiver.down = True
        assert await client.post([event]) is False
        assert await client.post([event]) is False
        unreachable = True
        assert await client.post([event]) is False
        assert (count("rejected"), count("unreachable")) == (2, 1)
        assert client.failures == 3
    finally:
        await client.close()
