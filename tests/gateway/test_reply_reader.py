"""The reply reader's rebalance bookkeeping, with a stand-in for the Kafka consumer."""

from __future__ import annotations

from unittest import mock

import pytest
from aiokafka import TopicPartition
from genwire_gateway.replies import ReplyReader, WaiterRegistry
from opentelemetry.trace import NoOpTracer

from genwire.kafka.consumer import FETCH_MAX_WAIT_MS, fetcher_tick_ms
from genwire.topics import ReplyTo

TOPIC = "genwire.replies"


class FakeConsumer:
    """Positions: a new partition's end is 100; ``seek`` is recorded, and which partitions
    are paused."""

    def __init__(self) -> None:
        self.seeks: dict[int, int] = {}
        self.paused: set[int] = set()

    def pause(self, *tps: TopicPartition) -> None:
        self.paused |= {tp.partition for tp in tps}

    def resume(self, *tps: TopicPartition) -> None:
        self.paused -= {tp.partition for tp in tps}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[tp.partition] = offset

    async def position(self, tp: TopicPartition) -> int:
        return 100


def _tps(*partitions: int) -> list[TopicPartition]:
    return [TopicPartition(TOPIC, p) for p in partitions]


def _reader(read: int = 24) -> tuple[ReplyReader, WaiterRegistry, FakeConsumer]:
    registry = WaiterRegistry()
    fake = FakeConsumer()
    with mock.patch("genwire_gateway.replies.AIOKafkaConsumer", lambda **_: fake):
        reader = ReplyReader(
            "127.0.0.1:1", registry, NoOpTracer(), topic=TOPIC, read_partitions=read
        )
    return reader, registry, fake


async def _rebalance(
    reader: ReplyReader, fake: FakeConsumer, old: list[TopicPartition], new: list[TopicPartition]
) -> None:
    await reader.on_partitions_revoked(old)
    fake.paused.clear()  # aiokafka: a new assignment starts with nothing paused
    await reader.on_partitions_assigned(new)


async def test_a_request_names_a_partition_this_instance_owns() -> None:
    reader, _, fake = _reader()
    assert reader.reply_to("r") is None  # nothing assigned yet
    await reader.on_partitions_revoked([])
    await reader.on_partitions_assigned(_tps(4, 7))
    assert reader.partitions == (4, 7)
    named = {reader.reply_to(f"r{i}") for i in range(50)}
    assert named == {ReplyTo(TOPIC, 4), ReplyTo(TOPIC, 7)}
    assert reader.reasons() == [] and fake.paused == set()


async def test_an_instance_reads_only_the_partitions_it_names_the_same_ones_after_a_rebalance() -> (
    None
):
    reader, registry, fake = _reader(read=1)
    await reader.on_partitions_assigned(_tps(*range(24)))  # alone: all 24 are its own
    assert reader.partitions == tuple(range(24))
    assert {reader.reply_to(f"r{i}") for i in range(50)} == {ReplyTo(TOPIC, 0)}
    assert fake.paused == set(range(1, 24))  # never fetched: nobody names them
    waiter = registry.register("a", reply_partition=0)
    # A second instance joins: the sticky assignment keeps 0 here; 0 stays the named one.
    await _rebalance(reader, fake, _tps(*range(24)), _tps(0, 2, 5, 9))
    assert reader.reply_to("b") == ReplyTo(TOPIC, 0)
    assert fake.paused == {2, 5, 9} and not waiter.moved.done()
    # 0 goes to another instance: its waiter looks in Redis, another partition is named.
    await _rebalance(reader, fake, _tps(0, 2, 5, 9), _tps(2, 5))
    assert waiter.moved.done()
    assert reader.reply_to("b") == ReplyTo(TOPIC, 2) and fake.paused == {5}


async def test_a_partition_a_waiter_names_is_never_paused() -> None:
    reader, registry, fake = _reader(read=1)
    await reader.on_partitions_assigned(_tps(3, 4))
    waiter = registry.register("a", reply_partition=4)  # e.g. named before a restart of read
    await _rebalance(reader, fake, _tps(3, 4), _tps(3, 4))
    assert 4 not in fake.paused and not waiter.moved.done()


async def test_a_rebalance_moves_the_waiters_of_lost_partitions_only() -> None:
    reader, registry, fake = _reader()
    await reader.on_partitions_assigned(_tps(1, 2))
    reader._next[1] = 42  # read up to here before the rebalance
    kept = registry.register("a", reply_partition=1)
    lost = registry.register("b", reply_partition=2)
    await reader.on_partitions_revoked(_tps(1, 2))
    # During the rebalance requests go on naming the partitions owned so far.
    assert reader.reply_to("c") in {ReplyTo(TOPIC, 1), ReplyTo(TOPIC, 2)}
    during = registry.register("c", reply_partition=2)
    await reader.on_partitions_assigned(_tps(1, 3))
    assert fake.seeks == {1: 42}  # a partition that came back: read on from where we were
    assert reader._next[3] == 100  # a new one: from its end, pinned
    assert kept.direct and not kept.moved.done()
    assert not lost.direct and lost.moved.done()
    assert during.moved.done()
    assert reader.metrics.moved._value.get() == 2


async def test_no_partition_makes_the_instance_unready_but_it_still_serves() -> None:
    reader, _, _ = _reader()
    await reader.on_partitions_assigned([])  # more instances than partitions
    assert reader.reply_to("r") is None  # its waiters look in Redis
    assert reader.reasons() and "no partition of genwire.replies" in reader.reasons()[0]


async def test_kept_partitions_are_read_while_new_ones_are_positioned() -> None:
    # aiokafka fetches while the assignment callback awaits a new partition's position: a kept
    # partition must already be owned then, or the replies fetched meanwhile are skipped for
    # good and their callers wait out their deadline.
    reader, registry, fake = _reader()
    await reader.on_partitions_assigned(_tps(1))
    reader._next[1] = 42
    waiter = registry.register("a", reply_partition=1)
    await reader.on_partitions_revoked(_tps(1))
    owned_while_positioning: list[tuple[int, ...]] = []

    async def position(tp: TopicPartition) -> int:
        owned_while_positioning.append(reader.partitions)
        return 100

    fake.position = position  # type: ignore[method-assign]
    await reader.on_partitions_assigned(_tps(1, 5))
    assert owned_while_positioning == [(1,)]
    assert reader.partitions == (1, 5) and fake.seeks == {1: 42}
    assert not waiter.moved.done()


async def test_a_partition_that_cannot_be_positioned_is_never_named() -> None:
    reader, _, fake = _reader()

    async def position(tp: TopicPartition) -> int:
        raise RuntimeError("the consumer is stopping")

    fake.position = position  # type: ignore[method-assign]
    await reader.on_partitions_assigned(_tps(2, 3))
    assert reader.partitions == ()
    assert reader.reply_to("r") is None  # its callers look in Redis, never hang


async def test_a_dying_reader_sends_every_waiter_to_redis() -> None:
    reader, registry, _ = _reader()
    await reader.on_partitions_assigned(_tps(1, 2))
    waiters = [registry.register(f"r{p}", reply_partition=p) for p in (1, 2)]

    async def broken(timeout_ms: int) -> None:
        raise RuntimeError("fetch failed")

    reader._fetch_once = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="fetch failed"):
        await reader.run()
    assert all(w.moved.done() for w in waiters)


async def test_the_reply_reader_wakes_on_the_fetchers_tick() -> None:
    reader = ReplyReader("127.0.0.1:1", WaiterRegistry(), NoOpTracer(), topic=TOPIC)
    try:
        assert reader._consumer._fetch_max_wait_ms == FETCH_MAX_WAIT_MS
        assert reader._consumer._consumer_timeout == fetcher_tick_ms(FETCH_MAX_WAIT_MS) / 1000
    finally:
        await reader._consumer.stop()  # never started: nothing to close but its handle
