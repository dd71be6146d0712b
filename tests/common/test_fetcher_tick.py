"""aiokafka's background fetcher on a longer tick (``fetcher_tick_ms``), against the real
broker: an idle consumer's fetcher wakes for its answered fetches, not on a timer between them,
and a consumer held by a full pool resumes when a record finishes, without the timer. And on a
long fetch wait: a fetch in flight when every partition is paused still ends at their first
record once they are resumed (what lets the quiet topics' readers wait 5 s)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from genwire.events import PreparedRequest, dump
from genwire.kafka import EventConsumer, EventProducer
from genwire.kafka.consumer import FETCH_MAX_WAIT_MS, fetch_wait_options, fetcher_tick_ms

from .support import _prepared, eventually, running_consumer

# The tick is aiokafka's (librdkafka's consumer has its own thread and no such loop).
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("on_aiokafka")]


def _positioned(consumer: EventConsumer[PreparedRequest]) -> bool:
    client = consumer._consumer
    assignment = client._subscription.subscription.assignment
    return all(assignment.state_value(tp).has_valid_position for tp in client.assignment())


async def test_an_idle_consumers_fetcher_wakes_for_its_fetches_not_between_them(
    env: tuple[str, str, EventProducer], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert fetcher_tick_ms(FETCH_MAX_WAIT_MS) > FETCH_MAX_WAIT_MS

    async def nothing(event: PreparedRequest) -> None:
        return None

    async with running_consumer(env, nothing, concurrency=4) as consumer:
        await eventually(lambda: _positioned(consumer))
        await asyncio.sleep(0.5)  # the long polls under way
        client = consumer._consumer
        leaders = {client._client.cluster.leader_for_partition(tp) for tp in client.assignment()}
        fetcher = client._fetcher
        wakes = 0
        plan = fetcher._get_actions_per_node

        def counted(assignment: Any) -> Any:
            nonlocal wakes
            wakes += 1
            return plan(assignment)

        monkeypatch.setattr(fetcher, "_get_actions_per_node", counted)
        started = time.monotonic()
        await asyncio.sleep(3.0)
        elapsed = time.monotonic() - started
        monkeypatch.undo()
    # One wake per answered fetch (one fetch in flight per leader, answered every
    # FETCH_MAX_WAIT_MS with nothing to read), plus one at each end of the window; aiokafka's
    # default tick (200 ms) adds two between each pair (18 wakes here, checked). Slack of 5: a
    # loaded broker may answer a fetch early or a metadata refresh wake it (well under 18).
    fetches = len(leaders) * elapsed * 1000 / FETCH_MAX_WAIT_MS
    assert 1 <= wakes <= fetches + 5, (wakes, fetches)


async def test_a_held_consumer_resumes_when_a_record_finishes_without_the_timer(
    env: tuple[str, str, EventProducer], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, topic, producer = env
    gate, first, all_three = asyncio.Event(), asyncio.Event(), asyncio.Event()
    handled: list[str] = []

    async def slow_first(event: PreparedRequest) -> None:
        handled.append(event.request_id)
        first.set()
        if len(handled) == 1:
            await gate.wait()
        if len(handled) == 3:
            all_three.set()

    async with running_consumer(env, slow_first, concurrency=1) as consumer:
        # A timer that never fires: whatever the fetcher does next, an event must start it.
        monkeypatch.setattr(consumer._consumer._fetcher, "_fetcher_timeout", 3600.0)
        run = uuid.uuid4().hex[:8]
        ids = [f"{run}-{i}" for i in range(3)]
        key = run.encode()  # one partition: the three wait behind the first
        for rid in ids:
            await (await producer.send(topic, dump(_prepared(rid)), key=key))
        async with asyncio.timeout(30):
            await first.wait()
        await asyncio.sleep(1.0)  # held: still one
        assert handled == ids[:1]
        assert consumer._consumer.paused()  # the full pool paused every partition
        gate.set()
        # Resumed by the pause being lifted (and the fetch it sends), not a tick: well within
        # the hour the timer now waits, and within a few fetch waits.
        async with asyncio.timeout(5):
            await all_three.wait()
    assert handled == ids


async def test_a_fetch_in_flight_at_a_pause_ends_at_the_resumed_partitions_first_record(
    env: tuple[str, str, EventProducer],
) -> None:
    bootstrap, topic, producer = env
    wait_ms, prompt_s = 10_000, 4.0
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, **fetch_wait_options(wait_ms)
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in (0, 1)]  # the fixture's two partitions
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        await consumer.getmany(timeout_ms=500)  # positions known: the fetcher fetches
        # An empty fetch waiting on the broker (polled: a busy machine may send it late).
        await eventually(lambda: consumer._fetcher._in_flight, timeout_s=5.0)
        consumer.pause(*tps)  # as EventConsumer does: every partition together
        rid = uuid.uuid4().hex[:8]
        await (await producer.send(topic, dump(_prepared(rid)), key=rid.encode()))
        # It ends at the record, 5 s early at least, and no fetch follows while paused (one
        # would wait on the broker, in flight, for 10 s): the record waits in the client for
        # the resume.
        await eventually(lambda: not consumer._fetcher._in_flight, timeout_s=5.0)
        await asyncio.sleep(1.0)
        assert not consumer._fetcher._in_flight
        assert await consumer.getmany(timeout_ms=0) == {}  # paused: held back
        consumer.resume(*tps)
        started = time.monotonic()
        got: list[bytes] = []
        while not got and time.monotonic() - started < prompt_s:
            batches = await consumer.getmany(timeout_ms=100)
            got = [r.key or b"" for records in batches.values() for r in records]
        assert got == [rid.encode()], f"not within {prompt_s} s of a {wait_ms} ms fetch wait"
    finally:
        await consumer.stop()
