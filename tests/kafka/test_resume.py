"""``EventConsumer``: a partition given back after a failed commit resumes after the records
this consumer finished (``_resume_unsettled``), and only when that is ahead of the group's own
commit. Pure logic against a stand-in client; the broker case (an outage past the session, both
clients) is tests/common/test_reliability_kafka.py."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from genwire.kafka import EventConsumer
from genwire.kafka.offsets import PartitionOffsets

from .standin import TP, Rec, offline_consumer


async def _nothing(event: Rec) -> None:
    return None


class Client:
    """What ``_drain`` and ``_resume_unsettled`` call, recorded; ``group`` is the group's commit."""

    def __init__(self, group: int | None, commits_fail: bool = True) -> None:
        self.group = group
        self.commits_fail = commits_fail
        self.commits: list[dict[TopicPartition, int]] = []
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.held: set[TopicPartition] = set()
        self.held_while_asked: set[TopicPartition] = set()
        self.asked: list[TopicPartition] = []

    async def committed(self, tp: TopicPartition) -> int | None:
        self.asked.append(tp)
        self.held_while_asked = set(self.held)
        if self.group == -1:
            raise KafkaError("no coordinator")
        if self.group == -2:
            await asyncio.sleep(3600)  # a coordinator that never answers
        return self.group

    def pause(self, *tps: TopicPartition) -> None:
        self.held |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.held -= set(tps)

    def paused(self) -> set[TopicPartition]:
        return set(self.held)

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))
        if self.commits_fail:
            raise KafkaError("the partitions were lost with the group session")

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))


def _consumer(client: Client, session_timeout_ms: int = 10_000) -> EventConsumer[Any]:
    consumer = offline_consumer(_nothing, client, session_timeout_ms=session_timeout_ms)
    tracker = PartitionOffsets()
    for offset in range(5):  # 0-4 taken, 1 committed, 0-3 finished, 4 cancelled at the drain
        tracker.started(offset)
    tracker.was_committed(1)
    for offset in range(4):
        tracker.finished(offset)
    consumer._offsets[TP] = tracker
    return consumer


async def _lost_then(
    consumer: EventConsumer[Any], client: Client, assigned: set[TopicPartition]
) -> None:
    await consumer._drain({TP})
    client.commits_fail = False
    await consumer._resume_unsettled(assigned)


async def test_given_back_it_commits_and_seeks_past_what_it_finished(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="genwire.kafka.consumer")
    client = Client(group=1)
    consumer = _consumer(client)
    await consumer._drain({TP})
    assert consumer._unsettled == {TP: 4}  # not 5: offset 4 never finished
    client.commits_fail = False
    await consumer._resume_unsettled({TP, TopicPartition("t", 1)})
    assert client.commits[-1] == {TP: 4} and client.seeks == [(TP, 4)]
    assert consumer._unsettled == {} and "resumed at 4" in caplog.text
    # paused while the group's commit was asked (nothing below 4 handled meanwhile), then not
    assert client.held_while_asked == {TP} and client.held == set()


async def test_the_run_loop_leaves_a_resuming_partition_paused() -> None:
    """The run loop resumes whatever it paused once it has room again, but not a partition
    whose resume is still reading the group's commit."""
    client = Client(group=1)
    consumer = _consumer(client)
    consumer._resuming = {TP}
    client.pause(TP)
    consumer._throttle(hold=False)
    assert client.held == {TP}
    consumer._resuming = set()
    consumer._throttle(hold=False)
    assert client.held == set()


async def test_a_resume_has_one_deadline_inside_the_session(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The rebalance waits for the resume (aiokafka sends no heartbeat meanwhile): partitions
    whose coordinator does not answer are asked together and cost half the session at most,
    then their records may be delivered again and they are fetched from the group's commit."""
    tp1 = TopicPartition("t", 1)
    client = Client(group=-2)
    consumer = _consumer(client, session_timeout_ms=200)
    consumer._offsets[tp1] = consumer._offsets[TP]
    await consumer._drain({TP, tp1})
    client.commits_fail = False
    async with asyncio.timeout(2.0):
        await consumer._resume_unsettled({TP, tp1})
    assert sorted(client.asked) == [TP, tp1]  # together: one after the other, only one is asked
    assert client.seeks == [] and client.held == set() and "may be delivered again" in caplog.text


async def test_a_partition_the_run_loop_holds_stays_paused_after_its_resume() -> None:
    """A resume that ends while the run loop holds every partition (a full pool, an outage
    wait) leaves them paused: the run loop resumes them when it has room."""
    client = Client(group=1)
    consumer = _consumer(client)
    await consumer._drain({TP})
    client.commits_fail = False
    consumer._throttle(hold=True)
    await consumer._resume_unsettled({TP})
    assert client.seeks == [(TP, 4)] and client.held == {TP}
    consumer._throttle(hold=False)
    assert client.held == set()


@pytest.mark.parametrize("group", [4, 9])
async def test_the_groups_commit_at_or_past_it_stands(group: int) -> None:
    """Another member went as far or further meanwhile: its commit is never moved back."""
    client = Client(group=group)
    consumer = _consumer(client)
    await _lost_then(consumer, client, {TP})
    assert len(client.commits) == 1 and client.seeks == []  # only the drain's failed commit


async def test_a_partition_not_given_back_is_forgotten() -> None:
    client = Client(group=1)
    consumer = _consumer(client)
    await _lost_then(consumer, client, {TopicPartition("t", 1)})
    assert len(client.commits) == 1 and client.seeks == [] and consumer._unsettled == {}


async def test_a_resume_that_fails_is_told_and_delivers_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = Client(group=-1)  # the group's commit cannot be read
    consumer = _consumer(client)
    await _lost_then(consumer, client, {TP})
    assert client.seeks == [] and consumer._unsettled == {}
    assert "t-0 at 4 not resumed" in caplog.text and "may be delivered again" in caplog.text


async def test_a_drain_whose_commit_went_through_leaves_nothing_unsettled() -> None:
    client = Client(group=1, commits_fail=False)
    consumer = _consumer(client)
    await consumer._drain({TP})
    assert client.commits == [{TP: 4}] and consumer._unsettled == {}
