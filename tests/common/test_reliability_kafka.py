"""The consumer's failure paths against the real broker: outages waited out, parking and replay,
rejections without DLQ, producer recovery from fatal errors, giving up loudly, no-group mode."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError, OutOfOrderSequenceNumber
from aiokafka.structs import ConsumerRecord
from genwire_stack import down, ensure_up
from genwire_stack.kafka_node import Kafka
from opentelemetry.sdk.trace import TracerProvider

from genwire.errors import GenwireError, Rejection, RetryableError
from genwire.events import ControlEvent, Event, GenerationResult, PreparedRequest, dump
from genwire.health import Dependencies
from genwire.kafka import EventConsumer, EventProducer, ensure_topics
from genwire.kafka.consumer import STOP_COMMIT_S
from genwire.kafka.rdkafka_consumer import STOP_TIMEOUT_S
from genwire.kafka.replay import ParkedRecord, Replayer, decode_parked
from genwire.settings import CommonSettings
from genwire.telemetry import semconv as sc
from genwire.topics import Topic, TopicSpec

from .support import _committed, _committed_soon, _prepared, _read, eventually

# Each test runs on both clients of the data path (``kafka_client``, tests/conftest.py).
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("kafka_client")]

Env = tuple[str, str, EventProducer]


def _failure_events(record: ConsumerRecord[bytes, bytes], err: GenwireError) -> Sequence[Event]:
    rid = (record.key or b"").decode()
    return [GenerationResult(request_id=rid, error={"code": err.code, "message": err.message})]


@contextlib.asynccontextmanager
async def _running(consumer: EventConsumer[Any]) -> AsyncIterator[EventConsumer[Any]]:
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    try:
        yield consumer
    finally:
        await consumer.stop(timeout_s=1.0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _make(
    bootstrap: str, topic: str, producer: EventProducer, handler: Callable[..., Any], **kw: Any
) -> EventConsumer[Any]:
    options: dict[str, Any] = {
        "topic": topic,
        "group_id": f"test-{uuid.uuid4().hex[:8]}",
        "model": PreparedRequest,
        "handler": handler,
        "producer": producer,
        "bootstrap_servers": bootstrap,
        "stage": "test",
        "concurrency": 8,
        "retry_backoff_s": 0.05,
        "retry_backoff_max_s": 0.2,
        "failure_events": _failure_events,
        "tracer": TracerProvider().get_tracer("test"),  # real spans: trace headers travel
    }
    options.update(kw)
    return EventConsumer(**options)


async def test_an_outage_is_waited_out_and_new_records_wait_meanwhile(env: Env) -> None:
    """A dependency down for longer than the old 5 retries: no error, no DLQ, and the
    consumer takes no new records while it waits (they are handled after it), also one that
    arrives while the fetch begun before the wait is still pending (IDLE_POLL_MS)."""
    bootstrap, topic, producer = env
    run = uuid.uuid4().hex[:8]
    # The outage: 3 s from the first record's first attempt (not from the test's start: the
    # group's join and first fetch can take a while on a busy machine).
    attempts: list[float] = []
    order: list[str] = []
    deps = Dependencies("test", unready_after_s=0.5)

    async def handler(event: PreparedRequest) -> Event:
        if event.request_id.endswith("first"):
            attempts.append(time.monotonic())
            if attempts[-1] < attempts[0] + 3.0:
                raise RetryableError("redis: connection refused", dependency="redis")
        order.append(event.request_id)
        return GenerationResult(request_id=event.request_id, text="done")

    first, later = f"{run}-first", f"{run}-later"
    await (await producer.send(topic, dump(_prepared(first)), key=b"same"))
    consumer = _make(bootstrap, topic, producer, handler, outage_budget_s=30.0, dependencies=deps)
    async with _running(consumer):
        await eventually(deps.reasons)  # down past the 0.5 s grace, 2.5 s before it is back
        assert "redis unavailable" in deps.reasons()[0]
        # Sent at once: the run loop's fetch begun after the first record may still be pending.
        await (await producer.send(topic, dump(_prepared(later)), key=b"same"))
        keys = {first.encode(), later.encode()}
        results = await _read(bootstrap, Topic.RESULTS, keys, timeout_s=30)
        await eventually(lambda: len(order) == 2)
    assert order == [first, later]  # the later record waited for the outage to end
    assert all(GenerationResult.model_validate_json(r.value).error is None for r in results)
    assert deps.reasons() == [] and deps.down_for("redis") is None


async def test_waiting_records_resume_together_soon_after_the_dependency_is_back(
    env: Env,
) -> None:
    """Records whose backoff has grown long (first delay 20 s here) do not sleep it out: one
    of them probes the dependency every retry_probe_s, and its success wakes the others."""
    bootstrap, topic, producer = env
    run = uuid.uuid4().hex[:8]
    up = asyncio.Event()
    tried: set[str] = set()
    done: set[str] = set()

    async def handler(event: PreparedRequest) -> Event:
        if not up.is_set():
            tried.add(event.request_id)
            raise RetryableError("redis: connection refused", dependency="redis")
        done.add(event.request_id)
        return GenerationResult(request_id=event.request_id, text="done")

    rids = [f"{run}-{i}" for i in range(4)]
    for rid in rids:  # one partition: one fetch takes them together
        await (await producer.send(topic, dump(_prepared(rid)), key=b"same"))
    consumer = _make(
        bootstrap,
        topic,
        producer,
        handler,
        outage_budget_s=60.0,
        retry_backoff_s=20.0,
        retry_backoff_max_s=20.0,
        retry_probe_s=0.1,
    )
    async with _running(consumer):
        # At least two wait (the prober and one it must wake); a fetch takes all four here.
        await eventually(lambda: len(tried) >= 2, timeout_s=15)
        up.set()
        # Each record's own backoff is 10-20 s: all four answered well within it.
        results = await _read(bootstrap, Topic.RESULTS, {r.encode() for r in rids}, timeout_s=8)
    assert done == set(rids)
    assert all(GenerationResult.model_validate_json(r.value).error is None for r in results)


async def test_past_the_budget_a_record_is_parked_then_replayed(env: Env) -> None:
    """Budget exhausted: the record goes to genwire.retry (not the DLQ, no error result), and
    the stage's replayer brings it back after the delay, when the dependency is up again."""
    bootstrap, topic, producer = env
    rid = f"park-{uuid.uuid4().hex[:8]}"
    healthy = asyncio.Event()

    async def handler(event: PreparedRequest) -> Event:
        if not healthy.is_set():
            raise RetryableError("triton: UNAVAILABLE", dependency="triton")
        return GenerationResult(request_id=event.request_id, text="after the replay")

    await (await producer.send(topic, dump(_prepared(rid)), key=rid.encode()))
    consumer = _make(bootstrap, topic, producer, handler, outage_budget_s=0.5, replay_delay_s=1.0)
    replayer = _make(
        bootstrap,
        Topic.RETRY,
        producer,
        Replayer({topic}).handle,
        model=ParkedRecord,
        decoder=decode_parked,
        failure_events=None,
        group_id=f"test-retry-{uuid.uuid4().hex[:8]}",
    )
    async with _running(consumer):
        (parked,) = await _read(bootstrap, Topic.RETRY, {rid.encode()})
        headers = dict(parked.headers)
        assert headers[sc.HEADER_RETRY_TOPIC] == topic.encode()
        assert headers[sc.HEADER_RETRY_COUNT] == b"0"
        assert headers[sc.HEADER_RETRY_CODE] == b"unavailable"
        assert int(headers[sc.HEADER_RETRY_NOT_BEFORE]) > time.time() * 1000
        assert "traceparent" in headers  # the replay continues the request's trace
        assert await _committed_soon(bootstrap, consumer.group_id or "", topic, 1) == 1
        healthy.set()
        async with _running(replayer):
            (result,) = await _read(bootstrap, Topic.RESULTS, {rid.encode()}, timeout_s=60)
    assert GenerationResult.model_validate_json(result.value).text == "after the replay"


async def test_a_record_out_of_tries_is_parked_without_holding_the_stage(env: Env) -> None:
    """``RetryableError.max_tries`` (inference's memory failures): parked after that many tries
    in a row, long before the outage budget; the stage, which takes no new record while one
    retries, goes on with the records behind it. Tries of another error before them do not
    count (the dependency's outage, waited out, then a batch short of memory), and a bounded
    error, maybe the record's own, marks the dependency up, not down (it answered)."""
    bootstrap, topic, producer = env
    stuck, behind = (f"{what}-{uuid.uuid4().hex[:8]}" for what in ("tries", "behind"))
    tries: list[str] = []
    message = "triton: generation failed: CUDA error: out of memory"
    deps = Dependencies("test", unready_after_s=0.0)

    async def handler(event: PreparedRequest) -> Event:
        if event.request_id == stuck:
            tries.append("down" if len(tries) < 2 else "memory")
            if tries[-1] == "down":
                raise RetryableError("triton: UNAVAILABLE", dependency="triton")
            raise RetryableError(message, dependency="triton", max_tries=3)
        return GenerationResult(request_id=event.request_id, text="served")

    await (await producer.send(topic, dump(_prepared(stuck)), key=stuck.encode()))
    consumer = _make(bootstrap, topic, producer, handler, outage_budget_s=600.0, dependencies=deps)
    async with _running(consumer):
        await eventually(lambda: "memory" in tries, timeout_s=30)
        # Sent while the first one retries: without the bound it waited the whole budget.
        await (await producer.send(topic, dump(_prepared(behind)), key=behind.encode()))
        (parked,) = await _read(bootstrap, Topic.RETRY, {stuck.encode()}, timeout_s=30)
        (result,) = await _read(bootstrap, Topic.RESULTS, {behind.encode()}, timeout_s=30)
    assert tries == ["down", "down", "memory", "memory", "memory"]
    assert dict(parked.headers)[sc.HEADER_RETRY_REASON] == message.encode()
    assert GenerationResult.model_validate_json(result.value).text == "served"
    # Triton answered the memory failures: its outage before them is over, not renewed.
    assert deps.down_for("triton") is None


async def test_replays_exhausted_dead_letter_with_an_error_result(env: Env) -> None:
    bootstrap, topic, producer = env
    rid = f"exhausted-{uuid.uuid4().hex[:8]}"

    async def handler(event: PreparedRequest) -> Event:
        raise RetryableError("triton: UNAVAILABLE", dependency="triton")

    headers = [(sc.HEADER_RETRY_COUNT, b"2")]  # replayed twice already
    await (await producer.send(topic, dump(_prepared(rid)), key=rid.encode(), headers=headers))
    consumer = _make(bootstrap, topic, producer, handler, outage_budget_s=0.3, max_replays=2)
    async with _running(consumer):
        (dead,) = await _read(bootstrap, Topic.DLQ, {rid.encode()})
        (result,) = await _read(bootstrap, Topic.RESULTS, {rid.encode()})
    assert dict(dead.headers)[sc.HEADER_DLQ_CODE] == b"unavailable"
    error = GenerationResult.model_validate_json(result.value).error
    assert error is not None and "2 replays" in error.message


async def test_a_rejection_is_an_error_result_but_no_dead_letter(env: Env) -> None:
    bootstrap, topic, producer = env
    run = uuid.uuid4().hex[:8]
    rejected, poison = f"{run}-filtered", f"{run}-poison"

    async def handler(event: PreparedRequest) -> Event:
        raise Rejection("the prompt was rejected by rule 'x'", code="content_filtered")

    await (await producer.send(topic, dump(_prepared(rejected)), key=rejected.encode()))
    await (await producer.send(topic, b"\xff not json", key=poison.encode()))
    consumer = _make(bootstrap, topic, producer, handler)
    async with _running(consumer):
        results = await _read(bootstrap, Topic.RESULTS, {rejected.encode(), poison.encode()})
        dead = await _read(bootstrap, Topic.DLQ, {poison.encode()})
        with pytest.raises(TimeoutError):  # no DLQ record for the rejection, however long
            await _read(bootstrap, Topic.DLQ, {rejected.encode()}, timeout_s=3)
    codes = {r.key: GenerationResult.model_validate_json(r.value).error for r in results}
    assert codes[rejected.encode()] is not None
    assert codes[rejected.encode()].code == "content_filtered"  # type: ignore[union-attr]
    assert len(dead) == 1 and dead[0].key == poison.encode()


@pytest.mark.parametrize("where", ["send", "future"])
async def test_the_producer_replaces_itself_after_a_fatal_error(env: Env, where: str) -> None:
    """OutOfOrderSequenceNumber (aiokafka#1017) used to stall a partition for good: now the
    client is replaced and the record is published on the new one — whether send() raises it
    or, as after a real outage, the batch's future fails with it."""
    bootstrap, topic, producer = env
    rid = f"fatal-{where}-{uuid.uuid4().hex[:8]}"
    own = EventProducer(bootstrap)
    await own.start()
    inner_send = own._producer.send
    failures = iter([True])

    async def failing_once(*args: Any, **kwargs: Any) -> Any:
        if not next(failures, False):
            return await inner_send(*args, **kwargs)
        if where == "send":
            raise OutOfOrderSequenceNumber()
        failed: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        failed.set_exception(OutOfOrderSequenceNumber())
        return failed

    own._producer.send = failing_once  # type: ignore[method-assign]

    async def handler(event: PreparedRequest) -> Event:
        return GenerationResult(request_id=event.request_id, text="published")

    await (await producer.send(topic, dump(_prepared(rid)), key=rid.encode()))
    consumer = _make(bootstrap, topic, own, handler)
    try:
        async with _running(consumer):
            (result,) = await _read(bootstrap, Topic.RESULTS, {rid.encode()})
    finally:
        await own.stop()
    assert GenerationResult.model_validate_json(result.value).text == "published"
    assert own.resets == 1


async def test_nothing_publishable_within_the_budget_gives_up_loudly(env: Env) -> None:
    """Even the error path cannot publish: the service is told to stop (it exits and its
    supervisor restarts it), the record stays uncommitted and its partition reports a stall."""
    bootstrap, topic, producer = env
    rid = f"giveup-{uuid.uuid4().hex[:8]}"
    own = EventProducer(bootstrap)
    await own.start()

    async def broker_gone(*args: Any, **kwargs: Any) -> Any:
        raise KafkaTimeoutError()

    own._producer.send = broker_gone  # type: ignore[method-assign]
    fatal: list[str] = []

    async def handler(event: PreparedRequest) -> Event:
        return GenerationResult(request_id=event.request_id, text="never published")

    await (await producer.send(topic, dump(_prepared(rid)), key=rid.encode()))
    consumer = _make(bootstrap, topic, own, handler, outage_budget_s=1.0, on_fatal=fatal.append)
    try:
        async with _running(consumer):
            await eventually(lambda: fatal)
            assert consumer.stalled(0.5)  # the record pins its partition: reported
            assert await _committed(bootstrap, consumer.group_id or "", topic) == 0
    finally:
        own._producer.send = producer._producer.send  # type: ignore[method-assign]
        await own.stop()
    assert "could not publish to Kafka" in fatal[0]


async def test_no_group_reads_from_now_on_and_leaves_nothing_behind(
    env: Env, infra: CommonSettings
) -> None:
    bootstrap, _, producer = env
    seen: list[str] = []
    before = f"before-{uuid.uuid4().hex[:8]}"
    after = f"after-{uuid.uuid4().hex[:8]}"
    await producer.publish_and_wait(ControlEvent(request_id=before, action="cancel"))

    async def handler(event: ControlEvent) -> None:
        seen.append(event.request_id)

    consumer = _make(bootstrap, Topic.CONTROL, producer, handler, model=ControlEvent, group_id=None)
    async with _running(consumer):
        assert consumer.ready
        await producer.publish_and_wait(ControlEvent(request_id=after, action="cancel"))
        await eventually(lambda: after in seen)
        # No group: finished is progress, at the commit loop's next turn.
        await eventually(lambda: set(consumer.progress().values()) == {0.0}, timeout_s=5)
    assert before not in seen


async def test_a_rebalance_fences_work_on_revoked_partitions(env: Env) -> None:
    """A second member joins while the first is busy on both partitions: the revoked one's
    record is cancelled after the drain timeout and handled by the new owner alone; the kept
    one finishes where it was. Every request gets exactly one result."""
    bootstrap, topic, producer = env
    run = uuid.uuid4().hex[:8]
    rids = [f"{run}-p0", f"{run}-p1"]
    for partition, rid in enumerate(rids):
        value = dump(_prepared(rid))
        await (await producer._producer.send(topic, value, key=rid.encode(), partition=partition))
    release, started, finished = asyncio.Event(), set[str](), list[str]()

    async def slow(event: PreparedRequest) -> Event:
        started.add(event.request_id)
        await release.wait()  # busy until told; cancelled if its partition moves
        finished.append(event.request_id)
        return GenerationResult(request_id=event.request_id, text="first member")

    moved: list[str] = []

    async def quick(event: PreparedRequest) -> Event:
        moved.append(event.request_id)
        return GenerationResult(request_id=event.request_id, text="second member")

    group = f"test-rebalance-{run}"
    first = _make(bootstrap, topic, producer, slow, group_id=group, drain_timeout_s=0.5)
    second = _make(bootstrap, topic, producer, quick, group_id=group)
    async with _running(first):
        await eventually(lambda: len(started) == 2)
        async with _running(second):
            await eventually(lambda: moved, timeout_s=60)  # one partition moved to it
            release.set()  # the first member may now finish what it still owns
            await eventually(lambda: finished)
    # Both members stopped: whatever either published is on the topic now.
    results = await _read(bootstrap, Topic.RESULTS, {r.encode() for r in rids}, 30)
    texts: dict[str, set[str]] = {}
    for r in results:
        text = GenerationResult.model_validate_json(r.value).text
        texts.setdefault((r.key or b"").decode(), set()).add(text)
    (revoked,) = moved
    (kept,) = set(rids) - {revoked}
    assert texts[revoked] == {"second member"}  # the first member's work there was cancelled
    assert texts[kept] == {"first member"} and finished == [kept]


async def test_a_partition_given_back_starts_after_the_records_finished_before(env: Env) -> None:
    """The resume on each real client, without an outage: a consumer that holds a finished
    position for a partition (as a failed revoke's commit leaves it) is given the partition,
    commits the position from its assign listener and starts there, past the group's commit
    (none here: the group is new). The other partition starts at the group's commit as usual."""
    bootstrap, topic, producer = env
    for n in range(5):
        value = dump(_prepared(f"p0-{n}"))
        await (await producer._producer.send(topic, value, key=b"k", partition=0))
    await (await producer._producer.send(topic, dump(_prepared("p1-0")), key=b"k", partition=1))
    handled: list[str] = []

    async def handler(event: PreparedRequest) -> None:
        handled.append(event.request_id)

    consumer = _make(bootstrap, topic, producer, handler)
    consumer._unsettled = {TopicPartition(topic, 0): 3}  # 0-2 finished here before the revoke
    async with _running(consumer):
        await eventually(lambda: len(handled) >= 3)
        assert await _committed_soon(bootstrap, consumer.group_id or "", topic, 5 + 1) == 6
    assert sorted(handled) == ["p0-3", "p0-4", "p1-0"]


@pytest.mark.slow
async def test_partitions_given_back_after_an_outage_resume_after_what_was_finished(
    infra: CommonSettings, tmp_path: Path, kafka_client: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker outage longer than the session, on a private broker: records finished before it
    but not yet committed are not handled again once the group gives the partition back. On
    librdkafka the session is lost (a new member, the old generation's commits refused), and
    before ``_resume_unsettled`` every record finished since the last commit was redelivered;
    aiokafka keeps its member and commits on. One commit goes out at the first record, then the
    commit loop sleeps a minute, so the other five are uncommitted when the broker stops."""
    caplog.set_level(logging.INFO, logger="genwire.kafka.consumer")
    kafka = Kafka.beside(infra, CommonSettings(home=tmp_path))
    catalog = {"kafka": kafka}
    await asyncio.to_thread(ensure_up, ["kafka"], settings=kafka.settings, catalog=catalog)
    producer = EventProducer(kafka.bootstrap)
    try:
        await ensure_topics(kafka.bootstrap, [TopicSpec("in", 1, 3_600_000)])
        await producer.start()
        handled: list[str] = []

        async def handler(event: PreparedRequest) -> None:
            handled.append(event.request_id)

        async def send(rid: str) -> None:
            await (await producer.send("in", dump(_prepared(rid)), key=rid.encode()))

        consumer = _make(
            kafka.bootstrap,
            "in",
            producer,
            handler,
            session_timeout_ms=6_000,
            heartbeat_interval_ms=2_000,
            commit_interval_s=60.0,
        )
        async with _running(consumer):
            await eventually(lambda: consumer.ready, timeout_s=60)
            before = [f"before-{n}" for n in range(6)]
            await send(before[0])
            assert await _committed_soon(kafka.bootstrap, consumer.group_id or "", "in", 1) == 1
            for rid in before[1:]:  # finished after the commit, which then sleeps a minute
                await send(rid)
            await eventually(lambda: len(handled) == len(before))
            await asyncio.to_thread(down, ["kafka"], settings=kafka.settings, catalog=catalog)
            if kafka_client == "librdkafka":  # until its session is lost and drained
                await eventually(lambda: consumer._unsettled, timeout_s=60)
            else:
                await asyncio.sleep(8.0)  # past the 6 s session: aiokafka keeps its member
            await asyncio.to_thread(ensure_up, ["kafka"], settings=kafka.settings, catalog=catalog)
            await send("after")  # behind any redelivery in the partition
            await eventually(lambda: "after" in handled, timeout_s=90)
        assert handled == [*before, "after"]  # nothing handled twice
        if kafka_client == "librdkafka":  # the path under test ran (aiokafka may not need it)
            assert "given back after a failed commit: resumed at 6" in caplog.text
    finally:
        await producer.stop()
        await asyncio.to_thread(down, ["kafka"], settings=kafka.settings, catalog=catalog)


@pytest.mark.slow
async def test_a_stop_during_a_kafka_outage_is_bounded(
    infra: CommonSettings, tmp_path: Path, kafka_client: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A service that gives up in a Kafka outage must exit: the stop's last commit waits
    ``STOP_COMMIT_S``, names what it could not commit (delivered again), and the client closes.
    Before, aiokafka's commit retried for as long as no coordinator answered, and the stop,
    which closes the client only after it, waited for the broker to come back. On a private
    broker; one commit goes out at the first record, then the commit loop sleeps a minute."""
    caplog.set_level(logging.WARNING, logger="genwire.kafka.consumer")
    kafka = Kafka.beside(infra, CommonSettings(home=tmp_path))
    catalog = {"kafka": kafka}
    await asyncio.to_thread(ensure_up, ["kafka"], settings=kafka.settings, catalog=catalog)
    producer = EventProducer(kafka.bootstrap)
    try:
        await ensure_topics(kafka.bootstrap, [TopicSpec("in", 1, 3_600_000)])
        await producer.start()
        handled: list[str] = []

        async def handler(event: PreparedRequest) -> None:
            handled.append(event.request_id)

        consumer = _make(kafka.bootstrap, "in", producer, handler, commit_interval_s=60.0)
        await consumer.start()
        task = asyncio.create_task(consumer.run())
        try:
            await eventually(lambda: consumer.ready, timeout_s=60)
            for rid in ("first", "second"):
                await (await producer.send("in", dump(_prepared(rid)), key=rid.encode()))
                await eventually(lambda rid=rid: rid in handled)  # type: ignore[misc]
            assert await _committed_soon(kafka.bootstrap, consumer.group_id or "", "in", 1) == 1
            await asyncio.to_thread(down, ["kafka"], settings=kafka.settings, catalog=catalog)
            started = time.monotonic()
            async with asyncio.timeout(90):  # before: until the broker came back (never here)
                await consumer.stop(timeout_s=1.0)
            took = time.monotonic() - started
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # The commit's bound and the client's close: librdkafka's waits up to its own
        # STOP_TIMEOUT_S for its thread to leave the group.
        close_s = STOP_TIMEOUT_S if kafka_client == "librdkafka" else 10.0
        assert took < 1.0 + STOP_COMMIT_S + close_s, took
        assert "finished records not committed" in caplog.text
        assert "in-0 up to 2" in caplog.text
    finally:
        await producer.stop()
        await asyncio.to_thread(down, ["kafka"], settings=kafka.settings, catalog=catalog)
