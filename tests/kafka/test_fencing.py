"""A record whose failure path is fenced (its partition revoked before the error result or the
dead letter went out) is the new owner's: not counted finished, so neither committed nor kept
as the position a reassignment resumes at. And a drain knows every record of its partitions:
records librdkafka still hands out for a partition being revoked are not started. Before, the
fenced publish returned as if it had published, and a record started during a drain ran on,
unwaited: its offset was committed (or resumed past) with nothing published for it anywhere.
No broker: a stand-in for the consumer client."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from genwire.errors import GenwireError, PermanentError, Rejection
from genwire.kafka.failures import RawRecord
from genwire.kafka.offsets import PartitionOffsets

from .standin import TP, Rec, offline_consumer


class Client:
    """What the run loop, ``_drain`` and ``_resume_unsettled`` call; ``group`` is the group's
    commit. ``getmany`` hands out ``queued`` once (librdkafka's queue during a revoke)."""

    def __init__(self, group: int | None) -> None:
        self.group = group
        self.commits: list[dict[TopicPartition, int]] = []
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.queued: list[ConsumerRecord[bytes, bytes]] = []
        self.handed = asyncio.Event()

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.group

    def pause(self, *tps: TopicPartition) -> None: ...

    def resume(self, *tps: TopicPartition) -> None: ...

    def paused(self) -> set[TopicPartition]:
        return set()

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        if not self.queued:
            await asyncio.sleep(0.01)
            return {}
        taken, self.queued = self.queued, []
        self.handed.set()
        return {TP: taken}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        await asyncio.sleep(0.3)  # a commit's round trip (inside the revoke)
        self.commits.append(dict(offsets))

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))


def _rec(offset: int, rid: str, value: bytes | None = None) -> ConsumerRecord[bytes, bytes]:
    v = Rec(request_id=rid).model_dump_json().encode() if value is None else value
    return ConsumerRecord(
        TP.topic, TP.partition, offset, 0, 0, rid.encode(), v, None, len(rid), len(v), []
    )


def _error_result(record: ConsumerRecord[bytes, bytes], err: GenwireError) -> list[Any]:
    return [RawRecord("genwire.generations", b"error result of " + (record.key or b""), record.key)]


def _consumer(handler: Any, client: Client, fatal: list[str], **options: Any) -> Any:
    consumer = offline_consumer(
        handler, client, failure_events=_error_result, on_fatal=fatal.append, **options
    )
    consumer.published = []

    async def send(*args: Any, **kwargs: Any) -> asyncio.Future[object]:
        consumer.published.append(args)
        done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    consumer._producer.send = send
    return consumer


def _tracker(done: int) -> PartitionOffsets:
    """Offsets below ``done`` finished and committed."""
    tracker = PartitionOffsets()
    for offset in range(done):
        tracker.started(offset)
        tracker.finished(offset)
    tracker.was_committed(done)
    return tracker


async def test_an_error_result_fenced_away_leaves_its_record_unfinished() -> None:
    fatal: list[str] = []

    async def handler(event: Rec) -> None:
        consumer._assigned.discard(TP)  # revoked while it ran: its outputs are fenced
        raise Rejection("the prompt was rejected", code="content_filtered")

    consumer = _consumer(handler, Client(group=4), fatal)
    tracker = consumer._offsets[TP] = _tracker(4)
    tracker.started(4)
    await consumer._process(TP, _rec(4, "rejected"), tracker)
    assert consumer.published == []
    assert tracker.committable() == 4  # not finished: its next owner answers it
    assert fatal == []


async def test_a_dead_letter_fenced_away_leaves_its_record_unfinished() -> None:
    """The decoder's verdict (the DLQ path, outside the handler's retries) is fenced too."""
    fatal: list[str] = []

    def undecodable(record: ConsumerRecord[bytes, bytes]) -> Any:
        consumer._assigned.discard(TP)
        raise PermanentError("not json", code="invalid_json")

    consumer = _consumer(None, Client(group=4), fatal, decoder=undecodable)
    tracker = consumer._offsets[TP] = _tracker(4)
    tracker.started(4)
    await consumer._process(TP, _rec(4, "bad", b"{not json"), tracker)
    assert consumer.published == []
    assert tracker.committable() == 4
    assert fatal == []  # a revoke, not a bug in the consumer


async def test_a_record_started_during_a_drain_is_never_counted_settled() -> None:
    """The audit's case: a record of the revoked partition dispatched while the drain waits for
    the busy ones, whose failure path would publish only after the fence."""
    fatal: list[str] = []

    async def handler(event: Rec) -> None:
        if event.request_id == "busy":
            await asyncio.sleep(0.1)
            return None
        await asyncio.sleep(0.2)
        raise Rejection("the prompt was rejected", code="content_filtered")

    client = Client(group=4)
    consumer = _consumer(handler, client, fatal, drain_timeout_s=15.0)
    tracker = consumer._offsets[TP] = _tracker(4)

    def dispatch(offset: int, rid: str) -> asyncio.Task[None]:  # what run() does
        tracker.started(offset)
        task = asyncio.create_task(consumer._process(TP, _rec(offset, rid), tracker))
        consumer._tasks[task] = TP
        task.add_done_callback(consumer._tasks.pop)
        return task

    dispatch(4, "busy")  # in flight when the revoke comes
    drain = asyncio.create_task(consumer._drain({TP}))
    await asyncio.sleep(0)
    late = dispatch(5, "rejected")  # started during the drain
    await drain
    await asyncio.wait({late})
    await consumer._resume_unsettled({TP})  # the group gives the partition back
    assert client.commits == [{TP: 5}]  # the busy one; 5 is its next owner's
    assert consumer._unsettled == {}
    assert client.seeks == []  # given back, it starts at 5 again: not skipped
    assert consumer.published == []  # cancelled at the fence: its next owner answers it
    assert fatal == []


async def test_records_handed_out_during_a_drain_are_not_started() -> None:
    """librdkafka hands out the queued records of a partition being revoked until the revoke's
    listener returns: the run loop leaves them to the new owner (uncommitted here)."""
    fatal: list[str] = []
    started: list[str] = []
    busy = asyncio.Event()

    async def handler(event: Rec) -> None:
        started.append(event.request_id)
        if event.request_id == "busy":
            busy.set()
            await asyncio.sleep(0.2)

    client = Client(group=4)
    consumer = _consumer(handler, client, fatal, drain_timeout_s=15.0)
    consumer._offsets[TP] = _tracker(4)
    client.queued = [_rec(4, "busy")]
    run = asyncio.create_task(consumer.run())
    try:
        await busy.wait()
        drain = asyncio.create_task(consumer._drain({TP}))
        await asyncio.sleep(0)
        client.handed.clear()
        client.queued = [_rec(5, "late")]  # still handed out: the listener has not returned
        await client.handed.wait()
        await drain
    finally:
        consumer._stopping = True
        await run
    assert started == ["busy"]
    assert client.commits and all(c == {TP: 5} for c in client.commits)  # 5: the next owner's
    assert consumer._unsettled == {}
