"""A stop's last commit is bounded (``STOP_COMMIT_S``): during a Kafka outage aiokafka retries a
commit for as long as it finds no coordinator, and gives up only once the client is closed,
which the stop did after that commit. So a service that gave up after the outage budget did not
exit until Kafka came back. What is not committed is logged (its records are delivered again).
No broker: a stand-in client whose commit never answers; the broker case is
tests/common/test_reliability_kafka.py."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka import TopicPartition

from genwire.kafka import consumer as consumer_module
from genwire.kafka.offsets import PartitionOffsets

from .standin import TP, Rec, offline_consumer


class Client:
    """A consumer client whose commit hangs (``answers=False``) as aiokafka's does without a
    coordinator, or answers at once."""

    def __init__(self, answers: bool) -> None:
        self.answers = answers
        self.commits: list[dict[TopicPartition, int]] = []
        self.stopped = False

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if not self.answers:
            await asyncio.Event().wait()
        self.commits.append(dict(offsets))

    async def stop(self) -> None:
        self.stopped = True


async def _nothing(event: Rec) -> None:
    return None


def _finished(done: int, committed: int) -> PartitionOffsets:
    tracker = PartitionOffsets()
    for offset in range(done):
        tracker.started(offset)
        tracker.finished(offset)
    tracker.was_committed(committed)
    return tracker


async def test_a_stop_during_an_outage_is_bounded_and_says_what_it_left(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(consumer_module, "STOP_COMMIT_S", 0.2)
    client = Client(answers=False)
    consumer = offline_consumer(_nothing, client)
    consumer._offsets[TP] = _finished(6, committed=4)
    with caplog.at_level(logging.WARNING, logger="genwire.kafka.consumer"):
        async with asyncio.timeout(5.0):  # before: until Kafka came back
            await consumer.stop(timeout_s=0.1)
    assert client.stopped  # closed after the commit it gave up on
    assert "finished records not committed (no answer in 0.2 s): t-0 up to 6" in caplog.text


async def test_a_stop_still_commits_what_finished() -> None:
    client = Client(answers=True)
    consumer = offline_consumer(_nothing, client)
    consumer._offsets[TP] = _finished(6, committed=4)
    await consumer.stop(timeout_s=0.1)
    assert client.commits == [{TP: 6}]
    assert client.stopped


class CutShort(Client):
    """aiokafka's close in an outage: its fetch, cancelled while sleeping out a backoff,
    re-raises that cancel from the close (aio-libs/aiokafka#647); the connections stay open."""

    def __init__(self) -> None:
        super().__init__(answers=True)
        self._client = self  # aiokafka's connections
        self.closed = False

    async def stop(self) -> None:
        fetch = asyncio.ensure_future(asyncio.sleep(0.1))
        await asyncio.sleep(0)
        fetch.cancel()
        await fetch

    async def close(self) -> None:
        self.closed = True


async def test_a_close_cut_short_by_the_clients_own_fetch_does_not_end_the_stop() -> None:
    client = CutShort()
    consumer = offline_consumer(_nothing, client)
    await consumer.stop(timeout_s=0.1)  # before: CancelledError, out of the service's stop
    assert client.closed  # its connections closed all the same


async def test_a_cancelled_stop_is_still_cancelled() -> None:
    client = Client(answers=True)

    async def hangs() -> None:
        await asyncio.Event().wait()

    client.stop = hangs  # type: ignore[method-assign]
    consumer = offline_consumer(_nothing, client)
    stopping = asyncio.create_task(consumer.stop(timeout_s=0.1))
    await asyncio.sleep(0.05)
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
