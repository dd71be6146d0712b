"""A full worker pool pauses the partitions; the consumer resumes when a record finishes, not at
its next poll. No broker: a stand-in for the aiokafka consumer whose fetch of paused partitions
holds for as long as it is asked to (scaled up, so waiting on it never ends within the test)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from genwire.kafka import EventConsumer

from .standin import TP, Rec, offline_consumer


class PausingConsumer:
    """Hands out ``records`` ``max_records`` at a time; nothing while paused, after holding the
    fetch ``timeout_ms`` seconds (a thousand times what it is asked: a poll that waits on
    it outlasts the test)."""

    def __init__(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        self.records = records
        self._paused: set[TopicPartition] = set()
        self.held_polls = 0

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def pause(self, *tps: TopicPartition) -> None:
        self._paused.update(tps)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def resume(self, *tps: TopicPartition) -> None:
        self._paused.difference_update(tps)

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        if TP in self._paused or not self.records:
            self.held_polls += 1
            await asyncio.sleep(timeout_ms)  # ms taken as seconds
            return {}
        n = max_records or len(self.records)
        taken, self.records = self.records[:n], self.records[n:]
        return {TP: taken}


def _record(offset: int) -> ConsumerRecord[bytes, bytes]:
    rid = f"r{offset}"
    return ConsumerRecord(
        topic=TP.topic,
        partition=TP.partition,
        offset=offset,
        timestamp=int(time.time() * 1000),
        timestamp_type=0,
        key=rid.encode(),
        value=Rec(request_id=rid).model_dump_json().encode(),
        checksum=None,
        serialized_key_size=len(rid),
        serialized_value_size=0,
        headers=[],
    )


async def _no_commit(only: object = None) -> None:
    return None


def _consuming(
    handler: Any, records: list[ConsumerRecord[bytes, bytes]], concurrency: int, **options: Any
) -> tuple[EventConsumer[Any], PausingConsumer]:
    """An ``EventConsumer`` of ``TP`` reading ``records`` from the stand-in, committing
    nothing (no broker)."""
    fake = PausingConsumer(records)
    consumer = offline_consumer(handler, fake, concurrency=concurrency, **options)
    consumer._commit = _no_commit  # type: ignore[method-assign]
    return consumer, fake


async def test_a_full_pool_resumes_when_a_record_finishes() -> None:
    done: list[str] = []
    all_done = asyncio.Event()

    async def handler(event: Rec) -> None:
        await asyncio.sleep(0)
        done.append(event.request_id)
        if len(done) == 20:
            all_done.set()

    consumer, fake = _consuming(handler, [_record(i) for i in range(20)], concurrency=2)
    consumer._hold_poll_s = 3600.0  # only a finished record may end the wait for room
    runner = asyncio.create_task(consumer.run())
    try:
        async with asyncio.timeout(30):  # a hang guard: every record is done in far less
            await all_done.wait()
    finally:
        consumer._stopping = True
        runner.cancel()
    assert done == [f"r{i}" for i in range(20)]
    assert fake.held_polls >= 1  # the pool did fill: the partition was paused and polled


def _keyed(offset: int, key: str) -> ConsumerRecord[bytes, bytes]:
    return dataclasses.replace(_record(offset), key=key.encode())


async def test_records_of_one_key_run_in_order_and_other_keys_do_not_wait() -> None:
    # A request's streamed chunks: the first one's handler pauses (a tokenizer's first load);
    # the next chunk must not run (and publish) before it, another request must not wait.
    log: list[str] = []
    released = asyncio.Event()
    other_done = asyncio.Event()
    finished = asyncio.Event()

    async def handler(event: Rec) -> None:
        log.append(f"start {event.request_id}")
        if event.request_id == "r0":
            await released.wait()
        log.append(f"end {event.request_id}")
        if event.request_id == "r2":
            other_done.set()
        if len([x for x in log if x.startswith("end")]) == 4:
            finished.set()

    records = [_keyed(0, "a"), _keyed(1, "a"), _keyed(2, "b"), _keyed(3, "a")]
    consumer, _ = _consuming(handler, records, concurrency=8, ordered_keys=True)
    runner = asyncio.create_task(consumer.run())
    try:
        async with asyncio.timeout(30):
            await other_done.wait()  # the other key went through meanwhile
            await asyncio.sleep(0.05)  # time for a wrongly started r1 to show
            assert "start r1" not in log and "start r3" not in log
            released.set()
            await finished.wait()
            if consumer._tasks:  # their done callbacks have run once this returns
                await asyncio.wait(set(consumer._tasks))
    finally:
        consumer._stopping = True
        runner.cancel()
    assert [x for x in log if x[-2:] in ("r0", "r1", "r3")] == [
        "start r0",
        "end r0",
        "start r1",
        "end r1",
        "start r3",
        "end r3",
    ]
    assert not consumer._last_of_key  # nothing kept once they are done


async def test_without_ordered_keys_a_records_copy_runs_beside_it() -> None:
    # genwire.prepared: a shadow copy or a redelivered duplicate shares the request's key and
    # must not wait for the whole generation (inference drops a duplicate that is running).
    started: list[str] = []
    both = asyncio.Event()
    released = asyncio.Event()

    async def handler(event: Rec) -> None:
        started.append(event.request_id)
        if len(started) == 2:
            both.set()
        await released.wait()

    consumer, _ = _consuming(handler, [_keyed(0, "a"), _keyed(1, "a")], concurrency=8)
    runner = asyncio.create_task(consumer.run())
    try:
        async with asyncio.timeout(30):
            await both.wait()  # the second started while the first still ran
    finally:
        released.set()
        consumer._stopping = True
        runner.cancel()
    assert started == ["r0", "r1"] and not consumer._last_of_key
