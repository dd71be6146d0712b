"""The stall watch on the real broker: a private topic, private groups, offsets committed by hand.

No genwire service is involved: the groups' "consumers" are plain ``AIOKafkaConsumer``s that
commit what the test says (nothing, a stale offset, the end), exactly what a dead or hung stage
leaves on the broker. The last test needs no broker (it proves one that is down is survived).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from genwire_monitor.offsetpoll import OffsetPoller
from genwire_monitor.rules import stall_id
from genwire_monitor.stalls import PartitionStatus
from genwire_stack.health import free_port

from genwire.kafka import ensure_topics
from genwire.settings import CommonSettings
from genwire.topics import TopicSpec
from tests.common.support import fresh_topic

from .harness import fresh_topics, read_alerts, serve_monitor
from .simulate import fast_settings

HOUR_MS = 3_600_000


async def _topic_with_records(bootstrap: str, counts: list[int]) -> str:
    """A fresh topic with ``counts[p]`` records on partition ``p``."""
    topic = fresh_topic("monitor.stall")
    await ensure_topics(bootstrap, [TopicSpec(topic, len(counts), HOUR_MS)])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for partition, n in enumerate(counts):
            for i in range(n):
                await producer.send_and_wait(topic, f"r{i}".encode(), partition=partition)
    finally:
        await producer.stop()
    return topic


async def _commit(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Commit ``offsets`` for ``group`` as a consumer that assigned itself the partitions."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


async def _poll_until(
    poller: OffsetPoller, done: Callable[[list[PartitionStatus]], bool], timeout_s: float
) -> list[PartitionStatus]:
    deadline = time.monotonic() + timeout_s
    while True:
        out = await poller.poll_once()
        if done(out):
            return out
        if time.monotonic() > deadline:
            pytest.fail(f"not reached within {timeout_s}s: {out} (last error {poller.last_error})")
        await asyncio.sleep(0.2)


def _by(out: list[PartitionStatus], group: str) -> dict[int, PartitionStatus]:
    return {s.partition: s for s in out if s.group == group}


@pytest.mark.integration
async def test_the_poller_reports_a_stalled_group_and_clears_when_it_commits(
    kafka: CommonSettings,
) -> None:
    bootstrap = kafka.kafka_bootstrap_servers
    topic = await _topic_with_records(bootstrap, [5, 3, 0])
    tp0, tp1, tp2 = (TopicPartition(topic, p) for p in range(3))
    tag = uuid.uuid4().hex[:8]
    stuck, current = f"test-stall-stuck-{tag}", f"test-stall-current-{tag}"
    await _commit(bootstrap, stuck, {tp0: 2})  # stale on 0, nothing at all on 1 and 2
    await _commit(bootstrap, current, {tp0: 5, tp1: 3})  # caught up
    poller = OffsetPoller(
        bootstrap_servers=bootstrap,
        watched={stuck: topic, current: topic},
        threshold_s=1.0,
        interval_s=0.2,
    )
    try:
        first = await poller.poll_once()
        assert poller.last_error is None, poller.last_error
        s = _by(first, stuck)
        assert [(s[p].committed, s[p].end, s[p].lag) for p in range(3)] == [
            (2, 5, 3),
            (None, 3, 3),
            (None, 0, 0),
        ]
        assert not any(x.stalled for x in first)  # lagging, but not for 1 s yet
        out = await _poll_until(poller, lambda o: _by(o, stuck)[0].stalled, 10)
        s = _by(out, stuck)
        assert s[1].stalled and not s[2].stalled  # no lag on the empty partition
        assert s[0].stalled_s >= 1.0
        assert not any(x.stalled or x.lag for x in _by(out, current).values())
        assert {(x.group, x.partition) for x in poller.tracker.stalled()} == {
            (stuck, 0),
            (stuck, 1),
        }

        await _commit(bootstrap, stuck, {tp0: 4})  # progress on 0 (records still wait)
        out = await poller.poll_once()
        s = _by(out, stuck)
        assert (s[0].stalled, s[0].lag, s[1].stalled) == (False, 1, True)

        await _commit(bootstrap, stuck, {tp0: 5, tp1: 3, tp2: 0})  # caught up everywhere
        out = await poller.poll_once()
        assert poller.tracker.stalled() == []
        assert all(x.lag == 0 for x in out)
    finally:
        await poller.stop()


@pytest.mark.integration
async def test_the_monitor_pages_on_a_stalled_group_and_resolves(kafka: CommonSettings) -> None:
    bootstrap = kafka.kafka_bootstrap_servers
    topic = await _topic_with_records(bootstrap, [4])
    group = f"test-stall-app-{uuid.uuid4().hex[:8]}"
    await _commit(bootstrap, group, {TopicPartition(topic, 0): 1})
    spans, alerts_topic = await fresh_topics(bootstrap)
    cfg = fast_settings(
        kafka_bootstrap_servers=bootstrap,
        spans_topic=spans,
        alerts_topic=alerts_topic,
        group_id=f"test-monitor-{uuid.uuid4().hex[:8]}",
        port=free_port(),
        watched_groups={group: topic},
        stall_alert_s=1.0,
        stall_check_interval_s=0.2,
    )
    aid = stall_id(group, topic, 0)
    async with read_alerts(bootstrap, alerts_topic) as alerts, serve_monitor(cfg) as monitor:
        ready = time.monotonic()
        for _ in range(150):
            if alerts.of(aid, "firing"):
                break
            await asyncio.sleep(0.1)
        (_, fired), *_ = alerts.of(aid, "firing") or pytest.fail("no partition_stalled alert")
        assert (fired.kind, fired.severity, fired.figures["lag"]) == (
            "partition_stalled",
            "page",
            3,
        )
        metrics = (await monitor.get("/metrics")).text
        assert (
            f'genwire_monitor_partition_lag{{group="{group}",partition="0",topic="{topic}"}} 3.0'
            in metrics
        )
        assert "genwire_monitor_partition_stalled_seconds{" in metrics
        assert f'data-alert-id="{aid}"' in (await monitor.get("/")).text
        detect = time.monotonic() - ready
        await _commit(bootstrap, group, {TopicPartition(topic, 0): 4})
        committed = time.monotonic()
        for _ in range(100):
            if alerts.of(aid, "resolved"):
                break
            await asyncio.sleep(0.1)
        print(
            f"\npartition_stalled: fired {detect:.2f}s after the monitor was ready (threshold "
            f"{cfg.stall_alert_s}s, reads every {cfg.stall_check_interval_s}s); resolved "
            f"{time.monotonic() - committed:.2f}s after the commit"
        )
        assert [e.status for _, e in alerts.of(aid)] == ["firing", "resolved"]


async def test_an_unreachable_broker_is_logged_and_survived(
    caplog: pytest.LogCaptureFixture,
) -> None:
    poller = OffsetPoller(
        bootstrap_servers=f"127.0.0.1:{free_port()}",
        watched={"g": "t"},
        threshold_s=1.0,
        interval_s=0.2,
        timeout_s=2.0,
    )
    started = time.monotonic()
    task = asyncio.create_task(poller.run())
    try:
        await asyncio.sleep(1.0)
        assert not task.done()  # never dies
        assert poller.failures >= 1 and poller.last_error
        assert poller.tracker.snapshot() == []
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert time.monotonic() - started < 10
    warnings = [r for r in caplog.records if r.name == "genwire_monitor.offsetpoll"]
    assert 1 <= len(warnings) <= poller.failures  # one line per failed reading at most
